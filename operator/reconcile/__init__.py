"""The pure reconcile core shared by the kopf operator (cluster) and the local driver.

Each `reconcile(...)` takes spec, status and observations (plain data) plus `now`, and returns a
`Result`: actions for a platform adapter to apply in order, and the new status to persist after
them. No I/O, no clock, no kopf or kubernetes imports here.
"""

from cambrian.operator.reconcile import actions, evolution, hypothesis, observations, rollout
from cambrian.operator.reconcile.common import Meta, Result, child_name

__all__ = ["actions", "evolution", "hypothesis", "observations", "rollout", "Meta", "Result", "child_name"]
