"""Label theft: the held-out labels read from the trainer's heap, stack or files, then used to fake the
verdict. The contained process never holds them: it gets the training rows only, and the held-out
predictions are made by another process from the exported program (patching the scorer's code inside the
sandbox changes nothing: test_scorer_patch.py)."""

import pytest

from attacks import arch, cluster_world_rows, plugin, reported, run_attack, run_attack_in_cluster

ATTACK = plugin(init="""
gc = imp("gc")
np = imp("numpy")
sizes = []
# the referents of every tracked object, and of the tuples and dicts the collector stopped tracking (it untracks
# a container of untracked objects, such as a tuple of arrays, whenever a collection happens to run)
todo = [r for obj in gc.get_objects() for r in gc.get_referents(obj)]
while todo:
    ref = todo.pop()
    if isinstance(ref, np.ndarray) and ref.ndim >= 1 and ref.size > 0:
        sizes.append(ref.shape[0])
    elif isinstance(ref, torch.Tensor) and ref.dim() >= 1:
        sizes.append(ref.shape[0])
    elif isinstance(ref, (tuple, dict)) and not gc.is_tracked(ref):
        todo.extend(gc.get_referents(ref))
files = []
# its input and scratch folders, wherever they are (/input and /scratch in bubblewrap, volumes in a pod)
for folder in SYS.argv[2:4]:
    for dirpath, dirnames, filenames in OS.walk(folder):
        files.extend(f for f in filenames if f != "step.log")
raise RuntimeError("REDTEAM sizes=" + ",".join(str(s) for s in sorted(set(sizes))) + " files=" + ",".join(sorted(files)))
""")


def test_heldout_rows_are_not_in_the_candidates_process(path, tiny_world, tmp_path):
    import pandas as pd

    imp = pd.read_parquet(tiny_world / "impressions.parquet")
    days = sorted(imp["day"].unique())
    n_val = int((imp["day"] == days[-1]).sum())
    n_train = len(imp) - n_val
    report = reported(run_attack(path, tiny_world, tmp_path, arch(ATTACK)))
    sizes = {int(s) for s in report.split("sizes=")[1].split(" ")[0].split(",") if s}
    assert n_train in sizes, (n_train, sorted(sizes)[-5:])  # it does see its own training rows
    assert n_val not in sizes, "an array of the held-out size is in the candidate's process"
    files = report.split("files=")[1].split(" ")[0].split(",")
    assert set(files) == {"catalogue.npz", "config.json", "spec.json", "train.parquet"}, files


@pytest.mark.cluster
def test_heldout_rows_are_not_in_the_cluster_trainer_container(cluster, cluster_namespace, pod_runtime, tmp_path):
    """The cluster row: the trainer container mounts the training rows only; the attack's failure reaches the
    operator through the scorer container's termination message."""
    v = run_attack_in_cluster(cluster, cluster_namespace, pod_runtime, tmp_path, arch(ATTACK))
    report = reported(v)
    assert v.stage == "forward_backward" and v.exit_code == 3, v  # the attack runs in __init__, in the gate
    n_train, n_val = cluster_world_rows(pod_runtime)
    sizes = {int(s) for s in report.split("sizes=")[1].split(" ")[0].split(",") if s}
    assert n_train in sizes and n_val not in sizes, (n_train, n_val, sorted(sizes)[-5:])
    files = report.split("files=")[1].split(" ")[0].split(",")
    assert set(files) == {"catalogue.npz", "config.json", "spec.json", "train.parquet"}, files
