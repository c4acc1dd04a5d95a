"""A stand-in for `cambrian train` with the trainer's contract (docs/CONTRACTS.md): --config/--delta/--data/--out,
OUT/metrics.json and a bundle folder, exit 0. The baseline config scores best, so no candidate is better and
the Online Agent starts no rollout: the driver's loop is tested without serving anything.
--copy-bundle DIR: the bundle is a copy of DIR (a real one, which the champion's model server can load)."""

import argparse
import json
import shutil
import sys
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--config")
p.add_argument("--delta")
p.add_argument("--data")
p.add_argument("--out")
p.add_argument("--copy-bundle")
a, _ = p.parse_known_args(sys.argv[1:])
out = Path(a.out)
if a.copy_bundle:
    shutil.copytree(a.copy_bundle, out / "bundle", dirs_exist_ok=True)
else:
    (out / "bundle").mkdir(parents=True, exist_ok=True)
    (out / "bundle" / "bundle.json").write_text("{}")
val_loss = 0.9 if a.delta else 0.5
(out / "metrics.json").write_text(json.dumps({"val_loss": val_loss, "auc": 0.6, "long_watch_corr": 0.1,
                                              "return_corr": 0.1, "like_corr": 0.1}))
