"""Crash classes: each ends with its stage and a one-line reason, never a traceback or a silent exit 0."""

import pytest

from attacks import arch, plugin, run_attack

OPTIMIZER_FAILS_LATER = """
class Bad(torch.optim.SGD):
    steps = [0]
    def step(self, closure=None):
        self.steps[0] += 1
        if self.steps[0] > 3:
            raise ValueError("optimizer exploded at step " + str(self.steps[0]))
        return super().step(closure)

def build_optimizer(params, cfg):
    return Bad(params, lr=cfg.lr)
"""

CASES = [
    # (id, delta, stage, exit code, words in the reason)
    ("eval-mode-only", arch(plugin(forward="""
if not self.training:
    raise ValueError("only in eval mode")""")), "forward_backward", 3, "only in eval mode"),
    ("optimizer-step", {"component": "optimizer", "code": OPTIMIZER_FAILS_LATER}, "training", 4, "optimizer exploded"),
    ("export-tracing", arch(plugin(forward="""
if batch["dense"].sum() > 0:
    return self.lin(batch["dense"]).squeeze(-1) * 2""")), "export", 4, ""),
    ("sys-exit-0", arch(plugin(init="SYS.exit(0)")), "forward_backward", 3, "called exit"),
    ("exec-true", arch(plugin(init='OS.execv("/usr/bin/true", ["true"])')), "training", 4, "without a result"),
    ("segfault", arch(plugin(init="OS.kill(OS.getpid(), 11)")), "killed", 4, "SIGSEGV"),
    ("recursion", arch(plugin(init="""
def f(n):
    return f(n + 1)
f(0)""")), "forward_backward", 3, "RecursionError"),
]


@pytest.mark.parametrize("cid,delta,stage,code,words", CASES, ids=[c[0] for c in CASES])
def test_crashing_candidates_end_with_their_stage(path, tiny_world, tmp_path, cid, delta, stage, code, words):
    v = run_attack(path, tiny_world, tmp_path, delta, wall_seconds=90)
    assert not v.ok, v.metrics
    if stage:
        assert v.stage == stage, (v.stage, v.reason)
    assert words in v.reason, v.reason
    if path == "train":
        assert v.exit_code == code, (v.exit_code, v.reason)


def bad_config_files() -> dict:
    bomb = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i, c in enumerate("bcdefghi"):
        bomb.append(f"{c}: &{c} [" + ",".join([f"*{'abcdefghi'[i]}"] * 9) + "]")
    return {"alias-bomb": "\n".join(bomb), "deep": "[" * 5000 + "]" * 5000, "seed": "training:\n  seed: " + str(2**64),
            "huge": "a: " + "x" * (2 << 20), "binary": None}


def test_bad_config_files_are_refused_in_milliseconds():
    """The reader refuses them before expanding anything (the alias bomb took 2.4 GB and hung before)."""
    import time

    from cambrian.errors import ConfigError
    from cambrian.trainer.config import parse_config, parse_structured_text

    for name, text in bad_config_files().items():
        if text is None:
            continue
        started = time.perf_counter()
        with pytest.raises(ConfigError):
            parse_config(parse_structured_text(text, name), name)
        assert time.perf_counter() - started < 1.0, name


def test_bad_config_files_exit_2_with_one_line(tiny_world, tmp_path):
    import subprocess
    import sys

    for name, text in bad_config_files().items():
        f = tmp_path / f"{name}.yaml"
        if text is None:
            f.write_bytes(bytes(range(256)) * 10)
        else:
            f.write_text(text)
        proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "train", "--data", str(tiny_world), "--out",
                               str(tmp_path / name), "--config", str(f)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, (name, proc.stderr[-500:])
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("error:"), (name, proc.stderr[-500:])
