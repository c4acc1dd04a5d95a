"""The zygote (trainer/zygote.py): each warm step is a fork of a preloaded trusted process that contains itself
(namespaces, a new root, no capabilities, no_new_privs, rlimits, the seccomp filter) before candidate code runs.
Candidate code runs here through the real `train` on a zygote pool; it reports what it saw by raising, so the
failure's reason carries the report. The red-team corpus (tests/reliability/redteam/) runs every attack on the
zygote path too."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psutil
import pytest

from cambrian.errors import CambrianError
from cambrian.testing.waiting import running
from cambrian.trainer import warm
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.delta import apply_delta, parse_delta
from cambrian.trainer.sandbox import etc_files, runtime_paths
from cambrian.trainer.train import SandboxLimits, train
from cambrian.trainer.zygote import Zygote

BASE = {"training": {"epochs": 1, "cpu_threads": 1, "batch_size": 256, "device": "cpu"}}
HEADER = ("OS = torch.os\nSYS = torch.sys\nfopen = SYS.modules['io'].open\n"
          "def imp(name):\n    return SYS.modules['importlib'].import_module(name)\n")
REPO = Path(__file__).resolve().parents[2]


def candidate(init: str) -> ModelConfig:
    """The base config with an architecture plugin whose __init__ runs `init` (candidate code)."""
    body = "\n".join("        " + line for line in init.strip().splitlines())
    code = (HEADER + "class Model(nn.Module):\n    def __init__(self, spec, cfg):\n        super().__init__()\n"
            "        self.lin = nn.Linear(2, 1)\n" + body + "\n"
            "    def forward(self, batch):\n        return self.lin(batch['dense']).squeeze(-1)\n")
    return apply_delta(ModelConfig.model_validate(BASE), parse_delta({"component": "architecture", "code": code}))


def report_of(cfg: ModelConfig, world_dir, out: Path, pool: warm.WarmPool) -> dict:
    before = pool.stats["zygote"]
    with pytest.raises(CambrianError) as info:
        train(cfg, world_dir, out, limits=pool.limits)
    assert pool.stats["zygote"] == before + 1  # it ran on the zygote path
    text = str(info.value)
    assert "REPORT" in text, text  # the candidate code ran
    return json.loads(text.split("REPORT", 1)[1].strip())


@pytest.fixture
def pool(tmp_path, monkeypatch):
    p = warm.WarmPool(tmp_path / "pool", SandboxLimits())
    monkeypatch.setattr(warm, "_POOL", p)
    yield p
    p.close()


PROBE = """
r = {}
def attempt(key, fn):
    try:
        r[key] = str(fn())[:24]
    except Exception as e:
        r[key] = type(e).__name__
def status(field):
    return [l.split()[1] for l in fopen('/proc/self/status') if l.startswith(field + ':')][0]
attempt('secret', lambda: fopen(SECRET).read())
attempt('home', lambda: OS.listdir(HOME))
attempt('repo', lambda: fopen(REPO + '/pyproject.toml').read())
attempt('other', lambda: OS.listdir(OTHER))
attempt('write_input', lambda: fopen('/input/config.json', 'a').write('x'))
attempt('tcp', lambda: imp('socket').socket(2, 1))
attempt('kill_zygote', lambda: OS.kill(ZYGOTE, 0))
attempt('fork', lambda: OS.fork())
libc = imp('ctypes').CDLL(None, use_errno=True)
r['ptrace'] = libc.ptrace(16, 1, 0, 0)
r['unshare'] = libc.unshare(0x10000000)
r['mount'] = libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)
r['pids'] = sorted(p for p in OS.listdir('/proc') if p.isdigit())
r['caps'] = [int(status(f), 16) for f in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb')]
r['nnp'] = status('NoNewPrivs')
r['userns'] = fopen('/proc/sys/user/max_user_namespaces').read().strip()
r['seccomp'] = status('Seccomp')
r['uid'] = OS.getuid()
r['host'] = OS.uname().nodename
r['fds'] = sorted(OS.listdir('/proc/self/fd'))
r['tmp'] = sorted(OS.listdir('/tmp'))
r['scratch'] = sorted(OS.listdir('/scratch'))
fopen('/tmp/left-by-candidate', 'w').write('x')
fopen('/scratch/left-by-candidate', 'w').write('x')
raise RuntimeError('REPORT ' + imp('json').dumps(r, separators=(',', ':')))
"""


def test_a_zygote_child_is_contained_like_a_bubblewrap_sandbox(world_dir, tmp_path, pool):
    secret = tmp_path / "shadow"
    secret.write_text("root:HASH")
    other = pool.root / "training-999-in"  # another candidate's input folder, beside this one's
    other.mkdir(parents=True)
    (other / "config.json").write_text("{}")
    zygote = pool._zygote()
    values = {"SECRET": str(secret), "HOME": str(Path.home()), "REPO": str(REPO), "OTHER": str(other),
              "ZYGOTE": zygote.pid}
    code = "\n".join(f"{k} = {v!r}" for k, v in values.items()) + "\n" + PROBE
    first = report_of(candidate(code), world_dir, tmp_path / "a", pool)
    for key in ("secret", "repo", "other"):
        assert first[key] == "FileNotFoundError", (key, first)
    # the home folder exists only where a runtime path lies under it (a pyenv Python), holding nothing else
    runtime = [str(p) for p in runtime_paths()]
    assert first["home"] == "FileNotFoundError" or all(
        any(r.startswith(str(Path.home() / name)) for r in runtime) for name in eval(first["home"])), first
    assert first["write_input"] == "OSError"  # read-only file system
    assert first["tcp"] == "OSError" and first["fork"] == "PermissionError"  # the seccomp filter
    assert first["kill_zygote"] == "ProcessLookupError"  # not in its PID namespace
    assert first["ptrace"] == first["unshare"] == first["mount"] == -1
    assert first["pids"] == ["1", "2"]  # the namespace's init and itself
    assert first["caps"] == [0] * 5  # inheritable, permitted, effective, bounding, ambient
    assert first["userns"] == "0"  # no nested user namespace, even if the filter let one through
    assert first["nnp"] == "1" and first["seccomp"] == "2" and first["uid"] == 65534 and first["host"] == "sandbox"
    assert first["fds"] == ["0", "1", "2", "3"]  # stdin, the log twice, and the listing's own descriptor
    # the next candidate (a fresh child of the same zygote) sees nothing the first one left
    second = report_of(candidate(code), world_dir, tmp_path / "b", pool)
    assert "left-by-candidate" not in second["tmp"] + second["scratch"], second
    assert zygote.alive() and pool.zygote is zygote and pool.stats["zygote_starts"] == 1
    assert pool.stats["zygote"] == 2 and pool.stats["spares_started"] == 0


def test_a_zygote_childs_etc_is_bubblewraps_and_names_only_its_loopback(world_dir, tmp_path, pool):
    code = ("r = {'etc': sorted(OS.listdir('/etc')), 'localhost': imp('socket').getaddrinfo('localhost', None)[0][4][0]}\n"
            "raise RuntimeError('REPORT ' + imp('json').dumps(r))")
    seen = report_of(candidate(code), world_dir, tmp_path / "a", pool)
    assert seen["etc"] == sorted(Path(dest).name for _, dest in etc_files()) and seen["localhost"] in ("127.0.0.1", "::1")


def test_a_step_on_two_threads_runs_its_parallel_regions(world_dir, tmp_path, monkeypatch):
    """OpenMP is not fork-safe: a zygote that had run a parallel region left its children hanging at their first
    one (a config with cpu_threads 2 timed out). The zygote stays single-threaded; its steps get the threads."""
    p = warm.WarmPool(tmp_path / "pool", SandboxLimits(wall_seconds=90))
    monkeypatch.setattr(warm, "_POOL", p)
    try:
        cfg = candidate("x = torch.ones(4_000_000)\nfor _ in range(3):\n    x = x.exp().neg().exp()\n"
                        "assert torch.get_num_threads() == 2, torch.get_num_threads()")
        cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"cpu_threads": 2})})
        metrics = train(cfg, world_dir, tmp_path / "out", limits=p.limits)
        assert p.stats["zygote"] == 2 and metrics["sandbox"] == "zygote"  # the training and the scoring step
    finally:
        p.close()


def zygote_children(zygote: Zygote) -> list[psutil.Process]:
    return psutil.Process(zygote.pid).children(recursive=True)


def test_a_hanging_candidate_is_killed_whole_tree_and_the_zygote_serves_on(world_dir, tmp_path, monkeypatch):
    p = warm.WarmPool(tmp_path / "pool", SandboxLimits(wall_seconds=8))
    monkeypatch.setattr(warm, "_POOL", p)
    try:
        spin = ("thr = imp('threading')\n"
                "def spin():\n    while True:\n        pass\n"
                "thr.Thread(target=spin).start()\n"
                "while True:\n    pass")
        zygote = p._zygote()
        seen: dict[int, psutil.Process] = {}  # every process of the hanging step, while it runs
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                try:
                    seen.update((c.pid, c) for c in zygote_children(zygote))
                except psutil.Error:
                    pass
                time.sleep(0.2)

        watcher = threading.Thread(target=watch)
        watcher.start()
        t0 = time.monotonic()
        try:
            with pytest.raises(CambrianError, match="timeout"):
                train(candidate(spin), world_dir, tmp_path / "hang", limits=p.limits)
        finally:
            done.set()
            watcher.join()
        assert time.monotonic() - t0 < 60
        assert len(seen) >= 3  # C1 (reaper), C2 (the namespace's init), C3 (the worker) at least

        deadline = time.monotonic() + 10
        while running(seen.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(seen.values())  # the whole tree went, whoever it had been re-parented to
        assert zygote.alive()
        metrics = train(ModelConfig.model_validate(BASE), world_dir, tmp_path / "next", limits=p.limits)
        assert metrics["val_loss"] > 0 and p.zygote is zygote and p.stats["zygote_starts"] == 1
        assert p.stats["zygote"] == 3 and p.stats["spares_started"] == 0
    finally:
        p.close()


@pytest.mark.parametrize("code,words", [
    ("hog = torch.empty(1 << 36, dtype=torch.uint8)", "memory"),  # over the address-space limit
    ("OS.kill(OS.getpid(), 9)", "sigkill"),
    ("OS._exit(7)", "exit 7"),
])
def test_a_failing_candidate_ends_only_its_child(world_dir, tmp_path, pool, code, words):
    with pytest.raises(CambrianError) as info:
        train(candidate(code), world_dir, tmp_path / "bad")
    assert words in str(info.value).lower(), str(info.value)
    zygote = pool.zygote
    assert zygote.alive()
    train(ModelConfig.model_validate(BASE), world_dir, tmp_path / "next")
    assert pool.zygote is zygote and pool.stats["zygote_starts"] == 1


def test_a_dead_zygote_is_restarted_and_an_unusable_one_falls_back_to_bubblewrap(world_dir, tmp_path, pool):
    cfg = ModelConfig.model_validate(BASE)
    first = pool._zygote()
    first.proc.kill()
    first.proc.wait()
    train(cfg, world_dir, tmp_path / "restarted")
    assert pool.stats["zygote_starts"] == 2 and pool.zygote is not first and pool.zygote.alive()
    pool.zygote.close()
    pool.zygote = None
    # a zygote whose probe step fails (here: its probe folder is gone) is never used: bubblewrap spares instead
    orig = Zygote.ready

    def broken(self, seconds):
        import shutil

        shutil.rmtree(self.probe_in)
        return orig(self, seconds)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(Zygote, "ready", broken)
        metrics = train(cfg, world_dir, tmp_path / "fallback")
    assert metrics["val_loss"] > 0
    assert pool.use_zygote is False and pool.zygote is None and pool.stats["spares_started"] >= 2
    assert "zygote" in (pool.root / "zygote-probe.log").read_text()


def test_the_probe_refuses_to_start_without_its_containment(tmp_path):
    """Fail closed: a zygote that cannot build a step's sandbox never reports ready."""
    from cambrian.trainer.train import _Contained

    z = Zygote(tmp_path, _Contained.environment())
    try:
        z.probe_out.rmdir()
        assert z.ready(300) is False
        assert "could not be built" in z.problem()
    finally:
        z.close()


def test_the_memory_watchdog_counts_a_zygotes_children_but_not_the_zygote():
    """The runner's tree RSS leaves out a process listed `alone` (the idle zygote, trainer/warm.py SPARES) and
    still counts its children (the candidate's steps); a listed tree (an idle bubblewrap spare) goes whole."""
    import subprocess
    import sys

    from cambrian.agents.runner import _tree_rss

    # a parent of its own (this test's process may have other children: servers of other tests on the same worker)
    hog = "b = bytearray(200 << 20); import time; time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               f"subprocess.Popen([sys.executable, '-c', {hog!r}]); time.sleep(60)"])
    try:
        top = psutil.Process(parent.pid)
        deadline = time.monotonic() + 30
        while not top.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        (kid,) = top.children()
        while kid.memory_info().rss < 150 << 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        without_top = _tree_rss(top, alone=frozenset({top.pid}))
        assert abs(without_top - kid.memory_info().rss) < 20 << 20  # the child only
        assert _tree_rss(top) - without_top > 5 << 20  # the parent counts when not left out
        assert _tree_rss(top, frozenset({top.pid})) == 0  # a tree left out goes whole
    finally:
        for proc in [*psutil.Process(parent.pid).children(recursive=True), psutil.Process(parent.pid)]:
            proc.kill()
        parent.wait()
