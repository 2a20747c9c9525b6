"""Broker backends: Redis for production, in-memory for one-process development."""
