"""Kubernetes mode tests and the fake Kubernetes API server they run against."""
