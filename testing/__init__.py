"""Helpers for tests and benchmarks that need real infrastructure (see cluster.py)."""
