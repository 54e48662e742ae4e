"""Benchmark harness: `python -m benchmarks` measures streamer against a baseline and the transport ceiling."""
