"""Signals to a process outside the sandbox: in its own PID namespace the host's processes have no number."""

import subprocess
import sys

from attacks import arch, plugin, reported, run_attack


def test_candidate_cannot_signal_a_host_process(path, tiny_world, tmp_path):
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        code = plugin(init=f"""
seen = []
for pid in [{victim.pid}, 1]:
    try:
        OS.kill(pid, 9)
        seen.append(str(pid) + "=sent")
    except Exception as e:
        seen.append(str(pid) + "=" + str(type(e)))
raise RuntimeError("REDTEAM " + " ".join(seen))
""")
        report = reported(run_attack(path, tiny_world, tmp_path, arch(code)))
        assert f"{victim.pid}=sent" not in report or victim.pid < 3, report
        assert victim.poll() is None, "the host process was killed from inside the sandbox"
    finally:
        victim.kill()
        victim.wait()
