"""Cambrian: a Kubernetes-native, self-evolving recommender system."""

__version__ = "0.1.0"
