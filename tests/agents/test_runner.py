"""The sandboxed candidate runner, driven by a scripted stand-in for `cambrian train` (same CLI and
output contract) so that hangs, memory bombs and crashes cost seconds, not trainings."""

import json
import os
import time

import psutil
import pytest

from cambrian.agents.runner import RunLimits, clean_environment, network_isolation_available, run_candidate
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.delta import parse_delta


def mode_delta(mode):
    return parse_delta({"component": "optimizer", "patch": {"params": {"mode": mode}}})


def test_clean_environment_strips_credentials():
    env = {"PATH": "/bin", "GEMINI_API_KEY": "g", "GOOGLE_APPLICATION_CREDENTIALS": "/k.json", "OPENAI_API_KEY": "o",
           "OPENAI_BASE_URL": "u", "AWS_SECRET_ACCESS_KEY": "a", "AWS_PROFILE": "p", "KUBECONFIG": "/kc",
           "KUBERNETES_SERVICE_HOST": "10.0.0.1", "MY_SERVICE_TOKEN": "t", "DB_PASSWORD": "x", "LANG": "C.UTF-8",
           "SSH_AUTH_SOCK": "/s", "HF_TOKEN": "h"}
    out = clean_environment(env, home="/tmp/h")
    assert set(out) == {"PATH", "LANG", "HOME", "TMPDIR", "PYTHONDONTWRITEBYTECODE"}
    assert out["HOME"] == "/tmp/h"


def test_success_env_and_cwd(tmp_path, tiny_world, fake_trainer, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "super-secret")
    monkeypatch.setenv("KUBECONFIG", "/root/.kube/config")
    monkeypatch.setenv("FAKE_DUMP_ENV", "1")
    out = run_candidate(ModelConfig(), None, tiny_world, tmp_path / "c", RunLimits(wall_seconds=60), fake_trainer)
    assert out.ok, out.failure
    assert out.metrics["val_loss"] > 0
    dumped = json.loads((tmp_path / "c" / "out" / "env.json").read_text())
    assert "GEMINI_API_KEY" not in dumped["env"] and "KUBECONFIG" not in dumped["env"]
    assert "super-secret" not in json.dumps(dumped)
    # its own temp folder in the run's folder (a re-run after a killed driver starts it afresh), removed afterwards
    assert dumped["cwd"] == str((tmp_path / "c" / "tmp").resolve()) == dumped["env"]["TMPDIR"]
    assert not os.path.exists(dumped["cwd"])
    assert (tmp_path / "c" / "config.json").is_file()


def test_hanging_candidate_is_killed(tmp_path, tiny_world, fake_trainer):
    t0 = time.monotonic()
    out = run_candidate(ModelConfig(), mode_delta("hang"), tiny_world, tmp_path / "h", RunLimits(wall_seconds=2),
                        fake_trainer)
    assert not out.ok and out.failure.stage == "timeout" and "wall-time" in out.failure.reason
    assert time.monotonic() - t0 < 20
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path / "h") in " ".join(p.info["cmdline"] or [])]


def test_sleeping_grandchildren_die_with_the_group(tmp_path, tiny_world, fake_trainer):
    out = run_candidate(ModelConfig(), mode_delta("sleep"), tiny_world, tmp_path / "s", RunLimits(wall_seconds=1.5),
                        fake_trainer)
    assert out.failure.stage == "timeout"


def test_memory_bomb_is_killed_by_the_rss_watchdog(tmp_path, tiny_world, fake_trainer):
    out = run_candidate(ModelConfig(), mode_delta("bomb"), tiny_world, tmp_path / "m",
                        RunLimits(wall_seconds=60, rss_mb=300, address_space_mb=None), fake_trainer)
    assert not out.ok and out.failure.stage == "memory" and "300 MiB" in out.failure.reason


def test_memory_bomb_hits_the_address_space_limit(tmp_path, tiny_world, fake_trainer):
    out = run_candidate(ModelConfig(), mode_delta("bomb"), tiny_world, tmp_path / "a",
                        RunLimits(wall_seconds=60, rss_mb=None, address_space_mb=400), fake_trainer)
    assert not out.ok and out.failure.stage == "memory", out.failure


def test_gate_failure_reads_error_json(tmp_path, tiny_world, fake_trainer):
    out = run_candidate(ModelConfig(), mode_delta("gate"), tiny_world, tmp_path / "g", RunLimits(wall_seconds=60),
                        fake_trainer)
    assert out.failure.phase == "Validated" and out.failure.stage == "static" and out.failure.exit_code == 3
    assert "import of 'os'" in out.failure.reason


def test_crash_keeps_the_log_tail(tmp_path, tiny_world, fake_trainer):
    out = run_candidate(ModelConfig(), mode_delta("crash"), tiny_world, tmp_path / "x", RunLimits(wall_seconds=60),
                        fake_trainer)
    assert out.failure.stage == "crash" and "boom" in out.failure.reason


@pytest.mark.skipif(not network_isolation_available(), reason="no unprivileged user namespaces here")
def test_candidates_have_no_network(tmp_path, tiny_world):
    import sys

    script = tmp_path / "net.py"
    script.write_text(
        "import socket, sys, os, json\n"
        "args = sys.argv[1:]; out = args[args.index('--out') + 1]; os.makedirs(out, exist_ok=True)\n"
        "names = [n for _, n in socket.if_nameindex()]\n"
        "s = socket.socket(); s.settimeout(1)\n"
        "try:\n    s.connect(('127.0.0.1', 9)); ok = 'connected'\nexcept OSError as e:\n    ok = type(e).__name__\n"
        "json.dump({'val_loss': 1.0, 'ifaces': names, 'connect': ok}, open(os.path.join(out, 'metrics.json'), 'w'))\n"
    )
    out = run_candidate(ModelConfig(), None, tiny_world, tmp_path / "n", RunLimits(wall_seconds=30),
                        [sys.executable, str(script)])
    assert out.ok and "no-network" in out.isolation
    assert out.metrics["ifaces"] == ["lo"]


def test_cpu_time_limit_kills_a_spinning_candidate(tmp_path, tiny_world, fake_trainer):
    out = run_candidate(ModelConfig(), mode_delta("hang"), tiny_world, tmp_path / "cpu",
                        RunLimits(wall_seconds=60, cpu_seconds=1), fake_trainer)
    assert not out.ok and out.failure.stage == "cpu" and "SIGXCPU" in out.failure.reason
    assert out.wall_seconds < 30


def test_workers_reach_the_train_command_only_when_parallel(tmp_path):
    from cambrian.agents.runner import build_command

    def train_argv(limits):
        cmd, _ = build_command(["cambrian", "train"], tmp_path / "c.json", None, tmp_path, tmp_path / "o", limits)
        return cmd[cmd.index("cambrian"):]

    assert train_argv(RunLimits(workers=3))[-2:] == ["--workers", "3"]
    assert "--workers" not in train_argv(RunLimits())
