"""kubectl for the end-to-end tests: read and apply objects in one namespace of the test control plane, and
wait for a condition with the operator's log and the pod runtime's runs attached to a timeout."""

from __future__ import annotations

import json

import yaml

from cambrian.testing.waiting import poll


class Ctl:
    def __init__(self, cluster, namespace: str):
        self.c, self.ns = cluster, namespace

    def get(self, kind: str, name: str | None = None, selector: str | None = None):
        """The object (or the list of objects) as JSON; None when kubectl fails (not found, ...)."""
        args = ["get", kind] + ([name] if name else []) + ["-n", self.ns, "-o", "json"]
        if selector:
            args += ["-l", selector]
        r = self.c.kubectl(*args, check=False)
        if r.returncode != 0:
            return None
        obj = json.loads(r.stdout)
        return obj["items"] if name is None else obj

    def apply(self, obj: dict, check: bool = True):
        return self.c.kubectl("apply", "-n", self.ns, "-f", "-", input=yaml.safe_dump(obj), check=check)


def wait(what, pred, timeout=180, runner=None, rt=None):
    """poll(), failing with the pod runtime's runs and errors (rt) and the operator's log (runner)."""
    def context() -> str:
        extra = f"\nharness errors: {rt.errors}\nruns: {[(r['pod'], r['rc'], r['seconds']) for r in rt.runs]}" if rt else ""
        return extra + (f"\noperator log:\n{runner.stdout[-6000:]}" if runner else "")
    return poll(what, pred, timeout, context)


def status(obj) -> dict:
    return (obj or {}).get("status") or {}
