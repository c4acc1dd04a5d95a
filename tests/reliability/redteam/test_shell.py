"""Shell commands: no new process can start (seccomp refuses fork, vfork and clone without CLONE_THREAD),
and there is no shell in a file system that has /usr/bin only read-only anyway."""

import pytest

from attacks import arch, plugin, reported, run_attack, run_attack_in_cluster


def attack(marker: str) -> str:
    return plugin(init=f"""
seen = []
try:
    r = imp("subprocess").run(["/bin/sh", "-c", "echo pwned > {marker}"], capture_output=True)
    seen.append("subprocess=" + str(r.returncode))
except Exception as e:
    seen.append("subprocess=" + str(type(e)) + str(e))
try:
    seen.append("spawn=" + str(OS.posix_spawn("/bin/sh", ["/bin/sh", "-c", "echo pwned > {marker}"], {{}})))
except Exception as e:
    seen.append("spawn=" + str(type(e)) + str(e))
try:
    pid, fd = OS.forkpty()
    if pid == 0:
        OS.execv("/bin/sh", ["/bin/sh", "-c", "echo pwned > {marker}"])
    seen.append("forkpty=" + str(pid))
except Exception as e:
    seen.append("forkpty=" + str(type(e)) + str(e))
raise RuntimeError("REDTEAM " + " ".join(seen))
""")


def test_candidate_cannot_start_a_shell(path, tiny_world, tmp_path):
    marker = tmp_path / "pwned"
    report = reported(run_attack(path, tiny_world, tmp_path / "run", arch(attack(str(marker)))))
    assert "Operation not permitted" in report and "forkpty=<class 'PermissionError'>" in report, report
    assert "spawn=<class" in report, report
    assert not marker.exists()


@pytest.mark.cluster
def test_the_cluster_trainer_container_cannot_start_a_shell(cluster, cluster_namespace, pod_runtime, tmp_path):
    """The cluster row: the training pod's step loads the same seccomp filter in-process (bubblewrap cannot
    nest in a container). The harness runs containers as host processes, so without it the marker is written."""
    marker = tmp_path / "pwned"
    v = run_attack_in_cluster(cluster, cluster_namespace, pod_runtime, tmp_path, arch(attack(str(marker))))
    report = reported(v)
    assert "Operation not permitted" in report and "forkpty=<class 'PermissionError'>" in report, report
    assert v.stage == "forward_backward" and not marker.exists(), v
