"""Bad input is refused with a message naming the field, never a crash.

1. The corpus (tests/reliability/corpus/objects.py, >= 200 invalid Evolution/Hypothesis/Rollout objects
   mutated from manifests/examples/) is rejected by the pydantic models in operator/api.py, and, on the
   real control plane, by the API server at admission (server-side dry run, strict field validation).
2. Malformed config and delta files for `cambrian train` / `cambrian evolve` end with exit code 2 and a
   one-line error, no traceback.
"""

from __future__ import annotations

import re
import sys

import pytest
import yaml

from cambrian.errors import ConfigError
from cambrian.operator.api import parse_resource
from corpus.objects import all_cases, valid_examples

CASES = all_cases()


def names_field(message: str, field: str) -> bool:
    """The message names `field` as a field: in a path (spec.x.field, field.y), a `field:` prefix or quoted."""
    message = re.sub(r"^\w+ [\w.-]+ is invalid: ", "", message)  # "Kind name is invalid:" names no field
    if "." in field:
        return field in message
    return re.search(rf"(^|[\s.\[\"']){re.escape(field)}($|[\s.\]\[:\"'])", message) is not None


def test_corpus_is_large_and_covers_every_kind_and_family():
    assert len(CASES) >= 200
    kinds = {c.kind for c in CASES}
    assert kinds == {"Evolution", "Hypothesis", "Rollout"}
    for family in ("type", "unknown", "missing", "weights", "ramp", "quota", "budget", "topk", "empty-delta",
                   "unknown-component", "min-sample"):
        assert any(family in c.case_id for c in CASES), family


@pytest.mark.parametrize("kind", ["Evolution", "Hypothesis", "Rollout"])
def test_valid_examples_are_accepted(kind):
    parse_resource(valid_examples()[kind])


@pytest.mark.parametrize("case", CASES, ids=[c.case_id for c in CASES])
def test_models_reject_with_the_field_named(case):
    with pytest.raises(ConfigError) as err:
        parse_resource(case.obj)
    msg = str(err.value)
    assert names_field(msg, case.field), f"{case.case_id}: message does not name {case.field!r}: {msg}"
    assert "Traceback" not in msg


# ---- the real API server ------------------------------------------------------------------------

PLURALS = {"Evolution": "evolutions", "Hypothesis": "hypotheses", "Rollout": "rollouts"}


@pytest.fixture(scope="module")
def admission(cluster):
    """A dry-run create against the real API server: returns None (accepted) or the server's message."""
    import json

    from kubernetes import client
    from kubernetes.client.rest import ApiException

    for crd in sorted(ROOT_CRDS.glob("*.cambrian.dev.yaml")):  # not the directory: it holds a kustomization.yaml
        r = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd), check=False)
        assert r.returncode == 0, r.stderr
    for plural in PLURALS.values():
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{plural}.cambrian.dev", "--timeout=60s")
    ns = "reliability-admission"
    cluster.kubectl("create", "namespace", ns, check=False)
    api = client.CustomObjectsApi(cluster.api_client())

    def create(obj: dict) -> str | None:
        try:
            api.create_namespaced_custom_object("cambrian.dev", "v1alpha1", ns, PLURALS[obj["kind"]], obj,
                                                dry_run="All", field_validation="Strict")
        except ApiException as exc:
            assert exc.status in (400, 422), f"unexpected HTTP {exc.status}: {exc.body}"
            try:
                body = json.loads(exc.body)
            except (TypeError, ValueError):
                return str(exc.body)
            causes = " ".join(f"{c.get('field', '')}: {c.get('message', '')}"
                              for c in (body.get("details") or {}).get("causes") or [])
            return f"{body.get('message', '')} {causes}"
        return None

    return create


from pathlib import Path  # noqa: E402

ROOT_CRDS = Path(__file__).resolve().parents[2] / "crds"
SERVER_CASES = [c for c in CASES if c.server]


@pytest.mark.cluster
@pytest.mark.parametrize("kind", ["Evolution", "Hypothesis", "Rollout"])
def test_api_server_accepts_the_valid_examples(admission, kind):
    assert admission(valid_examples()[kind]) is None


@pytest.mark.cluster
def test_api_server_rejects_the_whole_corpus_naming_the_field(admission):
    problems = []
    for case in SERVER_CASES:
        msg = admission(case.obj)
        if msg is None:
            problems.append(f"{case.case_id}: ACCEPTED by the API server")
        elif not names_field(msg, case.field):
            problems.append(f"{case.case_id}: message does not name {case.field!r}: {msg[:300]}")
    assert len(SERVER_CASES) >= 200
    assert not problems, f"{len(problems)} of {len(SERVER_CASES)} cases:\n" + "\n".join(problems)


WEIGHTS_GRID = [[40, 20, 20, 20], [34, 33, 33], [50, 50], [0, 100], [0, 100, 0], [1, 33, 33, 33], [10, 90, 0],
                [34, 34, 16, 16], [0, 50, 50], [20, 60, 20], [33, 34, 33], [25, 25, 25, 25], [40, 30, 30]]


@pytest.mark.cluster
def test_api_server_and_router_agree_on_every_ramp_weight(admission):
    """One rule of A/B/n weights: the CRD's CEL rules and the router (Assignment) accept the same steps."""
    from cambrian.online.assignment import Assignment

    base = valid_examples()["Rollout"]
    disagreements = []
    for weights in WEIGHTS_GRID:
        obj = yaml.safe_load(yaml.safe_dump(base))
        names = [f"t{i}" for i in range(len(weights) - 1)]
        obj["spec"]["treatments"] = [{**obj["spec"]["treatments"][0], "name": n} for n in names]
        obj["spec"]["ramp"] = {"steps": [{"weights": weights, "duration": "1d"}]}
        try:
            Assignment.create("s", "control", names, dict(zip(["control", *names], weights)))
            router_ok = True
        except ValueError:
            router_ok = False
        server_msg = admission(obj)
        if (server_msg is None) != router_ok:
            disagreements.append(f"{weights}: router {'accepts' if router_ok else 'refuses'}, API server {server_msg}")
    assert not disagreements, disagreements


# ---- malformed files for the CLI ------------------------------------------------------------------

BAD_FILES = {
    "invalid-yaml": "optimizer: [unclosed\n",
    "not-a-mapping": "- a\n- b\n",
    "scalar": "42\n",
    "wrong-type": "optimizer: {lr: fast}\n",
    "unknown-component": "tokenizer: {vocab: 10}\n",
    "unknown-field": "optimizer: {name: Adam, lr: 0.01, warp: 9}\n",
    "out-of-range": "training: {epochs: 0}\n",
    "json-truncated": '{"optimizer": {"lr": 0.01',
    "binary": b"\xff\xfe\x00\x81garbage\x00",
}
BAD_DELTAS = {
    "empty": "",
    "not-a-mapping": "[1, 2]\n",
    "unknown-component": "component: tokenizer\npatch: {x: 1}\n",
    "empty-patch": "component: optimizer\npatch: {}\n",
    "patch-not-a-mapping": "component: optimizer\npatch: 3\n",
    "code-for-reward": "component: reward\ncode: 'x = 1'\n",
    "breaks-the-config": "component: optimizer\npatch: {lr: -5}\n",
    "invalid-yaml": "component: optimizer\npatch: {lr: [\n",
    "binary": b"\x00\x01\x02\xff\xfe",
}


def _write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def run_cli(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    """Run `cambrian ARGV` through the real entry point (cambrian.cli:main) in-process."""
    from cambrian.cli import main

    monkeypatch.setattr(sys, "argv", ["cambrian", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code, out.out + out.err


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_train_bad_config_exit_2(tmp_path, monkeypatch, capsys, name):
    cfg = _write(tmp_path / "phi.yaml", BAD_FILES[name])
    code, out = run_cli(monkeypatch, capsys, "train", "--config", str(cfg), "--data", str(tmp_path / "none"),
                        "--out", str(tmp_path / "out"))
    assert code == 2, out
    assert "Traceback" not in out and out.startswith("error: ") and "phi.yaml" in out


@pytest.mark.parametrize("name", sorted(BAD_DELTAS))
def test_train_bad_delta_exit_2(tmp_path, monkeypatch, capsys, name):
    delta = _write(tmp_path / "delta.yaml", BAD_DELTAS[name])
    code, out = run_cli(monkeypatch, capsys, "train", "--delta", str(delta), "--data", str(tmp_path / "none"),
                        "--out", str(tmp_path / "out"))
    assert code == 2, out
    assert "Traceback" not in out and out.startswith("error: ")
    assert "delta" in out  # names the file or the delta being applied


def test_train_missing_files_exit_2(tmp_path, monkeypatch, capsys):
    code, out = run_cli(monkeypatch, capsys, "train", "--config", str(tmp_path / "nope.yaml"), "--data",
                        str(tmp_path), "--out", str(tmp_path / "out"))
    assert code == 2 and "no such file" in out and "Traceback" not in out


EVOLVE_BAD = {
    **{k: v for k, v in BAD_FILES.items() if k in ("invalid-yaml", "not-a-mapping", "scalar", "binary",
                                                    "json-truncated")},
    "missing-data-dir": "generations: 2\n",
    "unknown-setting": "data_dir: /tmp\nturbo: true\n",
    "generations-zero": "data_dir: /tmp\ngenerations: 0\n",
    "workers-wrong-type": "data_dir: /tmp\nworkers: many\n",
    "unknown-persona": "data_dir: /tmp\npersonas: [marketing]\n",
    "quotas-zero": "data_dir: /tmp\nquotas: {explore: 0, exploit: 0, innovate: 0}\n",
    "negative-budget": "data_dir: /tmp\nbudgets: {max_evaluations: -1}\n",
    "bad-provider": "data_dir: /tmp\nprovider: {kind: skynet}\n",
}


@pytest.mark.parametrize("name", sorted(EVOLVE_BAD))
def test_evolve_bad_config_exit_2(tmp_path, monkeypatch, capsys, name):
    cfg = _write(tmp_path / "evolve.yaml", EVOLVE_BAD[name])
    code, out = run_cli(monkeypatch, capsys, "evolve", "--config", str(cfg))
    assert code == 2, out
    assert "Traceback" not in out and out.startswith("error: ")


@pytest.mark.parametrize("value", ["[unclosed", "{a: [", "many"])
def test_evolve_bad_environment_override_exit_2(tmp_path, monkeypatch, capsys, value):
    cfg = _write(tmp_path / "evolve.yaml", "data_dir: /tmp\n")
    monkeypatch.setenv("CAMBRIAN_EVOLVE_GENERATIONS", value)
    code, out = run_cli(monkeypatch, capsys, "evolve", "--config", str(cfg))
    assert code == 2, out
    assert "CAMBRIAN_EVOLVE_GENERATIONS" in out or "generations" in out
    assert "Traceback" not in out


def test_real_process_prints_no_traceback(tmp_path):
    """One real `cambrian train` process (the others run the same entry point in-process)."""
    import subprocess

    bad = _write(tmp_path / "phi.yaml", b"\xff\xfe garbage")
    out = subprocess.run([sys.executable, "-m", "cambrian.cli", "train", "--config", str(bad), "--data",
                          str(tmp_path), "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.startswith("error: ")


def test_corpus_writer(tmp_path):
    from corpus.objects import write_corpus

    n = write_corpus(tmp_path)
    files = sorted(tmp_path.glob("*.yaml"))
    assert n == len(files) == len(CASES)
    assert yaml.safe_load(files[0].read_text())["apiVersion"] == "cambrian.dev/v1alpha1"


def test_code_in_patch_is_rejected_by_the_operator():
    """The one corpus case admission lets through (see corpus/objects.py) ends Rejected in the reconcile core."""
    from datetime import datetime, timezone

    from cambrian.operator import api
    from cambrian.operator.reconcile import hypothesis as H
    from cambrian.operator.reconcile.common import Meta

    case = next(c for c in CASES if c.case_id == "hypothesis-code-in-patch")
    spec = api.HypothesisSpec.model_construct(**{  # as the API server stored it, unvalidated by pydantic
        "evolution_ref": api.LocalObjectRef(name="feed-ranker"), "component": "reward", "explanation": "x",
        "predicted_effect": api.PredictedEffect(), "origin": api.Origin(),
        "delta": api.HypothesisDelta.model_construct(patch=case.obj["spec"]["delta"]["patch"], code=None)})
    evo = api.EvolutionSpec.model_validate({"objective": {"northStar": [{"name": "dau"}]}, "data": {"world": {}}})
    res = H.reconcile(Meta("h", "uid", "ns", 1), spec, api.HypothesisStatus(),
                      H.EvolutionContext("feed-ranker", "uid-e", evo, {}), [], None, datetime.now(timezone.utc))
    assert res.status.phase == "Rejected" and "code" in res.status.reason
    assert not [a for a in res.actions if type(a).__name__ == "CreateTrainingJob"]
    # and the handlers' spec parse (before the core) already refuses it: InvalidSpec, no child, no retry
    with pytest.raises(ConfigError, match="patch.code"):
        api.parse_spec("Hypothesis", case.obj["spec"])
