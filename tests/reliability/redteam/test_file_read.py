"""File reads: the host's files, the real data folder and its truth/, the repository. The sandbox's file system
holds only the Python runtime (read-only), /input (the training rows) and /scratch."""

from attacks import arch, plugin, reported, run_attack

from cambrian.trainer.sandbox import runtime_paths

# what the sandbox binds at its root: the fixed system folders, /input, /scratch, and the first component of each
# read-only runtime path (where the checkout and its virtualenv live differs by machine: /work here, /check in CI)
ALLOWED_ROOT = {"bin", "dev", "input", "lib", "lib64", "proc", "sbin", "scratch", "tmp", "usr", "etc"} | {
    p.parts[1] for p in runtime_paths()}

ATTACK = plugin(init="""
seen = []
for p in ["/etc/passwd", "/etc/shadow", "/root/.bash_history", "/work", "/data/truth"]:
    try:
        seen.append(p + "=" + str(OS.read(OS.open(p, 0), 100)))
    except Exception as e:
        seen.append(p + "=" + str(type(e)))
hits = []
for top in OS.listdir("/"):
    if top in ("proc", "sys", "usr", "dev"):
        continue
    for dirpath, dirnames, filenames in OS.walk("/" + top):
        for name in dirnames + filenames:
            if name in ("truth", "item_quality.json", "impressions.parquet", "user_days.parquet", "HELPERS.md", "DESIGN.md"):
                hits.append(dirpath + "/" + name)
raise RuntimeError("REDTEAM root=" + ",".join(sorted(OS.listdir("/"))) + " hits=" + ",".join(hits) + " " + " ".join(seen))
""")


def test_candidate_reads_no_host_file_and_finds_no_data_or_truth(path, tiny_world, tmp_path):
    report = reported(run_attack(path, tiny_world, tmp_path, arch(ATTACK)))
    root = report.split("root=")[1].split(" ")[0].split(",")
    assert set(root) <= ALLOWED_ROOT, (root, ALLOWED_ROOT)
    assert "hits= " in report, report  # no data file, no truth/, no repository file anywhere it can walk
    assert "TRUTH-CANARY" not in report and "root:x:0" not in report
    for p in ("/etc/passwd", "/etc/shadow", "/root/.bash_history", "/data/truth"):
        assert f"{p}=<class 'FileNotFoundError'>" in report, report
