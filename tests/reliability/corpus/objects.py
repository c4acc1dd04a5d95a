"""Invalid Evolution / Hypothesis / Rollout objects: systematic mutations of manifests/examples/.

Every case is (case_id, kind, object, field, server): the mutated object, the token its error message
must name (the offending field's wire name), and whether a real API server can see the problem
(`server=False` for checks only the pydantic models do, e.g. inside the free-form Φ in spec.baseline,
which the CRD keeps with x-kubernetes-preserve-unknown-fields).

Families: wrong type of every scalar, list and object in the spec; an unknown field in every object;
every required field removed; and hand-written semantic cases (weights, ramps, quotas, budgets,
topK, components, empty deltas, ...). `python -m corpus.objects --out DIR` writes them as YAML.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "manifests" / "examples"
FILES = {"Evolution": "evolution.yaml", "Hypothesis": "hypothesis.yaml", "Rollout": "rollout.yaml"}

# Sub-trees whose content the CRD does not type (preserve-unknown / free maps): no generic mutation there.
OPAQUE = {("spec", "baseline"), ("spec", "delta", "patch"), ("spec", "training", "nodeSelector"),
          ("spec", "training", "podAnnotations")}


@dataclass(frozen=True)
class Case:
    case_id: str
    kind: str
    obj: dict
    field: str
    server: bool = True


def valid_examples() -> dict[str, dict]:
    return {kind: yaml.safe_load((EXAMPLES / name).read_text()) for kind, name in FILES.items()}


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def _set(obj: Any, path: tuple, value: Any) -> dict:
    out = copy.deepcopy(obj)
    _get(out, path[:-1])[path[-1]] = value
    return out


def _delete(obj: Any, path: tuple) -> dict:
    out = copy.deepcopy(obj)
    parent = _get(out, path[:-1])
    del parent[path[-1]]
    return out


def _leaf_name(path: tuple) -> str:
    return next(str(p) for p in reversed(path) if isinstance(p, str))


def _walk(value: Any, path: tuple) -> Iterator[tuple[tuple, Any]]:
    yield path, value
    if path in OPAQUE:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, (*path, i))


def _wrong_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "not-a-bool"
    if isinstance(value, (int, float)):
        return "not-a-number"
    if isinstance(value, str):
        return 12345
    if isinstance(value, list):
        return "not-a-list"
    if isinstance(value, dict):
        return "not-an-object"
    raise TypeError(value)


def _cid(kind: str, family: str, path: tuple) -> str:
    return f"{kind.lower()}-{family}-" + ".".join(str(p) for p in path[1:])


def generic_cases(kind: str, obj: dict) -> Iterator[Case]:
    for path, value in _walk(obj["spec"], ("spec",)):
        if len(path) == 1:
            continue
        inside_opaque = any(path[:len(o)] == o and len(path) > len(o) for o in OPAQUE)
        if inside_opaque:
            continue
        yield Case(_cid(kind, "type", path), kind, _set(obj, ("spec",) + path[1:], _wrong_type(value)),
                   _leaf_name(path))
        if isinstance(value, dict) and path not in OPAQUE:
            yield Case(_cid(kind, "unknown", path), kind, _set(obj, path + ("bogusField",), 1), "bogusField")
    yield Case(f"{kind.lower()}-unknown-spec", kind, _set(obj, ("spec", "bogusField"), "x"), "bogusField")


# Required fields per kind (the wire path); removing one must be refused naming it.
REQUIRED = {
    "Evolution": [("spec", "objective"), ("spec", "data"), ("spec", "objective", "northStar"),
                  ("spec", "objective", "northStar", 0, "name"), ("spec", "guardrails", 0, "metric"),
                  ("spec", "objective", "offline", "reward", "metric"),
                  ("spec", "objective", "offline", "reward", "direction")],
    "Hypothesis": [("spec", "evolutionRef"), ("spec", "component"), ("spec", "explanation"), ("spec", "delta"),
                   ("spec", "evolutionRef", "name")],
    "Rollout": [("spec", "control"), ("spec", "treatments"), ("spec", "salt"), ("spec", "ramp"),
                ("spec", "metrics"), ("spec", "control", "bundle"), ("spec", "treatments", 0, "name"),
                ("spec", "treatments", 0, "hypothesisRef"), ("spec", "treatments", 0, "bundle"),
                ("spec", "ramp", "steps"), ("spec", "ramp", "steps", 0, "weights"),
                ("spec", "metrics", "northStar"), ("spec", "metrics", "guardrails", 0, "metric")],
}


def missing_cases(kind: str, obj: dict) -> Iterator[Case]:
    for path in REQUIRED[kind]:
        yield Case(_cid(kind, "missing", path), kind, _delete(obj, path), _leaf_name(path))


def semantic_cases(ex: dict[str, dict]) -> Iterator[Case]:
    evo, hyp, ro = ex["Evolution"], ex["Hypothesis"], ex["Rollout"]

    def E(cid, path, value, field, server=True):
        return Case(f"evolution-{cid}", "Evolution", _set(evo, path, value), field, server)

    def H(cid, path, value, field, server=True):
        return Case(f"hypothesis-{cid}", "Hypothesis", _set(hyp, path, value), field, server)

    def R(cid, path, value, field, server=True):
        return Case(f"rollout-{cid}", "Rollout", _set(ro, path, value), field, server)

    # Evolution
    yield E("topk-zero", ("spec", "topK"), 0, "topK")
    yield E("topk-negative", ("spec", "topK"), -3, "topK")
    yield E("topk-huge", ("spec", "topK"), 1000, "topK")
    for name in ("dollars", "gpuHours", "evaluations", "tokens"):
        yield E(f"budget-negative-{name}", ("spec", "agent", "budgets", name), -1, name)
    yield E("quotas-do-not-sum", ("spec", "agent", "quotas"), {"explore": 1, "exploit": 1, "innovate": 1}, "quotas")
    yield E("quota-negative", ("spec", "agent", "quotas", "explore"), -1, "explore")
    yield E("proposals-zero", ("spec", "agent", "proposalsPerWakeup"), 0, "proposalsPerWakeup")
    yield E("unknown-provider", ("spec", "agent", "provider"), "skynet", "provider")
    yield E("gemini-without-model", ("spec", "agent", "provider"), "gemini", "model")
    yield E("unknown-persona", ("spec", "agent", "personas"), ["optimizer", "marketing"], "personas")
    yield E("duplicate-persona", ("spec", "agent", "personas"), ["optimizer", "optimizer"], "personas")
    yield E("no-personas", ("spec", "agent", "personas"), [], "personas")
    yield E("empty-north-star", ("spec", "objective", "northStar"), [], "northStar")
    yield E("bad-direction", ("spec", "objective", "northStar", 0, "direction"), "sideways", "direction")
    yield E("bad-window", ("spec", "objective", "northStar", 0, "window"), "one day", "window")
    yield E("bad-cadence", ("spec", "cadence", "offline"), "5 minutes", "offline")
    yield E("guardrail-without-bound", ("spec", "guardrails", 0), {"metric": "hate_rate"}, "guardrails")
    yield E("guardrail-margin-over-1", ("spec", "guardrails", 0, "margin"), 1.5, "margin")
    yield E("guardrail-margin-negative", ("spec", "guardrails", 0, "margin"), -0.1, "margin")
    yield E("launch-policy", ("spec", "launchPolicy"), "yolo", "launchPolicy")
    yield E("gpu-count-negative", ("spec", "training", "gpu", "count"), -1, "count")
    yield E("max-attempts-zero", ("spec", "training", "maxAttempts"), 0, "maxAttempts")
    yield E("data-both", ("spec", "data", "persistentVolumeClaim"), {"claimName": "x"}, "spec.data")
    yield E("data-neither", ("spec", "data"), {}, "spec.data")
    yield E("world-users-too-few", ("spec", "data", "world", "users"), 1, "users")
    yield E("world-days-one", ("spec", "data", "world", "days"), 1, "days")
    yield E("toleration-operator", ("spec", "training", "tolerations", 0, "operator"), "Maybe", "operator")
    yield E("experiment-three-weights", ("spec", "experiment"),
            {"ramp": {"steps": [{"weights": [80, 10, 10]}]}}, "weights")
    yield E("alpha-out-of-range", ("spec", "experiment"), {"statistics": {"alpha": 0.9}}, "alpha")
    # Accepted by the API server before issue 21, then refused for ever when the operator acted on them
    # (the Job with 400, a wake-up on every tick, PromQL with a space in it): now refused at admission.
    yield E("memory-not-a-quantity", ("spec", "training", "memory"), "8 gigs", "memory")
    yield E("memory-negative", ("spec", "training", "memory"), "-1Gi", "memory")
    yield E("cpu-not-a-quantity", ("spec", "training", "cpu"), "two cores", "cpu")
    yield E("cadence-offline-zero", ("spec", "cadence", "offline"), "0s", "offline")
    yield E("cadence-online-zero", ("spec", "cadence", "online"), "0m0s", "online")
    yield E("cadence-offline-milliseconds", ("spec", "cadence", "offline"), "500ms", "offline")
    yield E("active-deadline-zero", ("spec", "training", "activeDeadline"), "0s", "activeDeadline")
    yield E("north-star-metric-with-spaces", ("spec", "objective", "northStar", 0, "name"), "returning users", "name")
    yield E("guardrail-metric-with-spaces", ("spec", "guardrails", 0, "metric"), "hate rate", "metric")
    yield E("offline-metric-with-quote", ("spec", "objective", "offline", "reward", "metric"), 'corr"}', "metric")
    # Φ is free-form for the API server; only the models (and the trainer) can check it.
    yield E("baseline-unknown-optimizer-field", ("spec", "baseline", "optimizer", "momentum"), 0.9, "momentum", False)
    yield E("baseline-negative-lr", ("spec", "baseline", "optimizer", "lr"), -1, "lr", False)
    yield E("baseline-unknown-component", ("spec", "baseline", "tokenizer"), {"x": 1}, "tokenizer", False)
    # Hypothesis
    yield H("unknown-component", ("spec", "component"), "tokenizer", "component")
    yield H("empty-delta", ("spec", "delta"), {"patch": {}}, "spec.delta")
    yield H("empty-delta-object", ("spec", "delta"), {}, "spec.delta")
    # Admission cannot see it: CEL has no view of undeclared keys of a preserve-unknown map, so the CRD
    # rule on patch.code never fires. The models refuse it, and the operator rejects the Hypothesis
    # (tests/reliability/test_bad_inputs.py::test_code_in_patch_is_rejected_by_the_operator).
    yield H("code-in-patch", ("spec", "delta", "patch", "code"), "x = 1", "code", False)
    yield H("code-for-reward", ("spec", "delta"), {"code": "class Model: pass"}, "code")
    yield H("empty-explanation", ("spec", "explanation"), "", "explanation")
    yield H("huge-explanation", ("spec", "explanation"), "x" * 9000, "explanation")
    yield H("huge-code", ("spec",), {**hyp["spec"], "component": "architecture",
                                     "delta": {"code": "x = 1\n" * 4000}}, "code")
    yield H("persona-origin-without-persona", ("spec", "origin"), {"kind": "persona"}, "persona")
    yield H("origin-kind", ("spec", "origin", "kind"), "alien", "kind")
    yield H("predicted-direction", ("spec", "predictedEffect", "direction"), "up", "direction")
    yield H("empty-evolution-ref", ("spec", "evolutionRef", "name"), "", "name")
    # Rollout
    yield R("weights-not-100", ("spec", "ramp", "steps", 0, "weights"), [90, 5, 4], "weights")
    yield R("weights-over-100", ("spec", "ramp", "steps", 0, "weights"), [150, -25, -25], "weights")
    yield R("weight-negative", ("spec", "ramp", "steps", 1, "weights"), [110, -5, -5], "weights")
    yield R("weights-wrong-count", ("spec", "ramp", "steps", 0, "weights"), [90, 10], "weights")
    yield R("weights-one-arm", ("spec", "ramp", "steps", 0, "weights"), [100], "weights")
    yield R("weights-fractional", ("spec", "ramp", "steps", 0, "weights"), [90.5, 4.5, 5], "weights")
    # accepted before issue 12's one weight rule, then refused by the router (a treatment owns 100/K percent)
    yield R("weights-treatment-over-its-slot", ("spec", "ramp", "steps", 0, "weights"), [20, 60, 20], "weights")
    yield R("weights-control-zero-without-launch", ("spec", "ramp", "steps", 0, "weights"), [0, 50, 50], "weights")
    yield R("ramp-decreasing", ("spec", "ramp", "steps"),
            [{"weights": [60, 20, 20]}, {"weights": [90, 5, 5]}], "ramp.steps")
    yield R("ramp-flat", ("spec", "ramp", "steps"),
            [{"weights": [60, 20, 20]}, {"weights": [60, 30, 10]}], "ramp.steps")
    yield R("ramp-empty", ("spec", "ramp", "steps"), [], "steps")
    yield R("ramp-too-long", ("spec", "ramp", "steps"),
            [{"weights": [99 - i, 1 + i, 0]} for i in range(11)], "steps")
    yield R("bad-step-duration", ("spec", "ramp", "steps", 0, "duration"), "tomorrow", "duration")
    yield R("no-treatments", ("spec", "treatments"), [], "treatments")
    yield R("treatment-named-control", ("spec", "treatments", 0, "name"), "control", "name")
    yield R("duplicate-treatments", ("spec", "treatments", 1, "name"), "adamw", "treatments")
    yield R("arm-name-uppercase", ("spec", "treatments", 0, "name"), "AdamW", "name")
    yield R("arm-name-too-long", ("spec", "treatments", 0, "name"), "a" * 41, "name")
    yield R("empty-salt", ("spec", "salt"), "", "salt")
    yield R("alpha-zero", ("spec", "statistics", "alpha"), 0, "alpha")
    yield R("alpha-one", ("spec", "statistics", "alpha"), 1.0, "alpha")
    yield R("min-sample-zero", ("spec", "statistics", "minSamplePerArm"), 0, "minSamplePerArm")
    yield R("min-sample-negative", ("spec", "statistics", "minSamplePerArm"), -100, "minSamplePerArm")
    yield R("bad-method", ("spec", "statistics", "method"), "vibes", "method")
    yield R("bad-max-duration", ("spec", "statistics", "maxDuration"), "2 weeks", "maxDuration")
    yield R("srm-alpha", ("spec", "statistics", "srmAlpha"), 0.7, "srmAlpha")
    yield R("decision-policy", ("spec", "decisionPolicy"), "coin-flip", "decisionPolicy")
    yield R("readout-interval", ("spec", "metrics", "readout", "interval"), "-1h", "interval")
    yield R("readout-interval-zero", ("spec", "metrics", "readout", "interval"), "0s", "interval")
    yield R("north-star-metric-with-spaces", ("spec", "metrics", "northStar", 0, "name"), "watch minutes", "name")
    yield R("guardrail-metric-with-spaces", ("spec", "metrics", "guardrails", 0, "metric"), "hate rate", "metric")
    yield R("no-north-star", ("spec", "metrics", "northStar"), [], "northStar")
    yield R("guardrail-without-bound", ("spec", "metrics", "guardrails", 0), {"metric": "hate_rate"}, "guardrails")
    yield R("guardrail-margin-over-1", ("spec", "metrics", "guardrails", 0, "margin"), 2, "margin")


def all_cases() -> list[Case]:
    ex = valid_examples()
    cases: list[Case] = []
    for kind, obj in ex.items():
        cases += generic_cases(kind, obj)
        cases += missing_cases(kind, obj)
    cases += semantic_cases(ex)
    ids = [c.case_id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise AssertionError(f"duplicate case ids: {sorted(dup)}")
    return cases


def write_corpus(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    cases = all_cases()
    for c in cases:
        (out / f"{c.case_id}.yaml").write_text(
            f"# expect: rejected, naming {c.field!r}{'' if c.server else ' (models only)'}\n"
            + yaml.safe_dump(c.obj, sort_keys=False))
    return len(cases)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    print(f"wrote {write_corpus(ap.parse_args().out)} invalid objects")
