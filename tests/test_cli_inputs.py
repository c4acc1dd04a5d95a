"""Issue 20, Deliver 2: every command checks its inputs before it starts any process or writes anything.
A bad file, bad YAML or a bad value fails through the real `cambrian` process with the exit code of its
class (2: invalid input), one `error:` line naming the problem (and at most a `hint:` line), no traceback,
and the folder it was pointed at unchanged; under --json the same failure is the one JSON error object on
stdout with nothing on stderr, and so are click's usage errors (unknown option, missing option, bad value)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CAMBRIAN = str(Path(sys.executable).with_name("cambrian"))
ROOT = Path(__file__).resolve().parents[1]
EVOLUTION = str(ROOT / "manifests" / "examples" / "evolution.yaml")
ROLLOUT = str(ROOT / "manifests" / "examples" / "rollout.yaml")

# (command line with {t} for the test's folder, what the error line must contain, the command takes --json)
BAD = [
    (["world", "generate", "--out", "{t}/afile", "--users", "10", "--days", "2"], "exists and is not a directory", True),
    (["world", "generate", "--out", "{t}/w", "--users", "10", "--days", "2", "--set", "bogus=1"], "bogus", True),
    (["world", "generate", "--out", "{t}/w", "--users", "10", "--days", "2", "--policy", "nope"], "unknown policy 'nope'",
     True),
    (["world", "generate", "--out", "{t}/w", "--users", "10", "--days", "2", "--preset", "nope"], "unknown world preset",
     True),
    (["world", "summary", "{t}/nope"], "not a world data directory", True),
    (["train", "--data", "{t}/nope", "--out", "{t}/afile"], "exists and is not a directory", True),
    (["train", "--data", "{t}/data", "--out", "{t}/afile/x"], "is a file, not a directory", True),
    (["train", "--data", "{t}/data", "--out", "{t}/out", "--run-store", "{t}/claim"],
     "--run-store and --run-settings go together", True),
    (["gate", "--data", "{t}/data", "--delta", "{t}/bad.yaml"], "bad.yaml: not valid YAML/JSON: expected ',' or ']'",
     True),
    (["gate", "--data", "{t}/data", "--delta", "{t}/nope.yaml"], "nope.yaml: no such file", True),
    (["gate", "--data", "{t}/data", "--config", "{t}/scalar.yaml"], "scalar.yaml", True),
    (["gate", "--data", "{t}/nope"], "not a data directory (no world.json)", True),
    (["movielens", "--out", "{t}/afile"], "exists and is not a directory", True),
    (["evolve", "-f", "{t}/nope.yaml", "--dir", "{t}/run"], "nope.yaml: cannot read (No such file or directory)", True),
    (["evolve", "-f", "{t}/bad.yaml", "--dir", "{t}/run"], "(line 2, column 1)", True),
    (["evolve", "-f", "{t}/scalar.yaml", "--dir", "{t}/run"], "document 1 is not a cambrian.dev/v1alpha1 object", True),
    (["evolve", "-f", EVOLUTION, "--dir", "{t}/afile"], "--dir", True),
    (["evolve", "-f", EVOLUTION, "--dir", "{t}/run", "--data", "{t}/nope"], "not a data directory", True),
    (["evolve", "-f", EVOLUTION, "--dir", "{t}/run", "--approve", "nonsense"], "--approve 'nonsense'", True),
    (["evolve", "-f", EVOLUTION, "--dir", "{t}/run", "--approve", "ghost=promote"], "--approve ghost: no Rollout 'ghost'",
     True),
    (["rollout", "-f", EVOLUTION, "--dir", "{t}/run"], "expected Rollout objects, found Evolution", True),
    (["rollout", "-f", "{t}/bad.yaml", "--dir", "{t}/run"], "cannot read", True),
    (["rollout", "-f", "{t}/promql.yaml", "--dir", "{t}/run"],
     "spec.metrics.promql.0: queries.sumY: promql: the only placeholders are {{arm}} and {{window}}", True),
    (["rollout", "-f", ROLLOUT, "--dir", "{t}/run", "--promql-url", "http://me:pw@prom:9090"],
     "--promql-url: no password in the URL", True),
    (["evolve", "-f", EVOLUTION, "--dir", "{t}/run", "--promql-url", "prom:9090"], "expected http://HOST:PORT", True),
    (["journal", "{t}/afile"], "afile: not a directory", True),
    (["serve", "--bundle", "{t}/nope", "--arm", "a"], "not a model bundle", False),
    (["route", "--config", "{t}/bad.yaml"], "(line 2, column 1)", False),
    (["route", "--config", "{t}/scalar.yaml"], "router config: must be a mapping", False),
    (["operator", "crds", "--out", "{t}/afile"], "exists and is not a directory", False),
    (["demo", "--out", "{t}/afile"], "exists and is not a directory", True),
    (["report", "{t}/nope", "--out", "{t}/rep"], "no such directory", False),
    (["dashboards", "--out", "{t}/d", "--out", "{t}/afile"], "exists and is not a directory", False),
]


def cambrian(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CAMBRIAN, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"/") for p in sorted(folder.rglob("*"))}


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    (tmp_path / "afile").write_text("a file where a folder is expected\n")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    (tmp_path / "scalar.yaml").write_text("just a string\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "world.json").write_text("{}\n")
    import yaml

    rollout = yaml.safe_load(Path(ROLLOUT).read_text())
    rollout["spec"]["metrics"]["promql"] = [{"name": "signup", "kind": "proportion", "queries": {
        "users": 'sum(u{arm="{{arm}}"})', "sumY": 'sum(y{arm="{{arm}}", ns="{{namespace}}"})'}}]
    (tmp_path / "promql.yaml").write_text(yaml.safe_dump(rollout))
    return tmp_path


def _case_id(case) -> str:
    return " ".join(a for a in case[0][:3] if not a.startswith("{") and "/" not in a) + f" [{case[1][:24]}]"


@pytest.mark.parametrize("args,message,has_json", BAD, ids=[_case_id(c) for c in BAD])
def test_bad_input_fails_before_anything_starts(inputs, args, message, has_json):
    argv = [a.replace("{t}", str(inputs)) for a in args]
    before = tree(inputs)
    r = cambrian(*argv)
    lines = r.stderr.splitlines()
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert lines and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), r.stderr
    assert tree(inputs) == before, "the command wrote something before failing"
    if has_json:
        r = cambrian(*argv, "--json")
        assert r.returncode == 2 and r.stderr == "", r.stderr[-3000:]
        body = json.loads(r.stdout)
        assert body["ok"] is False and message in (body.get("error") or body.get("reason")), body
        assert tree(inputs) == before


USAGE = [
    (["train", "--data", "x", "--out", "y", "--bogus"], "No such option: --bogus"),
    (["train", "--out", "y"], "Missing option '--data'"),
    (["world", "generate", "--out", "y", "--users", "many"], "Invalid value for '--users'"),
    (["evolve", "-f", "x", "--dir", "y", "--workers", "0"], "Invalid value for '--workers'"),
    (["nope"], "No such command 'nope'"),
]


@pytest.mark.parametrize("args,message", USAGE, ids=[" ".join(u[0][:2]) for u in USAGE])
def test_usage_errors_under_json_are_the_json_error_object(args, message):
    r = cambrian(*args, "--json")
    assert r.returncode == 2 and r.stderr == "", r.stderr
    body = json.loads(r.stdout)
    assert body["ok"] is False and body["exit_code"] == 2 and message in body["error"], body
    assert body["hint"].endswith("--help`")
    # Without --json: click's usage text on stderr, as before.
    r = cambrian(*args)
    assert r.returncode == 2 and r.stdout == "" and message in r.stderr


def test_approvals_name_a_rollout_of_the_file_or_of_the_run_directory(tmp_path):
    from cambrian.errors import ConfigError
    from cambrian.operator.local_cli import check_approvals
    from cambrian.operator.localstore import LocalStore

    store = LocalStore(tmp_path)
    in_file = [{"kind": "Rollout", "metadata": {"name": "ro-a"}}]
    check_approvals([("ro-a", "promote")], in_file, store)
    store.put({"apiVersion": "cambrian.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "ro-b"}, "spec": {}})
    check_approvals([("ro-b", "rollback")], [], store)  # from an earlier run in the same --dir
    with pytest.raises(ConfigError, match="no Rollout 'ro-c'"):
        check_approvals([("ro-a", "promote"), ("ro-c", "promote")], in_file, store)
