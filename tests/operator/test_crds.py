"""The CRDs: generated from api.py, structural, with CEL rules that reject bad specs (evaluated
offline with cel-python), and examples that pass both the CRD schema and the pydantic models."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cambrian.errors import ConfigError
from cambrian.operator import api, crdgen


def test_committed_crds_are_what_the_models_generate(crds):
    assert set(crds) == {"Evolution", "Hypothesis", "Rollout"}
    for kind in crds:
        path = crdgen.REPO_CRDS / crdgen.file_name(kind)
        assert path.read_text() == crdgen.render(kind), f"{path} is stale: run python -m cambrian.operator.crdgen"


def _walk(node: Any, path: str):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.get("properties", {}).items():
            yield from _walk(v, f"{path}.{k}")
        if isinstance(node.get("items"), dict):
            yield from _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", ["Evolution", "Hypothesis", "Rollout"])
def test_schema_is_structural(crds, kind):
    crd = crds[kind]
    names = crd["spec"]["names"]
    assert names["categories"] == ["cambrian"]
    assert names["shortNames"] == {"Evolution": ["evo"], "Hypothesis": ["hyp"], "Rollout": ["ro"]}[kind]
    assert crd["metadata"]["name"] == f"{names['plural']}.cambrian.dev" and crd["spec"]["group"] == "cambrian.dev"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema, ""):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path}: needs a type"
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "title", "nullable"):
            assert banned not in node, f"{path}: {banned} is not allowed here"
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("x-kubernetes-list-type") == "map":
            item = node["items"]
            for key in node["x-kubernetes-list-map-keys"]:
                assert key in item.get("required", []) or "default" in item["properties"][key], f"{path}: {key}"
        if node.get("type") == "string" and path.startswith(".spec") and "enum" not in node:
            assert "maxLength" in node, f"{path}: unbounded strings make CEL cost estimates fail"
        if node.get("type") == "array" and path.startswith(".spec"):
            assert "maxItems" in node, f"{path}: unbounded lists make CEL cost estimates fail"
    # printer columns point at fields that exist
    for col in version["additionalPrinterColumns"]:
        if col["jsonPath"].startswith(".metadata"):
            continue
        node = schema
        for part in col["jsonPath"].strip(".").split("."):
            name, _, index = part.partition("[")   # effects[0]: an item of a list
            node = node["properties"][name]
            if index:
                assert node["type"] == "array" and index.rstrip("]").isdigit(), col
                node = node["items"]
        assert node["type"] == col["type"] or (col["type"] == "number" and node["type"] in ("number", "integer"))
    # a failed or blocked object says why in `kubectl get` (issue 21: the phase alone left users guessing)
    if "reason" in schema["properties"]["status"]["properties"]:
        assert ".status.reason" in {c["jsonPath"] for c in version["additionalPrinterColumns"]}


def test_cel_rules_present(crds):
    rules = [
        r["message"]
        for kind in crds
        for _, node in _walk(root_schema_of(crds[kind]), "")
        for r in node.get("x-kubernetes-validations", [])
    ]
    joined = "\n".join(rules)
    for fragment in ("sum to 100", "within 0..100", "non-empty patch or code", "spec.delta is immutable",
                     "quotas", "strictly increase", "spec.salt is immutable", "exactly one of world"):
        assert fragment in joined, fragment


def root_schema_of(crd):
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("name", ["evolution", "hypothesis", "rollout"])
def test_examples_are_admitted_and_parse(admission, examples, name):
    obj = examples(name)
    errors, defaulted = admission(obj["kind"], obj)
    assert errors == []
    # the defaulted object (what the API server stores) and the raw one parse into the same model
    assert api.parse_resource(defaulted).spec == api.parse_resource(obj).spec
    # what the models write back is admitted as well
    assert admission(obj["kind"], {**obj, "spec": api.parse_resource(obj).spec.wire()})[0] == []


def _set(obj: dict, path: str, value: Any) -> dict:
    obj = copy.deepcopy(obj)
    node = obj
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last = parts[-1]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return obj


_DELETE = object()

BAD = [
    # (example, path, value, fragment expected in the CRD error, fragment expected in the pydantic error)
    ("rollout", "spec.ramp.steps.0.weights", [90, 5, 6], "sum to 100", "sum to 100"),
    ("rollout", "spec.ramp.steps.0.weights", [110, -5, -5], "within 0..100", "within 0..100"),
    ("rollout", "spec.ramp.steps.0.weights", [90, 10], "one weight per arm", "one weight per arm"),
    ("rollout", "spec.ramp.steps.1.weights", [90, 5, 5], "strictly increase", "strictly increase"),
    ("rollout", "spec.ramp.steps.2.weights", [80, 10, 10], "strictly increase", "strictly increase"),
    ("rollout", "spec.treatments.0.name", "control", "control arm's name", "control arm's name"),
    ("rollout", "spec.statistics.alpha", 0.0, "spec.statistics.alpha", "spec.statistics.alpha"),
    ("rollout", "spec.statistics.method", "bayes", "spec.statistics.method", "spec.statistics.method"),
    ("rollout", "spec.statistics.minSamplePerArm", 0, "spec.statistics.minSamplePerArm", "minSamplePerArm"),
    ("rollout", "spec.metrics.readout.interval", "soon", "spec.metrics.readout.interval", "interval"),
    ("rollout", "spec.treatments", [], "spec.treatments", "spec.treatments"),
    ("rollout", "spec.salt", "", "spec.salt", "spec.salt"),
    ("hypothesis", "spec.delta", {}, "non-empty patch or code", "non-empty patch or code"),
    ("hypothesis", "spec.delta", {"patch": {}, "code": ""}, "spec.delta.patch", "spec.delta.patch"),
    ("hypothesis", "spec.delta", {"patch": {}}, "spec.delta.patch: should have at least 1", "spec.delta.patch"),
    ("hypothesis", "spec.component", "loss", "spec.component", "spec.component"),
    ("hypothesis", "spec.delta.code", "def build_optimizer(p, c): ...", "only accepted for optimizer", "only accepted"),
    # CEL cannot look inside free-form JSON: caught by the models (the Hypothesis is Rejected with the reason)
    ("hypothesis", "spec.delta.patch", {"code": "x"}, None, "spec.delta.patch.code"),
    ("hypothesis", "spec.origin", {"kind": "persona"}, "spec.origin.persona", "spec.origin.persona"),
    ("hypothesis", "spec.explanation", "", "spec.explanation", "spec.explanation"),
    ("evolution", "spec.agent.budgets.dollars", -1, "spec.agent.budgets.dollars", "spec.agent.budgets.dollars"),
    ("evolution", "spec.agent.budgets.gpuHours", -0.5, "spec.agent.budgets.gpuHours", "gpuHours"),
    ("evolution", "spec.agent.budgets.tokens", -10, "spec.agent.budgets.tokens", "spec.agent.budgets.tokens"),
    ("evolution", "spec.topK", 0, "spec.topK", "spec.topK"),
    ("evolution", "spec.agent.proposalsPerWakeup", 5, "explore + exploit + innovate", "explore + exploit + innovate"),
    ("evolution", "spec.agent.provider", "gemini", "spec.agent.model is required", "spec.agent.model is required"),
    ("evolution", "spec.agent.provider", "claude", "spec.agent.provider", "spec.agent.provider"),
    ("evolution", "spec.agent.scheduling", {"explorationFloor": 64}, "explorationFloor must not exceed",
     "explorationFloor must not exceed"),
    ("evolution", "spec.agent.scheduling", {"policy": "lottery"}, "spec.agent.scheduling.policy",
     "spec.agent.scheduling.policy"),
    ("evolution", "spec.agent.personas", ["optimizer", "loss"], "spec.agent.personas[1]", "spec.agent.personas.1"),
    ("evolution", "spec.agent.personas", ["reward", "reward"], "duplicate", "each persona may appear once"),
    ("evolution", "spec.data", {}, "exactly one of world", "exactly one of world"),
    ("evolution", "spec.data", {"world": {}, "persistentVolumeClaim": {"claimName": "x"}}, "exactly one", "exactly one"),
    ("evolution", "spec.data", {"world": {}, "source": {"uri": "s3://lake/world"}}, "exactly one", "exactly one"),
    ("evolution", "spec.data", {"source": {"uri": "lake/world"}}, "spec.data.source.uri", "spec.data.source.uri"),
    # a password in the source would be stored in the object, printed by kubectl and logged: refused by the model
    ("evolution", "spec.data", {"source": {"uri": "postgresql://me:hunter2@db:5432/events"}}, None, "must not carry a password"),
    ("evolution", "spec.data", {"source": {"uri": "s3://lake/w?secret_key=x&token=y"}}, None, "must not carry a password"),
    ("evolution", "spec.guardrails.0", {"metric": "hate_rate"}, "give a limit, a margin", "give a limit, a margin"),
    ("evolution", "spec.guardrails.0.margin", -0.1, "spec.guardrails[0].margin", "spec.guardrails.0.margin"),
    ("evolution", "spec.guardrails.0", {"metric": "err", "margin": 0.1, "query": 'x{arm="{{arm}}"}'},
     "give a limit and no margin", "give a limit and no margin"),
    ("evolution", "spec.guardrails.0", {"metric": "err", "limit": 0.1, "query": "sum(x)"}, "with {{arm}}", "with {{arm}}"),
    # PromQL metrics: the statistics each kind needs, and only {{arm}} and {{window}} as placeholders
    ("rollout", "spec.metrics.promql", [{"name": "m", "kind": "mean", "queries": {"users": 'a{arm="{{arm}}"}'}}],
     "kind mean: give queries users, sumY, sumY2", "kind mean: give queries users, sumY, sumY2"),
    ("rollout", "spec.metrics.promql", [{"name": "m", "kind": "proportion", "queries": {
        "users": 'a{arm="{{arm}}"}', "sumY": 'b{arm="{{arm}}"}', "sumY2": 'b{arm="{{arm}}"}'}}],
     "kind proportion: give queries users, sumY and no others", "kind proportion"),
    ("rollout", "spec.metrics.promql", [{"name": "m", "kind": "proportion", "queries": {
        "users": 'a{arm="{{arm}}", ns="{{ns}}"}', "sumY": 'b{arm="{{arm}}"}'}}],
     "the only placeholders are {{arm}} and {{window}}", "the only placeholders are {{arm}} and {{window}}"),
    ("rollout", "spec.metrics.promql", [{"name": "m", "kind": "proportion", "queries": {
        "users": "sum(a)", "sumY": 'b{arm="{{arm}}"}'}}], "select each arm's series with {{arm}}", "queries.users"),
    ("evolution", "spec.guardrails.0", {"metric": "err", "limit": 0.1, "query": 'x{arm="{{arm}}"}[{{since}}]'},
     "the only placeholders", "the only placeholders"),
    ("evolution", "spec.objective.northStar", [], "spec.objective.northStar", "spec.objective.northStar"),
    ("evolution", "spec.objective.northStar.0.direction", "up", "northStar[0].direction", "northStar.0.direction"),
    ("evolution", "spec.training.gpu.count", -1, "spec.training.gpu.count", "spec.training.gpu.count"),
    ("evolution", "spec.launchPolicy", "yolo", "spec.launchPolicy", "spec.launchPolicy"),
    ("evolution", "spec.cadence.offline", "5 minutes", "spec.cadence.offline", "spec.cadence.offline"),
    ("evolution", "spec.experiment", {"ramp": {"steps": [{"weights": [50, 25, 25]}]}}, "two weights", "two weights"),
    ("evolution", "spec.baseline", {"optimizer": {"lr": -1}}, None, "optimizer.lr"),
    # the route's backends are the router's and champion's Services, on spec.serving.port
    ("evolution", "spec.serving", {"port": 8080, "httpRoute": {"name": "feed", "port": 80}},
     "httpRoute.port must equal spec.serving.port", "spec.serving: httpRoute.port 80 must equal port 8080"),
    ("evolution", "spec.serving", {"httpRoute": {"name": "feed", "port": 9000}},
     "httpRoute.port must equal spec.serving.port", "spec.serving: httpRoute.port 9000 must equal port 8080"),
]


@pytest.mark.parametrize("name,path,value,crd_msg,model_msg", BAD, ids=[f"{b[1]}={b[2]!r}"[:60] for b in BAD])
def test_bad_specs_rejected_naming_the_field(admission, examples, name, path, value, crd_msg, model_msg):
    obj = _set(examples(name), path, value)
    if crd_msg is not None:
        errors, _ = admission(obj["kind"], obj)
        assert errors, "the CRD admitted a bad spec"
        assert any(crd_msg in e for e in errors), errors
    with pytest.raises(ConfigError) as exc:
        api.parse_spec(obj["kind"], obj["spec"])
    assert model_msg in str(exc.value)


def test_promql_metrics_are_admitted_and_parse(admission, examples):
    obj = examples("rollout")
    obj["spec"]["metrics"]["promql"] = [
        {"name": "signup", "kind": "proportion", "queries": {
            "users": 'sum(increase(shop_exposed_users_total{arm="{{arm}}"}[{{window}}]))',
            "sumY": 'round(sum(increase(shop_signed_up_users_total{arm="{{arm}}"}[{{window}}])))'}}]
    assert admission("Rollout", obj)[0] == []
    assert api.parse_spec("Rollout", obj["spec"]).metrics.promql[0].queries.users.startswith("sum(increase(")


def test_an_own_source_with_its_secret_is_admitted(admission, examples):
    obj = _set(examples("evolution"), "spec.data", {"source": {"uri": "postgresql://cambrian@warehouse:5432/events",
                                                               "secretRef": {"name": "warehouse"}}})
    errors, defaulted = admission("Evolution", obj)
    assert errors == []
    assert api.parse_resource(defaulted).spec.data.source.secret_ref.name == "warehouse"


def test_delta_is_immutable_after_creation(admission, examples):
    old = examples("hypothesis")
    new = _set(old, "spec.delta.patch", {"label": "CAST(click AS DOUBLE)"})
    errors, _ = admission("Hypothesis", new, old=old)
    assert any("spec.delta is immutable" in e for e in errors), errors
    # other edits and status updates are fine
    ok = _set(old, "spec.explanation", "clarified")
    assert admission("Hypothesis", ok, old=old)[0] == []
    with_status = {**old, "status": {"phase": "Training", "attempts": 1}}
    assert admission("Hypothesis", with_status, old=old)[0] == []
    # component change is refused too
    errors, _ = admission("Hypothesis", _set(old, "spec.component", "training"), old=old)
    assert any("spec.component is immutable" in e for e in errors)


def test_rollout_salt_and_arms_are_immutable(admission, examples):
    old = examples("rollout")
    assert any("spec.salt is immutable" in e for e in admission("Rollout", _set(old, "spec.salt", "x"), old=old)[0])
    new = _set(old, "spec.treatments.0.bundle", "pvc://other")
    assert any("spec.treatments is immutable" in e for e in admission("Rollout", new, old=old)[0])
    # the decision policy may change mid-experiment
    assert admission("Rollout", _set(old, "spec.decisionPolicy", "auto"), old=old)[0] == []


def test_defaults_match_pydantic(admission, examples):
    """The API server's defaulting (from the CRD) yields the same object pydantic's defaults do."""
    minimal = {"apiVersion": "cambrian.dev/v1alpha1", "kind": "Evolution", "metadata": {"name": "m"},
               "spec": {"objective": {"northStar": [{"name": "dau"}]}, "data": {"world": {}}}}
    errors, defaulted = admission("Evolution", minimal)
    assert errors == []
    assert _prune(defaulted["spec"]) == _prune(api.parse_spec("Evolution", minimal["spec"]).wire())


def _prune(v):
    """Empty lists and maps are 'absent' to the API server."""
    if isinstance(v, dict):
        return {k: _prune(x) for k, x in v.items() if x not in ({}, [])}
    return v


def test_duration_parsing():
    assert api.duration_seconds("1h30m") == 5400 and api.duration_seconds("7d") == 7 * 86400
    with pytest.raises(ValueError):
        api.duration_seconds("1 hour")


def _undescribed(schema: dict, path: str) -> list[str]:
    """Properties without a description, at any depth (what `kubectl explain` would show bare)."""
    out = []
    for name, node in schema.get("properties", {}).items():
        if not (node.get("description") or "").strip():
            out.append(f"{path}.{name}")
        out += _undescribed(node, f"{path}.{name}")
    for key, mark in (("items", "[]"), ("additionalProperties", "{}")):
        if isinstance(schema.get(key), dict):
            out += _undescribed(schema[key], path + mark)
    return out


@pytest.mark.parametrize("kind", ["Evolution", "Hypothesis", "Rollout"])
def test_every_crd_field_has_a_description(crds, kind):
    """`kubectl explain` describes every field: the object, spec, status and each property below
    (37 of 100 Evolution spec fields had one). Descriptions come from api.py's Field(description=...)
    and model docstrings, through crdgen."""
    schema = root_schema_of(crds[kind])
    assert schema.get("description"), f"{kind}: the object has no description"
    # metadata is the one exception: the API server refuses a CRD that says anything about it
    # (kubectl explain describes it from ObjectMeta)
    assert schema["properties"]["metadata"] == {"type": "object"}
    missing = [p for p in _undescribed(schema, kind) if p != f"{kind}.metadata"]
    assert not missing, f"{len(missing)} fields without a description: {missing}"


def test_the_description_check_reaches_nested_fields():
    schema = {"description": "x", "properties": {"a": {"description": "a", "items": {"properties": {"b": {}}}},
                                                 "m": {"description": "m", "additionalProperties": {
                                                     "properties": {"c": {"description": " "}}}}}}
    assert _undescribed(schema, "K") == ["K.a[].b", "K.m{}.c"]


def test_descriptions_say_what_users_asked_about(crds):
    spec = root_schema_of(crds["Evolution"])["properties"]["spec"]["properties"]
    assert "per persona" in spec["agent"]["properties"]["proposalsPerWakeup"]["description"]
    hyp = root_schema_of(crds["Hypothesis"])["properties"]["spec"]["properties"]
    for field in ("component", "explanation"):
        assert hyp[field]["description"], field
    assert "chart" in spec["training"]["properties"]["memory"]["description"]  # where the default comes from
