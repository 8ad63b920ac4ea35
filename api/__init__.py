"""The HTTP API (FastAPI); never imports torch or worker code."""
