"""Untrusted candidate code: a fast static filter for honest mistakes, contained by the sandbox, never run by
the operator.

* plugin code that imports what plugins are not offered (os, subprocess, socket ...) or calls eval/exec/open is
  refused at the gate's static stage with the line; everything else torch allows (dunder and frame walks,
  torch's file/hub/native entry points) passes the filter and is contained by the sandbox instead (the
  red-team corpus, tests/reliability/redteam, shows each class contained on every path);
* a candidate run in the real sandbox (agents/runner.py + sandbox_exec.py) sees no API key, no
  proxy, no cloud or Kubernetes setting, a temporary HOME, only the observable data files (no truth/),
  and no network (a loopback server of the parent is unreachable) where user namespaces allow it;
* on the cluster, the rendered chart NetworkPolicy leaves training pods no egress but DNS, and the
  training Job hides /data/truth from the trainer container;
* the operator process imports nothing that executes generated code (AST closure of its imports).
Fork bombs are out of scope.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import pytest

from cambrian.errors import GateError
from cambrian.agents.runner import RunLimits, clean_environment, network_isolation_available, run_candidate
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.delta import parse_delta
from cambrian.trainer.plugins import check_code
from hostile import loopback_tcp, plugin_source, recording_servers

ROOT = Path(__file__).resolve().parents[2]

def model(init: str = "", fwd: str = "") -> str:
    return plugin_source(init, fwd)


# (id, code, a word the refusal must contain)
REFUSED = [
    ("import-os", "import os\n" + model(), "'os'"),
    ("import-subprocess", "import subprocess\n" + model(), "subprocess"),
    ("from-socket", "from socket import socket\n" + model(), "socket"),
    ("import-ctypes", "import ctypes\n" + model(), "ctypes"),
    ("import-pickle", "import pickle\n" + model(), "pickle"),
    ("import-pathlib", "import pathlib\n" + model(), "pathlib"),
    ("import-numpy", "import numpy as np\n" + model(), "numpy"),
    ("import-pandas", "import pandas\n" + model(), "pandas"),
    ("import-gc", "import gc\n" + model(), "gc"),
    ("import-inspect", "import inspect\n" + model(), "inspect"),
    ("relative-import", "from . import x\n" + model(), "import"),
    ("dunder-import", model(init="m = __import__('os')"), "__import__"),
    ("eval", model(init="eval('1+1')"), "eval"),
    ("exec", model(init="exec('x = 1')"), "exec"),
    ("compile", model(init="compile('1', 'f', 'eval')"), "compile"),
    ("open-truth", model(init="open('/data/truth/state.npz').read()"), "open"),
    ("open-passwd-in-forward", model(fwd="open('/etc/passwd')"), "open"),
    ("breakpoint", model(init="breakpoint()"), "breakpoint"),
    ("syntax-error", "class Model(nn.Module:\n    pass\n", "syntax"),
    ("no-entry-point", "x = 1\n", "Model"),
]
# Passes the static filter since the boundary moved to the operating system (issue 13): contained instead.
CONTAINED = [
    ("import-torch-utils", "import torch.utils.data\n" + model(), ""),
    ("mro-escape", model(init="x = ().__class__.__mro__[1].__subclasses__()"), "__subclasses__|__mro__|__class__"),
    ("base-subclasses", model(init="x = [].__class__.__base__"), "__base__|__class__"),
    ("globals", model(init="g = globals()"), "globals"),
    ("vars", model(init="v = vars(self)"), "vars"),
    ("getattr-escape", model(init="f = getattr(torch, 'lo' + 'ad')"), "getattr"),
    ("builtins-dict", model(init="b = __builtins__"), "__builtins__"),
    ("func-globals", model(init="g = self.forward.__globals__"), "__globals__"),
    ("private-torch", model(init="c = torch._C"), "_C"),
    ("torch-load", model(init="w = torch.load('/data/truth/x.pt')"), "load"),
    ("torch-save", model(init="torch.save(self.lin, '/tmp/x')"), "save"),
    ("torch-hub", model(init="m = torch.hub.load('x/y', 'z')"), "hub|load"),
    ("torch-from-file", model(init="s = torch.UntypedStorage.from_file('/etc/passwd')"), "from_file"),
    ("torch-ops-library", model(init="torch.ops.load_library('/tmp/evil.so')"), "ops"),
    ("torch-cpp-extension", model(init="torch.utils.cpp_extension.load_inline('x', '')"), "utils|cpp_extension|load_inline"),
    ("torch-jit", model(init="torch.jit.script(self.lin)"), "jit"),
    ("numpy-tofile", model(init="torch.zeros(3).numpy().tofile('/tmp/pwn')"), "tofile"),
    ("str-format-escape", model(init="s = '{0.__class__.__mro__}'.format(())"), "format"),
    # A generator's frame leads to the trainer's frames and their locals (the validation labels).
    ("frame-walk", model(fwd="""
        gs = []
        g = (gs[0].gi_frame.f_back.f_back.f_locals for _ in [0])
        gs.append(g)
        stolen = next(g)"""), "gi_frame|f_back|f_locals"),
    ("traceback-frames", model(init="""
        try:
            1 / 0
        except Exception as e:
            t = e.__traceback__"""), "__traceback__"),
    ("global-stmt", "X = 1\ndef f():\n    global X\n" + model(), "global"),
    ("async", "async def f():\n    pass\n" + model(), "async"),
    ("environ", model(init="e = torch.environ"), "environ"),
]
HOSTILE = REFUSED + CONTAINED


@pytest.mark.parametrize("code,word", [(c, w) for _, c, w in REFUSED], ids=[i for i, _, _ in REFUSED])
def test_honest_mistakes_are_refused_statically(code, word):
    with pytest.raises(GateError) as err:
        check_code(code, "architecture")
    assert err.value.stage in ("parse", "static")
    assert any(w in str(err.value) for w in word.split("|")), str(err.value)
    assert "line" in str(err.value) or err.value.stage == "static"


@pytest.mark.parametrize("code", [c for _, c, _ in CONTAINED], ids=[i for i, _, _ in CONTAINED])
def test_the_static_filter_is_not_the_boundary(code):
    """What torch and Python allow passes the filter: the sandbox, not the source check, contains it."""
    check_code(code, "architecture")


def test_a_benign_plugin_passes_the_same_checks():
    """The checks are not refusing everything: an ordinary plugin gets through."""
    check_code(model(init="self.act = nn.ReLU()", fwd="h = F.relu(batch['dense'])"), "architecture")
    check_code("def build_optimizer(params, cfg):\n    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9)\n",
               "optimizer")


def test_hostile_deltas_are_rejected_before_any_process_starts():
    """A delta whose code is hostile never reaches training: the gate's static stage refuses it (the core runs it
    before any Job: tests/operator/test_reconcile_hypothesis.py::test_plugin_code_fails_the_static_gate_before_any_job)."""
    from cambrian.trainer.delta import apply_delta
    from cambrian.trainer.codecheck import static_checks

    for hid, code, _ in REFUSED[:12]:
        cfg = apply_delta(ModelConfig(), parse_delta({"component": "architecture", "code": code}))
        with pytest.raises(GateError):
            static_checks(cfg)


# ---- the sandbox ---------------------------------------------------------------------------------

PROBE = r'''
import json, os, socket, sys
args = sys.argv[1:]
opt = {args[i]: args[i + 1] for i in range(0, len(args) - 1, 2) if args[i].startswith("--")}
out = opt["--out"]; os.makedirs(out, exist_ok=True)
data = opt["--data"]
report = {"env": dict(os.environ), "argv": sys.argv, "cwd": os.getcwd(), "data_files": sorted(os.listdir(data))}
try:
    report["truth"] = sorted(os.listdir(os.path.join(data, "truth")))
except OSError as e:
    report["truth"] = "unreadable: " + type(e).__name__
try:
    report["parent_listing"] = sorted(os.listdir(os.path.join(data, "..")))
except OSError as e:
    report["parent_listing"] = []
port = int(os.environ.get("PROBE_PORT", "0"))
try:
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.sendall(b"hello"); s.close()
    report["network"] = "connected"
except OSError as e:
    report["network"] = "refused: " + type(e).__name__
json.dump(report, open(os.path.join(out, "probe.json"), "w"))
json.dump({"schema_version": 1, "val_loss": 0.5}, open(os.path.join(out, "metrics.json"), "w"))
'''

FAKE_SECRETS = {
    "GEMINI_API_KEY": "AIzaFAKE-gemini-secret-0123456789", "OPENAI_API_KEY": "sk-FAKE-openai-secret",
    "GOOGLE_APPLICATION_CREDENTIALS": "/secrets/gcp.json", "AWS_SECRET_ACCESS_KEY": "aws-FAKE-secret",
    "KUBECONFIG": "/root/.kube/config", "HTTPS_PROXY": "http://user:pw@proxy.corp:3128",
    "http_proxy": "http://user:pw@proxy.corp:3128", "GITHUB_TOKEN": "ghp_FAKE", "DB_PASSWORD": "hunter2",
    "CAMBRIAN_PROVIDER_KEY": "cambrian-FAKE-provider-key",
}


@pytest.fixture
def listener():
    """A loopback TCP server in the test process: reachable only from the same network namespace."""
    srv = loopback_tcp()
    with recording_servers(srv) as hits:
        yield srv.getsockname()[1], hits


def test_sandboxed_candidate_sees_no_secrets_no_truth_no_network(tmp_path, tiny_world, monkeypatch, listener):
    port, hits = listener
    for k, v in FAKE_SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PROBE_PORT", str(port))
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    outcome = run_candidate(ModelConfig(), None, tiny_world, tmp_path / "cand", RunLimits(wall_seconds=60),
                            command=[sys.executable, str(probe)])
    assert outcome.ok, outcome.failure
    report = json.loads((outcome.out_dir / "probe.json").read_text())
    env = report["env"]
    for k, v in FAKE_SECRETS.items():
        assert k not in env, f"{k} leaked into the candidate's environment"
        assert not any(v in str(x) for x in env.values()), f"the value of {k} leaked"
    assert not [k for k in env if "PROXY" in k.upper()]
    assert env["HOME"] != os.environ.get("HOME") and env["HOME"].startswith(("/tmp", os.environ.get("TMPDIR", "/tmp")))
    # only the observable files, and the real data directory is not even named
    assert report["data_files"] == sorted(["impressions.parquet", "items.parquet", "user_days.parquet",
                                           "users.parquet", "world.json"])
    assert report["truth"].startswith("unreadable")
    assert "truth" not in report["parent_listing"]
    assert str(tiny_world) not in json.dumps(report["argv"]) and str(tiny_world) not in json.dumps(env)
    assert (tiny_world / "truth").is_dir()  # it is there, just not for the candidate
    if network_isolation_available():
        assert report["network"].startswith("refused"), report["network"]
        assert hits == [] and "no-network" in outcome.isolation
    else:
        pytest.skip("unprivileged user namespaces unavailable here: network isolation cannot be tested")


def test_clean_environment_keeps_what_training_needs():
    env = clean_environment({"PATH": "/usr/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "GEMINI_API_KEY": "x",
                             "NO_PROXY": "localhost", "ALL_PROXY": "socks5://a", "SSH_AUTH_SOCK": "/s"}, home="/tmp/h")
    assert env["PATH"] == "/usr/bin" and env["LANG"] == "C.UTF-8" and env["OMP_NUM_THREADS"] == "1"
    assert set(env) == {"PATH", "LANG", "OMP_NUM_THREADS", "HOME", "TMPDIR", "PYTHONDONTWRITEBYTECODE"}


def test_network_off_fails_closed_when_isolation_is_impossible(tmp_path, tiny_world, monkeypatch):
    """limits.network=off never runs a candidate with the network on: it is refused with the reason."""
    import cambrian.agents.runner as runner

    monkeypatch.setattr(runner, "network_isolation_available", lambda: False)
    out = run_candidate(ModelConfig(), None, tiny_world, tmp_path / "c", RunLimits(network="off"),
                        command=[sys.executable, "-c", "raise SystemExit(0)"])
    assert not out.ok and out.failure.stage == "sandbox" and "network isolation" in out.failure.reason


@pytest.mark.slow
@pytest.mark.parametrize("hid,code,stage,phase", [
    ("import-os", "import os\n" + model(), "static", "Validated"),
    ("infinite-loop", model(init="while True:\n    pass"), "timeout", "Training"),
    ("memory-bomb", model(init="hog = []\nwhile True:\n    hog.append(torch.ones(64 * 1024 * 1024))"),
     "memory", "Training"),
])
def test_real_trainer_ends_hostile_candidates_with_the_reason(tmp_path, tiny_world, hid, code, stage, phase):
    """The real `cambrian train` in the sandbox: refused (exit 3, static) or killed (timeout, memory)."""
    delta = parse_delta({"component": "architecture", "code": code})
    # the tree is the trainer and its contained child, each with torch loaded (~1.5 GiB together)
    limits = RunLimits(wall_seconds=90, rss_mb=3000, threads=1)
    out = run_candidate(ModelConfig.model_validate({"training": {"epochs": 1, "device": "cpu"}}), delta, tiny_world,
                        tmp_path / hid, limits)
    assert not out.ok and out.failure is not None
    assert out.failure.stage == stage, out.failure
    assert out.failure.phase == phase and out.failure.reason


# ---- the cluster: NetworkPolicy and the training pod ------------------------------------------------

def _policy_allows(policy: dict, pod_labels: dict, port: int, protocol: str = "TCP", to_dns: bool = False) -> bool:
    """Does this NetworkPolicy allow egress from a pod with these labels to an arbitrary address:port?

    Evaluated the way the NetworkPolicy API defines it: a selected pod's egress is denied unless a rule
    allows it; a rule allows a peer when a `to` entry matches (no `to` = everywhere) and a port matches
    (no `ports` = every port). `to_dns`: the destination is the cluster DNS pod, not an arbitrary address."""
    spec = policy["spec"]
    sel = spec["podSelector"].get("matchLabels", {})
    if not all(pod_labels.get(k) == v for k, v in sel.items()):
        return True  # not selected: this policy says nothing
    if "Egress" not in spec.get("policyTypes", []):
        return True
    for rule in spec.get("egress") or []:
        ports = rule.get("ports")
        port_ok = not ports or any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports)
        peers = rule.get("to")
        if not peers:
            peer_ok = True
        else:
            peer_ok = any("ipBlock" in p or (to_dns and ("namespaceSelector" in p or "podSelector" in p)) for p in peers)
        if port_ok and peer_ok:
            return True
    return False


@pytest.fixture(scope="module")
def rendered():
    import subprocess

    import yaml

    sys.path.insert(0, str(ROOT / "tests" / "chart"))
    helm = os.environ.get("CAMBRIAN_HELM")
    if not helm:
        from cambrian.testing.cluster import find_bin_dir

        bin_dir = find_bin_dir()
        cand = (bin_dir / "helm") if bin_dir else None
        import shutil

        helm = str(cand) if cand and os.access(cand, os.X_OK) else shutil.which("helm")
    if not helm:
        pytest.skip("helm not found: run scripts/build-test-cluster.sh or set CAMBRIAN_HELM")
    out = subprocess.run([helm, "template", "cambrian", str(ROOT / "charts" / "cambrian"), "--namespace", "cambrian",
                          "--kube-version", "1.33.0"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_chart_network_policy_denies_training_pod_egress(rendered):
    from cambrian.operator.platform import kubernetes as K
    from cambrian.operator.reconcile.actions import CreateTrainingJob, Owner

    job = K.training_job(CreateTrainingJob(
        name="h-train-1-abc", owner=Owner("Hypothesis", "h", "uid", "cambrian"), hypothesis="h", attempt=1,
        baseline={}, delta={"component": "optimizer", "patch": {"lr": 0.02}},
        training={"image": "trainer:1"}, data={"world": {"users": 100, "days": 3}}))
    labels = job["spec"]["template"]["metadata"]["labels"]
    policies = [d for d in rendered if d["kind"] == "NetworkPolicy"]
    selecting = [p for p in policies if all(labels.get(k) == v for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())]
    assert selecting, "no NetworkPolicy selects the training pods the operator creates"
    for port in (443, 80, 6443, 8080, 53):
        allowed = all(_policy_allows(p, labels, port) for p in selecting)
        assert not allowed, f"a training pod may reach an arbitrary address on port {port}"
    # by default not even DNS (the trainer needs no name lookups); nothing may connect in
    assert not all(_policy_allows(p, labels, 53, "UDP", to_dns=True) for p in selecting)
    for p in selecting:
        assert "Ingress" in p["spec"]["policyTypes"] and not p["spec"].get("ingress")


def test_training_pod_has_no_credentials_and_no_truth():
    from cambrian.operator.platform import kubernetes as K
    from cambrian.operator.reconcile.actions import CreateTrainingJob, Owner

    job = K.training_job(CreateTrainingJob(
        name="h-train-1-abc", owner=Owner("Hypothesis", "h", "uid", "cambrian"), hypothesis="h", attempt=1,
        baseline={}, delta={"component": "architecture", "code": "x"}, training={"image": "trainer:1"},
        data={"world": {"users": 100, "days": 3}}))
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    for c in pod["initContainers"] + pod["containers"]:
        assert not [e for e in c.get("env", []) if "valueFrom" in e or any(w in e["name"] for w in ("KEY", "TOKEN", "SECRET"))]
        assert not c.get("envFrom")
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    # the container that runs candidate code mounts no data at all (neither truth/ nor the held-out days)
    (trainer,) = [c for c in pod["initContainers"] if c["name"] == K.TRAINER]
    assert {m["name"] for m in trainer["volumeMounts"]} == {"training-in", "training-out", "tmp-trainer"}
    assert not [v for v in pod["volumes"] if "secret" in v]
    # the pod layout behind the cluster rows the harness cannot execute: its input read-only (no write-through
    # to shared data), a read-only root (no host file but the image's), its own PID, IPC and network
    # namespaces (no host process to signal), and no host path
    assert [m.get("readOnly") for m in trainer["volumeMounts"] if m["name"] == "training-in"] == [True]
    assert trainer["securityContext"]["readOnlyRootFilesystem"] is True
    assert not any(pod.get(k) for k in ("hostPID", "hostIPC", "hostNetwork", "shareProcessNamespace"))
    assert not [v for v in pod["volumes"] if "hostPath" in v]


# ---- the operator never executes generated code -----------------------------------------------------

PKG_DIRS = {"cambrian.trainer": "trainer", "cambrian.world": "world", "cambrian.operator": "operator",
            "cambrian.online": "online", "cambrian": "cambrian"}


def _module_path(mod: str) -> Path | None:
    for pre in sorted(PKG_DIRS, key=len, reverse=True):
        if mod == pre or mod.startswith(pre + "."):
            rest = mod[len(pre):].lstrip(".").replace(".", "/")
            base = ROOT / PKG_DIRS[pre] / rest if rest else ROOT / PKG_DIRS[pre]
            if base.with_suffix(".py").is_file():
                return base.with_suffix(".py")
            if (base / "__init__.py").is_file():
                return base / "__init__.py"
    return None


def _imports(path: Path, mod: str) -> set[str]:
    """Every cambrian module imported anywhere in the file, function-level (lazy) imports included."""
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                parts = pkg.split(".")
                m = ".".join(parts[:len(parts) - (n.level - 1)] + ([n.module] if n.module else []))
            else:
                m = n.module or ""
            out |= {m} | {f"{m}.{a.name}" for a in n.names}
    return {m for m in out if m.startswith("cambrian")}


def import_closure(*roots: str) -> dict[str, Path]:
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        m = todo.pop()
        p = None if m in seen else _module_path(m)
        if p is not None:
            seen[m] = p
            todo += sorted(_imports(p, m))
    return seen


# Calls that execute candidate code (in-process) or start a candidate; none may appear in operator-side code.
EXECUTING_CALLS = {"exec", "eval", "compile", "__import__", "load_plugin", "build_model", "build_optimizer",
                   "run_gate", "forward_backward", "run_candidate", "fit"}
BUILTIN_EXEC = {"exec", "eval", "compile", "__import__"}
EXECUTES_CODE = {"cambrian.trainer.plugins", "cambrian.trainer.gate", "cambrian.trainer.train"}


def _calls(path: Path) -> list[tuple[int, str]]:
    out = []
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Call):
            f = n.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if isinstance(f, ast.Attribute) and name in BUILTIN_EXEC:
                continue  # re.compile, not the builtin
            if name in EXECUTING_CALLS:
                out.append((n.lineno, name))
    return out


def test_operator_process_never_executes_generated_code():
    """Every module the operator process can import (lazy imports included): the ones outside trainer/ never
    call anything that runs candidate code, and the trainer's executing modules are not reachable at all.
    (The built-in proposer may import trainer.models to read the architecture registry: data, not code.)"""
    closure = import_closure("cambrian.operator.handlers", "cambrian.operator.reconcile", "cambrian.operator.cli")
    assert "cambrian.operator.handlers" in closure and "cambrian.operator.reconcile.hypothesis" in closure
    problems = [f"{m}:{line} calls {name}" for m, p in closure.items() if not m.startswith("cambrian.trainer")
                for line, name in _calls(p)]
    assert not problems, problems
    for m in EXECUTES_CODE & set(closure):  # reachable only through a module that never calls into it
        importers = [x for x, p in closure.items() if m in _imports(p, x)]
        assert all(x.startswith("cambrian.trainer") for x in importers), (m, importers)
    assert "cambrian.trainer.gate" not in closure and "cambrian.trainer.train" not in closure


def test_operator_import_loads_no_plugin_machinery_at_runtime():
    """The same, measured: importing the operator's modules leaves the plugin loader unloaded."""
    import subprocess

    code = ("import sys, cambrian.operator.handlers, cambrian.operator.reconcile, cambrian.operator.platform.kubernetes; "
            "print([m for m in sys.modules if m in %r])" % sorted(EXECUTES_CODE))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CAMBRIAN_OPERATOR_INTERVAL": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
