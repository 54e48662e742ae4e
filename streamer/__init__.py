"""streamer: a gRPC service that flags outliers in metrics, per batch (Detect) or per stream (DetectStream)."""

__version__ = "0.1.0"
