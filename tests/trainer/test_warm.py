"""Warm training (trainer/warm.py): a warm trusted trainer per worker slot with pre-started, single-use
sandboxes and prepared rows shared read-only. The same verdicts and metrics as the cold path; a candidate that
crashes, hangs or exhausts memory ends only itself; no sandbox ever serves a second candidate."""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from cambrian.agents.runner import RunLimits, WarmWorker, run_candidate
from cambrian.testing.waiting import running
from cambrian.trainer import warm
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.delta import parse_delta
from cambrian.trainer.train import SandboxLimits, train

BASE = {"training": {"epochs": 1, "cpu_threads": 1, "batch_size": 256, "device": "cpu"}}
METRICS = ("val_loss", "auc", "long_watch_corr", "return_corr", "like_corr", "n_train", "n_val", "sandbox")


def arch(forward: str = "", init: str = "", after_gate: bool = False) -> dict:
    """An architecture plugin whose __init__ / forward run `init` / `forward` first (candidate code); with
    `after_gate`, forward runs it only once training has started (the gate calls forward twice)."""
    body = textwrap.indent(textwrap.dedent(forward).strip(), "    " * (3 if after_gate else 2))
    code = ("OS = torch.os\n"
            "class Model(nn.Module):\n"
            "    def __init__(self, spec, cfg):\n"
            "        super().__init__()\n"
            "        self.lin = nn.Linear(2, 1)\n"
            "        self.calls = 0\n"
            + textwrap.indent(textwrap.dedent(init).strip() or "pass", "        ") + "\n"
            "    def forward(self, batch):\n"
            "        self.calls += 1\n"
            + ("        if self.calls > 2:\n" if after_gate else "")
            + (body or "        pass") + "\n"
            "        return self.lin(batch['dense']).squeeze(-1)\n")
    return {"component": "architecture", "code": code}


@pytest.fixture(params=["zygote", "bwrap"])
def pool(tmp_path, monkeypatch, request):
    """A warm pool whose steps fork from its zygote (trainer/zygote.py), or pre-started bubblewrap sandboxes."""
    p = warm.WarmPool(tmp_path / "pool", SandboxLimits(), zygote=request.param == "zygote")
    monkeypatch.setattr(warm, "_POOL", p)
    yield p
    p.close()


def test_warm_and_cold_give_the_same_metrics_for_the_same_seed(world_dir, tmp_path, pool):
    cfg = ModelConfig.model_validate(BASE)
    warm_metrics = train(cfg, world_dir, tmp_path / "warm")
    again = train(cfg, world_dir, tmp_path / "again")  # from the cache, in fresh sandboxes
    assert pool.stats["warm"] == 4 and pool.cache.hits == 1 and pool.cache.misses == 1
    assert pool.stats["zygote"] == (4 if pool.use_zygote else 0)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(warm, "_POOL", None)
        cold = train(cfg, world_dir, tmp_path / "cold")
    assert json.loads((tmp_path / "cold" / "timing.json").read_text())["warm"] is False
    assert json.loads((tmp_path / "warm" / "timing.json").read_text())["warm"] is True
    for name in METRICS:
        if name == "sandbox" and pool.use_zygote:
            assert warm_metrics[name] == again[name] == "zygote" and cold[name] == "bwrap"
            continue
        assert warm_metrics[name] == cold[name] == again[name], name
    # a different seed is a different model: the equality above is not a constant
    other = train(cfg.model_copy(update={"training": cfg.training.model_copy(update={"seed": 7})}), world_dir,
                  tmp_path / "seed7")
    assert other["val_loss"] != cold["val_loss"]


@pytest.fixture
def bwrap_pool(tmp_path, monkeypatch):
    """Pre-started bubblewrap sandboxes (a zygote's step is a fresh child per run: tests/trainer/test_zygote.py)."""
    p = warm.WarmPool(tmp_path / "pool", SandboxLimits(), zygote=False)
    monkeypatch.setattr(warm, "_POOL", p)
    yield p
    p.close()


def test_a_sandbox_serves_one_candidate_and_is_gone_after_it(world_dir, tmp_path, bwrap_pool):
    pool = bwrap_pool
    cfg = ModelConfig.model_validate(BASE)
    first = pool.take("training")
    pid, folder = first.warm.pid, first.input
    assert psutil.pid_exists(pid)
    second = pool.take("training")
    assert second.warm.pid != pid and second.input != folder  # each take is another process and folder
    warm.discard(first)
    warm.discard(second)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not folder.exists()
    # the contained program ends after its one command: a second one is never read
    step = pool.take("training")
    step.input.joinpath("config.json").write_text(cfg.model_dump_json())
    res = warm.release(step.warm, "predict", 60, step.log)  # no model.pt2: fails, and the process has ended
    assert res.returncode != 0 and not res.timed_out
    assert step.warm.poll() is not None
    warm.discard(step)


def test_the_cache_is_shared_read_only_and_keyed_by_what_changes_rows(world_dir, tmp_path):
    cfg = ModelConfig.model_validate(BASE)
    key = warm.rows_key(cfg, world_dir, 1)
    assert key == warm.rows_key(cfg.model_copy(update={"optimizer": cfg.optimizer.model_copy(update={"lr": 0.1})}),
                                world_dir, 1)
    reward = cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"weight": "2.0"})})
    capped = cfg.model_copy(update={"training": cfg.training.model_copy(update={"max_train_examples": 1000})})
    assert len({key, warm.rows_key(reward, world_dir, 1), warm.rows_key(capped, world_dir, 1)}) == 3
    assert warm.rows_key(cfg, "s3://bucket/world", 1) is None  # a remote source can change under its name
    cache = warm.PreparedCache(tmp_path / "cache")
    a = cache.prepare(world_dir, cfg, tmp_path / "a")
    b = cache.prepare(world_dir, cfg, tmp_path / "b")
    assert (cache.hits, cache.misses) == (1, 1) and len(a.val) == len(b.val)
    assert os.stat(tmp_path / "a" / "train.parquet").st_ino == os.stat(tmp_path / "b" / "train.parquet").st_ino
    assert not os.stat(tmp_path / "a" / "train.parquet").st_mode & 0o222


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_candidate_cannot_write_the_cached_rows_the_next_one_reads(world_dir, tmp_path):
    """The rows are prepared once per slot and linked into every candidate's read-only input: a write through
    /input is refused, so the next candidate trains on the same bytes (and gets the same metrics)."""
    limits = RunLimits(wall_seconds=300, threads=1)
    worker = WarmWorker(tmp_path / "slot", limits)
    cfg = ModelConfig.model_validate(BASE)
    poison = arch(init="""
try:
    fd = OS.open('/input/train.parquet', OS.O_WRONLY | OS.O_APPEND); OS.write(fd, b'POISON'); raise RuntimeError('WROTE')
except OSError as e:
    raise RuntimeError('REFUSED ' + type(e).__name__)""")
    try:
        first = run_candidate(cfg, None, world_dir, tmp_path / "c1", limits, worker=worker)
        assert first.ok, first.failure
        cached = next((tmp_path / "slot" / "pool" / "prepared").glob("*/train.parquet"))
        before = digest(cached)
        attack = run_candidate(cfg, parse_delta(poison), world_dir, tmp_path / "c2", limits, worker=worker)
        assert not attack.ok and "REFUSED" in attack.failure.reason, attack.failure
        assert digest(cached) == before
        third = run_candidate(cfg, None, world_dir, tmp_path / "c3", limits, worker=worker)
        assert third.ok and third.metrics["val_loss"] == first.metrics["val_loss"]
        assert worker.last_reply["cache"] == {"hits": 2, "misses": 1}
    finally:
        worker.stop()


@pytest.mark.parametrize("zygote", [True, False], ids=["zygote", "bwrap"])
@pytest.mark.parametrize("kind,forward,stage,words", [
    ("crash", "OS._exit(9)", "crash", "exit 9"),
    ("memory", "torch.empty(1 << 36, dtype=torch.uint8).fill_(1)", "training", "memory"),
])
def test_a_crashing_or_memory_hungry_candidate_ends_only_its_own_process(world_dir, tmp_path, kind, forward, stage,
                                                                         words, zygote):
    limits = RunLimits(wall_seconds=300, threads=1)
    worker = WarmWorker(tmp_path / "slot", limits, zygote=zygote)
    cfg = ModelConfig.model_validate(BASE)
    try:
        ok = run_candidate(cfg, None, world_dir, tmp_path / "before", limits, worker=worker)
        assert ok.ok, ok.failure
        pid = worker.popen.pid
        bad = run_candidate(cfg, parse_delta(arch(forward=forward, after_gate=True)), world_dir, tmp_path / kind,
                            limits, worker=worker)
        assert not bad.ok and bad.failure.stage == stage and words in bad.failure.reason.lower(), bad.failure
        assert worker.popen is not None and worker.popen.pid == pid  # the slot's trusted worker lives on
        after = run_candidate(cfg, None, world_dir, tmp_path / "after", limits, worker=worker)
        assert after.ok and after.metrics["val_loss"] == ok.metrics["val_loss"]
        assert worker.popen.pid == pid and worker.last_reply["pool"]["cold"] == 0
        assert worker.last_reply["pool"]["zygote"] == (5 if zygote else 0)  # the failing one did not score
        trees, alone = worker.spare_pids()  # what the memory watchdog leaves out: idle spares, or the zygote alone
        if zygote:
            assert not trees and len(alone) == 1
            (z,) = alone
            assert "cambrian.trainer.zygote" in " ".join(psutil.Process(z).cmdline())
            assert psutil.Process(z).ppid() == pid
        else:
            assert len(trees) == 2 and not alone
    finally:
        worker.stop()


def test_a_hanging_candidate_ends_its_own_slot_only(world_dir, tmp_path):
    """The wall-time watchdog kills the hanging candidate's slot (its trusted worker, its sandbox, the spares
    that had no candidate yet); another slot's worker is untouched, and the next run on the first slot starts
    a fresh worker."""
    limits = RunLimits(wall_seconds=300, threads=1)
    cfg = ModelConfig.model_validate(BASE)
    a, b = WarmWorker(tmp_path / "a", limits), WarmWorker(tmp_path / "b", limits)
    try:
        assert run_candidate(cfg, None, world_dir, tmp_path / "b1", limits, worker=b).ok
        b_pid = b.popen.pid
        assert run_candidate(cfg, None, world_dir, tmp_path / "a1", limits, worker=a).ok
        root = psutil.Process(a.popen.pid)
        a_procs = [*root.children(recursive=True), root]
        a_tree = [p.pid for p in a_procs]
        t0 = time.monotonic()
        hang = run_candidate(cfg, parse_delta(arch(forward="while True: pass")), world_dir, tmp_path / "hang",
                             RunLimits(wall_seconds=20, threads=1), worker=a)
        assert not hang.ok and hang.failure.stage == "timeout" and time.monotonic() - t0 < 60
        deadline = time.monotonic() + 10  # a killed tree is reaped asynchronously (a loaded machine)
        while running(a_procs) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running(a_procs)
        assert b.popen.pid == b_pid and b.popen.poll() is None
        assert run_candidate(cfg, None, world_dir, tmp_path / "b2", limits, worker=b).ok
        again = run_candidate(cfg, None, world_dir, tmp_path / "a2", limits, worker=a)
        assert again.ok and a.popen.pid not in a_tree
    finally:
        a.stop()
        b.stop()


def test_a_warm_sandbox_preloads_no_pandas_duckdb_or_sql_parser():
    """Each candidate starts two warm sandboxes, so what they import is paid twice per candidate: the sandboxed
    steps' modules leave pandas, DuckDB and the SQL parser to the trusted side (trainer/splits.py)."""
    import subprocess
    import sys

    probe = ("import sys; from cambrian.trainer.contained import preload; preload(); "
             "print(' '.join(m for m in ('pandas', 'duckdb', 'sqlglot', 'scipy', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["torch"]


def test_a_candidate_reads_its_training_rows_without_pandas(world_dir, tmp_path):
    """pyarrow's to_numpy imports pandas (0.2-0.5 s in each fresh sandbox): the contained trainer reads its rows
    from Arrow's buffers instead, and gets the rows the trusted side wrote."""
    import subprocess
    import sys

    import numpy as np
    import pyarrow.parquet as pq

    from cambrian.trainer.train import write_training_input

    write_training_input(tmp_path, ModelConfig.model_validate(BASE), world_dir)
    probe = ("import sys; from pathlib import Path; import numpy as np; "
             "from cambrian.trainer.contained import preload, read_input; preload(); "
             f"config, data = read_input(Path({str(tmp_path)!r})); "
             "s = data.train; np.savez(sys.argv[1], *s._read(np.arange(len(s.group_rows)))); "
             "print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", probe, str(tmp_path / "read.npz")],
                         capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["False"], out.stderr[-2000:]
    written = pq.read_table(tmp_path / "train.parquet")
    with np.load(tmp_path / "read.npz") as read:
        for i, name in enumerate(("user", "item", "label", "weight")):
            np.testing.assert_array_equal(read[f"arr_{i}"], written.column(name).to_numpy())


def test_the_warm_up_export_leaves_nothing_a_cold_candidate_would_not_see():
    """The warm-up exports, saves and loads a throw-away program (a candidate's first export is then about 0.2 s
    cheaper), with static shapes: no fake tensor or symbolic shape environment may stay in the heap a candidate
    inherits (a dynamic-shape export leaves one in torch's caches; the red-team heap scan reads every length)."""
    import subprocess
    import sys

    probe = textwrap.dedent("""
        import gc, sys
        from cambrian.trainer.contained import preload
        preload()
        gc.collect()
        import torch
        from torch._subclasses.fake_tensor import FakeTensor
        from torch.fx.experimental.symbolic_shapes import ShapeEnv
        refs = [r for o in gc.get_objects() for r in gc.get_referents(o)] + gc.get_objects()
        print(sum(isinstance(r, (FakeTensor, ShapeEnv)) for r in refs),
              int("torch._export.serde.serialize" in sys.modules and "torch.export" in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", probe], capture_output=True, text=True, timeout=300,
                         check=True)
    assert out.stdout.split() == ["0", "1"], out.stdout + out.stderr[-2000:]


def test_a_slots_trusted_worker_never_loads_torch_or_scipy(world_dir, tmp_path):
    """The slot's trusted worker (warm.serve) prepares, scores and bundles without torch (only its zygote and the
    steps forked from it load torch's libraries: ~1.3 CPU seconds and ~500 MiB a slot not spent twice) and
    without scipy (its ranks are pandas', ~0.8 CPU seconds)."""
    limits = RunLimits(wall_seconds=300, threads=1)
    worker = WarmWorker(tmp_path / "slot", limits)
    cfg = ModelConfig.model_validate(BASE)
    try:
        first = run_candidate(cfg, None, world_dir, tmp_path / "c1", limits, worker=worker)
        assert first.ok, first.failure
        maps = lambda pid: Path(f"/proc/{pid}/maps").read_text()  # noqa: E731
        assert "libtorch" not in maps(worker.popen.pid) and "/scipy/" not in maps(worker.popen.pid)
        _, alone = worker.spare_pids()
        (zygote,) = alone
        assert "libtorch" in maps(zygote)  # the check can see torch where it is
    finally:
        worker.stop()
