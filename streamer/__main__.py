"""`python -m streamer`: the same CLI as the `streamer` console script."""
from streamer.cli import main

raise SystemExit(main())
