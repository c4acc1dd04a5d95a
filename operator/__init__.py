"""Cluster mode: kopf handlers, the pure reconcile core, agents, journal, statistics, platform adapters.

Imported as ``cambrian.operator`` (see pyproject.toml), never as ``operator``."""
