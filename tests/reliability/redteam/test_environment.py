"""The environment: API keys and settings of the process that started the run. The sandbox starts from an
empty environment (--clearenv) with HOME, PATH, LANG and thread settings only; /proc shows its own PID
namespace, so no other process's environment is readable either."""

from attacks import CANARY_ENV, arch, plugin, reported, run_attack

ATTACK = plugin(init="""
seen = ["key=" + str(OS.getenv("REDTEAM_API_KEY")), "openai=" + str(OS.getenv("OPENAI_API_KEY"))]
for pid in OS.listdir("/proc"):
    if pid.isdigit():
        try:
            seen.append(pid + ":" + str(OS.read(OS.open("/proc/" + pid + "/environ", 0), 4000)))
        except Exception as e:
            seen.append(pid + ":" + str(type(e)))
raise RuntimeError("REDTEAM " + " ".join(seen))
""")


def test_candidate_sees_no_secret_of_its_parent(path, tiny_world, tmp_path):
    report = reported(run_attack(path, tiny_world, tmp_path, arch(ATTACK)))
    assert "key=None" in report and "openai=None" in report, report
    for value in CANARY_ENV.values():
        assert value not in report
    # the processes it can see are its own sandbox's: bwrap's init and itself
    pids = [part.split(":")[0] for part in report.split(" ")[3:] if ":" in part and part.split(":")[0].isdigit()]
    assert pids and all(int(p) < 10 for p in pids), pids
