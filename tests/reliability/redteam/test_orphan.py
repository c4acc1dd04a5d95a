"""Processes left behind: a candidate that tries to detach a child (fork, a new session) or keeps a thread
busy. Seccomp refuses new processes; and when the run ends the PID namespace goes, with everything in it."""

import time

import psutil

from attacks import arch, plugin, run_attack

MARK = "cambrian-redteam-orphan-417"


def test_candidate_leaves_no_process_behind(path, tiny_world, tmp_path):
    code = plugin(init=f"""
thr = imp("threading")
def spin():
    while True:
        pass
thr.Thread(target=spin, daemon=False).start()
try:
    OS.posix_spawn("/usr/bin/sleep", ["/usr/bin/sleep", "600", "{MARK}"], {{}}, setsid=True)
except Exception as e:
    pass
try:
    pid, fd = OS.forkpty()
    if pid == 0:
        OS.execv("/usr/bin/sleep", ["/usr/bin/sleep", "600", "{MARK}"])
except Exception as e:
    pass
try:
    imp("subprocess").Popen(["/usr/bin/sleep", "600", "{MARK}"], start_new_session=True)
except Exception as e:
    pass
""")
    v = run_attack(path, tiny_world, tmp_path, arch(code), wall_seconds=60)
    assert v.stage not in ("static", "parse"), v.reason  # the attack ran
    time.sleep(1)
    left = []
    for p in psutil.process_iter(["pid", "ppid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        # an orphan: the marked process, or a sandbox process whose parent is gone (re-parented to init)
        if MARK in cmd or (p.info["ppid"] == 1 and ("bwrap" in cmd or "cambrian.trainer.contained" in cmd
                                        or "cambrian.trainer.zygote" in cmd)):
            left.append(cmd)
    assert not left, left
