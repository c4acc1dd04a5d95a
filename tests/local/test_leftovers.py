"""A driver that recovers the run folder of a killed one stops the processes it left and removes their temp
folders: each service start, worker slot and training run gets a TMPDIR of its own inside the run folder, so
nothing a killed run wrote is left in the system's temp folder."""

from __future__ import annotations

import psutil

from cambrian.agents.runner import WarmWorker, run_temp
from cambrian.agents.settings import RunLimits
from cambrian.online.services import ServiceProcess
from cambrian.operator.platform.local_env import JOB_WORK, remove_temp_folders, stop_leftovers
from cambrian.testing.waiting import poll


def tmpdir_of(pid: int, program: str) -> str | None:
    """The process's TMPDIR once it runs `program` (a child just forked still shows its parent's environment)."""
    proc = psutil.Process(pid)
    poll(f"process {pid} running {program}", lambda: program in " ".join(proc.cmdline()), timeout=30, interval=0.1)
    return proc.environ().get("TMPDIR")


def test_a_killed_drivers_services_workers_and_runs_leave_their_temp_files_only_until_the_next_driver(tmp_path):
    root = (tmp_path / "run").resolve()
    services = root / "rollouts" / "ro-a"
    collector = ServiceProcess("collector", ["collect", "--db", str(services / "c.sqlite"), "--pre-days", "1",
                                             "--active-window", "1"], services).start().wait_ready()
    worker = WarmWorker(root / "warm" / "0", RunLimits(wall_seconds=60, threads=1))
    worker._start()
    cold = run_temp(root / "jobs" / "j1" / JOB_WORK)  # a cold training run's, where local.py runs it
    cold.mkdir(parents=True)
    try:
        assert tmpdir_of(collector.proc.pid, "cambrian.online.cli") == str(collector.tmp)
        assert collector.tmp.parent == services
        assert tmpdir_of(worker.pid, "cambrian.trainer.warm") == str(worker.tmp) == str(root / "warm" / "0" / "tmp")
        for folder in (collector.tmp, worker.tmp, cold):
            (folder / "left-over").write_text("written before the driver was killed")

        # as the next driver's recover() does: nothing of these was stopped before
        assert set(stop_leftovers(root)) == {collector.proc.pid, worker.pid}
        remove_temp_folders(root)

        assert not collector.tmp.exists() and not worker.tmp.exists() and not cold.exists()
        assert (services / "c.sqlite").is_file() and (root / "warm" / "0" / "worker.log").is_file()  # only temp went
    finally:
        for p in (collector.proc, worker.popen):
            p.kill()
            p.wait()


def test_a_stopped_service_removes_its_temp_folder_and_a_restarted_slot_starts_afresh(tmp_path):
    services = tmp_path / "svc"
    first = ServiceProcess("collector", ["collect", "--db", str(services / "c.sqlite"), "--pre-days", "1",
                                         "--active-window", "1"], services).start().wait_ready()
    second = ServiceProcess("collector2", ["collect", "--db", str(services / "d.sqlite"), "--pre-days", "1",
                                           "--active-window", "1"], services).start().wait_ready()
    try:
        assert first.tmp != second.tmp and first.tmp.is_dir() and second.tmp.is_dir()
    finally:
        first.stop()
        second.stop()
    assert not first.tmp.exists() and not second.tmp.exists()

    home = tmp_path / "slot"
    (home / "tmp").mkdir(parents=True)
    (home / "tmp" / "left-over").write_text("from a worker killed with its driver")
    worker = WarmWorker(home, RunLimits(wall_seconds=60, threads=1))
    worker._start()
    try:
        assert list(worker.tmp.iterdir()) == []
    finally:
        worker.stop()
    assert not worker.tmp.exists()
