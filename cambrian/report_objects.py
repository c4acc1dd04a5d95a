"""A run of the operator's loop (`cambrian evolve -f`, `cambrian demo`) as the report reads it.

The local driver keeps each Evolution, Hypothesis and Rollout with its status in `DIR/objects/`, training
runs in `DIR/jobs/`, journal events in `DIR/events.jsonl` and each rollout's weights and readouts in
`DIR/rollouts/<name>/timeline.jsonl`. This module turns them into the report's Run: hypotheses with their
scores over seeds, verdicts and noise floors, the baseline's noise, rollouts with their readouts, and the
champion the Evolution's own decision made.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from cambrian.errors import ConfigError
from cambrian.operator.reconcile.views import A_PREDICTED

def is_driver_run(path: Path) -> bool:
    return (path / "objects" / "evolutions").is_dir()


def load_driver_run(p: Path):
    """The Run of the Evolution in a driver folder (a report is about one loop)."""
    from cambrian.agents.journal import Usage
    from cambrian.operator.localstore import LocalStore
    from cambrian.report import Run

    store = LocalStore(p)
    evolutions = store.list("evolutions")
    if len(evolutions) != 1:
        names = ", ".join(e["metadata"]["name"] for e in evolutions) or "none"
        raise ConfigError(f"{p}: expected one Evolution to report on, found {names}")
    evo = evolutions[0]
    name, spec, st = evo["metadata"]["name"], evo.get("spec") or {}, evo.get("status") or {}
    hyps = [h for h in store.list("hypotheses") if ((h.get("spec") or {}).get("evolutionRef") or {}).get("name") == name]
    hypotheses = [_hypothesis(h) for h in hyps]
    rollouts = [_rollout(p, r) for r in store.list("rollouts")
                if ((r.get("spec") or {}).get("evolutionRef") or {}).get("name") == name]
    rollouts.sort(key=lambda ro: (ro.result or {}).get("concluded_at") or "~")  # concluded first, in order
    spend, budgets = st.get("spend") or {}, ((spec.get("agent") or {}).get("budgets") or {})
    calls = sum(1 for e in _events(p) if e.get("kind") == "Evolution" and e.get("name") == name
                and e.get("event") == "Proposed")
    usage = Usage(input_tokens=int(spend.get("tokens") or 0), output_tokens=0, dollars=float(spend.get("dollars") or 0),
                  calls=calls if (spec.get("agent") or {}).get("provider", "builtin") != "builtin" else 0)
    config = {"budgets": {f"max_{k}": v for k, v in (("tokens", budgets.get("tokens")), ("dollars", budgets.get("dollars")),
                                                       ("evaluations", budgets.get("evaluations"))) if v is not None},
              "evolution": name}
    champ = st.get("champion") or {}
    last = st.get("lastDecision") or {}
    why = (f"launched by rollout {champ['rollout']}: " + (last.get("reason") or "") if champ.get("rollout")
           else "no rollout has promoted a treatment yet")
    from cambrian.report import finished_generations

    run = Run(p, hypotheses, {m: _score(v) for m, v in (st.get("baselineMetrics") or {}).items()}, usage,
              _train_seconds(p), int(spend.get("evaluations") or 0),
              finished_generations(hypotheses, set()), st.get("reason"), config, rollouts,
              champion=(champ.get("name") or "baseline", why), tokens_split=False)
    for ro in rollouts:
        for arm, hid in ro.arm_hypothesis.items():
            h = run.by_id().get(hid)
            if h is not None:
                h.online.setdefault("rollout", ro.name)
                h.online.setdefault("arm", arm)
    return run


def _score(m: dict[str, Any]):
    from cambrian.agents.journal import Score

    return Score(mean=float(m["value"]), std=float(m.get("std") or 0.0), n=int(m.get("seeds") or 1))


def _hypothesis(obj: dict[str, Any]):
    from cambrian.agents.journal import Failure, Hypothesis

    spec, st = obj.get("spec") or {}, obj.get("status") or {}
    origin = spec.get("origin") or {}
    labels = (obj.get("metadata") or {}).get("labels") or {}
    wakeup = origin.get("wakeup") if origin.get("wakeup") is not None else labels.get("cambrian.dev/wakeup", 1)
    phase = st.get("phase") or "Proposed"
    failure = None
    if phase in ("Failed", "Rejected"):
        failure = Failure(phase=phase, stage=st.get("failureStage") or "unknown", reason=st.get("reason") or "")
    online = st.get("online") or {}
    created = obj["metadata"].get("creationTimestamp")
    return Hypothesis(
        id=obj["metadata"]["name"], generation=int(wakeup), persona=origin.get("persona") or origin.get("kind") or "human",
        component=spec.get("component") or "", category=origin.get("category") or ("repair" if origin.get("repairOf") else "explore"),
        explanation=spec.get("explanation") or "", delta=spec.get("delta"), fingerprint=st.get("configFingerprint"),
        origin=origin.get("author") or origin.get("kind") or "", parent=origin.get("repairOf"), phase=phase,
        attempts=int(st.get("attempts") or 0), offline={m: _score(v) for m, v in (st.get("proxyMetrics") or {}).items()},
        primary_metric=st.get("offlineMetric"), gain=st.get("gain"), noise_floor=st.get("noiseFloor"),
        verdict=st.get("verdict"), reason=st.get("reason") or "", failure=failure,
        online={k: v for k, v in (("rollout", st.get("rollout")), ("decision", online.get("decision"))) if v},
        created_at=_stamp(created), updated_at=_stamp(created))


def _stamp(text: str | None) -> float:
    return datetime.fromisoformat(text).timestamp() if text else 0.0


def _rollout(p: Path, obj: dict[str, Any]):
    from cambrian.operator.local_driver import TIMELINE
    from cambrian.report import Rollout

    name, spec, st = obj["metadata"]["name"], obj.get("spec") or {}, obj.get("status") or {}
    control = (spec.get("control") or {}).get("name", "control")
    treatments = spec.get("treatments") or []
    north = ((spec.get("metrics") or {}).get("northStar") or [{}])[0].get("name")
    timeline = _timeline(p / "rollouts" / name / TIMELINE)
    readouts = [e for e in timeline if e.get("kind") == "readout"]
    result = None
    if st.get("phase") in ("Promoted", "RolledBack", "Inconclusive", "Failed"):
        days = None
        if st.get("startedAt") and st.get("concludedAt"):
            days = (datetime.fromisoformat(st["concludedAt"]) - datetime.fromisoformat(st["startedAt"])).days
        result = {"experiment": name, "outcome": st.get("decision") or "failed", "winner": st.get("winner"),
                  "reason": st.get("reason") or "", "days_run": days, "concluded_at": st.get("concludedAt"),
                  "final_weights": {a["name"]: a.get("weight", 0) for a in st.get("arms") or []},
                  "rolled_back": {}, "last_decision": {"arms": readouts[-1]["arms"]} if readouts else None}
    ro = Rollout(name, p / "rollouts" / name, result, timeline,
                 {"name": name, "control_name": control, "north_star": north, "north_star_relative": True,
                  "control": (spec.get("control") or {}).get("bundle"),
                  "treatments": {t["name"]: t["bundle"] for t in treatments}})
    ro.arm_hypothesis = {t["name"]: t["hypothesisRef"]["name"] for t in treatments if t.get("hypothesisRef")}
    try:
        guess = json.loads(((obj.get("metadata") or {}).get("annotations") or {}).get(A_PREDICTED) or "null")
    except ValueError:
        guess = None
    if isinstance(guess, dict) and guess.get("hypothesis"):
        ro.predicted = {guess["hypothesis"]: guess}
    return ro


def _timeline(path: Path) -> list[dict[str, Any]]:
    """The rollout's rows; a readout replayed after a restart counts once (the last row of its number)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    last = {r["readout"]: i for i, r in enumerate(rows) if r.get("kind") == "readout"}
    return [r for i, r in enumerate(rows) if r.get("kind") != "readout" or last[r["readout"]] == i]


def _events(p: Path) -> list[dict[str, Any]]:
    path = p / "events.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _train_seconds(p: Path) -> float:
    """Wall time of the finished training runs (each job's result records when it started and finished)."""
    total = 0.0
    for result in (p / "jobs").glob("*/result.json"):
        r = json.loads(result.read_text())
        if r.get("started_at") and r.get("finished_at"):
            total += (datetime.fromisoformat(r["finished_at"]) - datetime.fromisoformat(r["started_at"])).total_seconds()
    return total
