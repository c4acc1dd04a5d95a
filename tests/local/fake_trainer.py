"""A stand-in for `cambrian train` with the trainer's contract (docs/CONTRACTS.md): --config/--delta/--data/--out,
OUT/metrics.json and a bundle folder, exit 0. The baseline scores val_loss 0.5 with every seed. A candidate scores
0.5 - GAIN (--gain, or --component-gain for the delta's component; default -0.4: worse, so no candidate is better and no rollout starts: the driver's loop is tested
without serving anything); with a confirmation seed (>= 1000) it scores 0.5 - CONFIRM_GAIN (--confirm-gain). With --fail candidates fail.
--copy-bundle DIR: the bundle is a copy of DIR (a real one, which the champion's model server can load).
With --fidelity (a first look) every score is 0.1 higher (a shorter training is worse) and a candidate's gain is
--look-gain (default: its full-training gain)."""

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
p.add_argument("--gain", type=float, default=-0.4)
p.add_argument("--confirm-gain", type=float, default=None)
p.add_argument("--component-gain", action="append", default=[], metavar="COMPONENT=GAIN",
               help="the gain of candidates changing COMPONENT (instead of --gain)")
p.add_argument("--fail", action="store_true", help="candidates fail in training (exit 4, error.json)")
p.add_argument("--copy-bundle")
p.add_argument("--fidelity")
p.add_argument("--look-gain", type=float, default=None)
a, _ = p.parse_known_args(sys.argv[1:])
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
if a.fail and a.delta:
    (out / "error.json").write_text(json.dumps({"stage": "training", "reason": "loss is NaN at step 3"}))
    sys.exit(4)
if a.copy_bundle:
    shutil.copytree(a.copy_bundle, out / "bundle", dirs_exist_ok=True)
else:
    (out / "bundle").mkdir(parents=True, exist_ok=True)
    (out / "bundle" / "bundle.json").write_text("{}")
seed = json.loads(Path(a.config).read_text()).get("training", {}).get("seed", 0)
gain = a.confirm_gain if a.confirm_gain is not None and seed >= 1000 else a.gain
if a.delta:
    by_component = dict(x.split("=", 1) for x in a.component_gain)
    gain = float(by_component.get(json.loads(Path(a.delta).read_text()).get("component"), gain))
if a.fidelity and a.look_gain is not None:
    gain = a.look_gain
val_loss = (0.5 - gain if a.delta else 0.5) + (0.1 if a.fidelity else 0.0)
(out / "metrics.json").write_text(json.dumps({"val_loss": val_loss, "auc": 0.6, "long_watch_corr": 0.1,
                                              "return_corr": 0.1, "like_corr": 0.1, "top_watch_share": 0.07}))
