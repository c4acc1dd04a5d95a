"""The sandbox itself: the bubblewrap command it builds, its seccomp program, its limits, and failing closed
where the machine cannot contain candidate code (the red-team corpus in tests/reliability/redteam/ attacks it)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cambrian.trainer import sandbox
from cambrian.trainer.sandbox import bwrap_command, runtime_paths, seccomp_program

PLUGIN_DELTA = {"component": "optimizer",
                "code": "def build_optimizer(params, cfg):\n    return torch.optim.SGD(params, lr=cfg.lr)\n"}


def test_bwrap_is_installed_and_the_kernel_allows_it():
    """CI installs bubblewrap (scripts/setup.sh); here it must work, not be skipped."""
    assert sandbox.bwrap_problem() is None, sandbox.bwrap_problem()


def test_the_command_isolates_everything_and_binds_only_the_runtime(tmp_path):
    cmd = bwrap_command(tmp_path / "in", tmp_path / "out", ["python", "-V"], {"HOME": "/tmp"}, 7)
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--clearenv"):
        assert flag in cmd
    assert cmd[cmd.index("--seccomp") + 1] == "7" and cmd[cmd.index("--uid") + 1] == "65534"
    assert "--share-net" not in cmd
    binds = [(cmd[i], cmd[i + 1], cmd[i + 2]) for i, a in enumerate(cmd) if a in ("--bind", "--ro-bind", "--dev-bind")]
    writable = [b for b in binds if b[0] != "--ro-bind"]
    assert writable == [("--bind", str(tmp_path / "out"), "/scratch")]
    sources = {b[1] for b in binds}
    assert "/" not in sources and "/etc" not in sources and not any(s.startswith(("/home", "/var", "/proc")) for s in sources)
    assert Path(os.getcwd()) not in {Path(s) for s in sources}  # not the checkout or working directory
    assert all(p.is_dir() for p in runtime_paths())


def test_the_seccomp_program_is_a_compiled_filter():
    program = seccomp_program()
    assert len(program) % 8 == 0 and len(program) > 8 * len(sandbox.DENIED_SYSCALLS)


def fake_bin(tmp_path: Path, bwrap_script: str | None) -> str:
    """A PATH with only python and, optionally, a stand-in bwrap."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    if bwrap_script is not None:
        f = bindir / "bwrap"
        f.write_text(bwrap_script)
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return str(bindir)


@pytest.mark.parametrize("bwrap_script,words", [
    (None, "bubblewrap (bwrap) is not installed"),
    ("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n", "the kernel refuses"),
])
def test_plugin_code_never_runs_where_the_sandbox_cannot_be_built(world_dir, tmp_path, bwrap_script, words):
    delta = tmp_path / "delta.json"
    delta.write_text(json.dumps(PLUGIN_DELTA))
    env = {**os.environ, "PATH": fake_bin(tmp_path, bwrap_script)}
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "train", "--data", str(world_dir), "--out",
                           str(tmp_path / "run"), "--delta", str(delta)], capture_output=True, text=True, env=env)
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.startswith("error: sandbox: ") and words in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "run" / "error.json").read_text())["stage"] == "sandbox"
    assert not (tmp_path / "run" / "metrics.json").exists()
    # asking for the sandbox explicitly fails closed even without code
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "gate", "--data", str(world_dir), "--sandbox", "bwrap"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 4 and words in proc.stderr


def test_the_limits_are_hard_and_cannot_be_raised_again():
    code = ("import resource; from cambrian.trainer.sandbox import apply_limits\n"
            "apply_limits(as_mb=8000, cpu_s=100, fsize_mb=5, nproc=64, nofile=256)\n"
            "print(resource.getrlimit(resource.RLIMIT_FSIZE), resource.getrlimit(resource.RLIMIT_NOFILE))\n"
            "import os; os.setuid(65534)\n"
            "try:\n    resource.setrlimit(resource.RLIMIT_FSIZE, (10 << 20, 10 << 20)); print('raised')\n"
            "except ValueError:\n    print('refused')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == f"({5 << 20}, {5 << 20}) (256, 256)" and out[1] == "refused"


def test_the_in_process_filter_refuses_processes_and_network_sockets_but_not_threads():
    """A training pod's step loads the sandbox's rules itself (no bubblewrap in a container): after load_filter
    no process starts and no TCP socket opens, while threads and unix sockets still work."""
    probe = """
import os, socket, subprocess, threading
from cambrian.trainer.sandbox import load_filter
load_filter()
out = []
try:
    subprocess.run(["/bin/true"]); out.append("spawned")
except OSError as e:
    out.append(f"spawn:{e.errno}")
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM); out.append("tcp")
except OSError as e:
    out.append(f"tcp:{e.errno}")
a, b = socket.socketpair(socket.AF_UNIX); out.append("unix")
t = threading.Thread(target=lambda: out.append("thread")); t.start(); t.join()
print(" ".join(out))
"""
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    import errno

    assert res.stdout.split() == [f"spawn:{errno.EPERM}", f"tcp:{errno.EAFNOSUPPORT}", "unix", "thread"], res.stdout


def test_a_pod_step_loads_the_filter_before_candidate_code(tmp_path):
    """The pod's contained step gets --seccomp; the local contained one (bubblewrap applies the filter) does not."""
    from cambrian.trainer.train import SandboxLimits, _Contained

    (tmp_path / "pod").mkdir()
    in_pod = _Contained(tmp_path / "pod", "training", False, SandboxLimits(), False, in_pod=True)
    local = _Contained(tmp_path, "training", True, SandboxLimits(), False)
    assert "--seccomp" in in_pod.argv("train", True) and "--seccomp" not in local.argv("train", True)


def python_inside(tmp_path: Path, code: str) -> sandbox.ContainedResult:
    """`python -c code` in the sandbox, with the environment every contained process gets."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    return sandbox.run_contained(tmp_path / "in", tmp_path / "out", [sys.executable, "-c", code],
                                 sandbox.contained_environment(), 60, tmp_path / "log")


def test_a_contained_process_knows_its_user_without_a_passwd_entry(tmp_path):
    """nobody has no passwd entry inside; torch asks getpass.getuser() on CUDA (its compile cache), which raised
    KeyError there and failed every contained GPU run at the optimizer (seen on an H200)."""
    code = "import getpass, os, pwd\ntry:\n    pwd.getpwuid(os.getuid())\nexcept KeyError:\n    print('no entry', getpass.getuser())\n"
    res = python_inside(tmp_path, code)
    assert res.returncode == 0 and res.log_tail == "no entry nobody", res


def test_inside_only_its_own_names_resolve_and_only_to_its_loopback(tmp_path):
    """torchrun's agent (torch < 2.12) resolves "localhost" for a free port: without an /etc/hosts every
    data-parallel run failed there ("Temporary failure in name resolution", seen on an H200 with torch 2.11)."""
    code = ("import socket\nfor h in ('localhost', 'sandbox', 'example.com'):\n"
            "    try:\n        print(h, ','.join(sorted({a[4][0] for a in socket.getaddrinfo(h, None)})))\n"
            "    except socket.gaierror:\n        print(h, 'unknown')\n")
    res = python_inside(tmp_path, code)
    assert res.returncode == 0, res
    seen = dict(line.split(" ", 1) for line in res.log_tail.splitlines())
    assert seen["example.com"] == "unknown"
    for name in ("localhost", "sandbox"):
        assert seen[name] != "unknown" and set(seen[name].split(",")) <= {"127.0.0.1", "::1"}, seen


@pytest.mark.parametrize("line,expected", [("cuda: Optional[str] = '13.2'", True), ("cuda: Optional[str] = None", False),
                                           ("cuda = '12.1'", True), ("hip = '6.0'", False)])
def test_the_trusted_side_reads_whether_torch_has_cuda_without_importing_it(tmp_path, monkeypatch, line, expected):
    """GPU runs are chosen without torch (the trusted side never imports it): a /dev/nvidiaN node and a torch built
    with CUDA, read from torch/version.py by Python's parser; the installed torch reads as torch itself says."""
    import importlib.util
    import types

    import torch

    assert sandbox.torch_built_with_cuda() == (torch.version.cuda is not None)
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "version.py").write_text(f"from typing import Optional\n__version__ = '9.9'\n{line}\n")
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: types.SimpleNamespace(submodule_search_locations=[str(fake)]))
    assert sandbox.torch_built_with_cuda() is expected
    monkeypatch.setattr(sandbox, "gpu_devices", lambda: [Path("/dev/nvidia0"), Path("/dev/nvidiactl")])
    assert sandbox.gpu_present() is expected
    monkeypatch.setattr(sandbox, "gpu_devices", lambda: [Path("/dev/nvidiactl")])  # a control node, no GPU
    assert sandbox.gpu_present() is False
