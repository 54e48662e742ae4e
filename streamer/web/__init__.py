"""The page served on --http-port: its HTTP server (pageserver.py), the taps of viewed series (tap.py), the backtest
(backtest.py) and the static files it serves (static/, with the vendored uPlot and its licence)."""
