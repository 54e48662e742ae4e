"""Operations: Prometheus metrics (metrics.py), TLS credentials (tls.py), log formats (logs.py).

Used by server.py, service.py and the client; nothing here imports the pipeline, the sessions or the server.
"""
