"""Writes into the shared world data: the offline loop stages the observable files as hard links, so a write
through them would change the data every other candidate trains on. The sandbox gets a fresh copy of the
training rows, read-only; the staged files are not in its file system at all."""

import hashlib

from attacks import arch, plugin, reported, run_attack

FILES = ("impressions.parquet", "users.parquet", "items.parquet", "user_days.parquet", "world.json")


def digest(folder):
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in FILES}


ATTACK = plugin(init="""
seen = []
for dirpath, dirnames, filenames in OS.walk("/"):
    if dirpath.startswith(("/proc", "/sys", "/usr")):
        continue
    for name in filenames:
        if name.endswith((".parquet", ".npz", ".json")):
            p = dirpath + "/" + name
            try:
                fd = OS.open(p, OS.O_WRONLY | OS.O_APPEND)
                OS.write(fd, b"POISON")
                seen.append("wrote:" + p)
            except Exception as e:
                if p.startswith("/input"):
                    seen.append("refused:" + p + ":" + str(type(e)))
            try:
                OS.link(p, "/scratch/" + name)
                seen.append("linked:" + p)
            except Exception as e:
                pass
raise RuntimeError("REDTEAM " + " ".join(seen))
""")


def test_candidate_cannot_write_the_shared_data(path, tiny_world, tmp_path):
    before = digest(tiny_world)
    report = reported(run_attack(path, tiny_world, tmp_path, arch(ATTACK)))
    assert "wrote:" not in report, report
    assert "refused:/input/train.parquet" in report, report  # it found its input, read-only
    assert digest(tiny_world) == before
