"""Generators of bad inputs for the reliability suite (imported by tests/reliability/conftest.py)."""
