"""Observability: the access log, Prometheus metrics, the health checks."""
