"""`cambrian demo`: the whole self-evolving loop on the built-in simulated world, on one machine.

The demo is one Evolution object (the CRD format of manifests/examples/evolution.yaml) run by the
operator's reconcile core through the local platform, as `cambrian evolve -f FILE --dir OUT/evolve` runs
it: the baseline trained over several seeds (its noise floor), wake-ups of the proposer, sandboxed
training, confirmation seeds, A/B Rollouts of the top-K better hypotheses with model servers, a sticky
router, simulated users and a real Prometheus, and the winner launched as champion by the core.

Stages (a re-run resumes where the last one stopped):
  1. world     generate the simulated world's logs (cambrian world generate)
  2. evolve    the local driver over OUT/evolve, until the Rollouts conclude or the budget is spent
               (killed, it resumes from its files: nothing finished is trained or played again)
  3. report    report.html with plots, read from the driver's objects
With GEMINI_API_KEY set the proposer is Gemini; otherwise the built-in proposer.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import typer

from cambrian import inputs
from cambrian.errors import TrainingError

STAGE_FILE = "demo-state.json"
EVOLUTION = "demo"
GEMINI_MODEL = "gemini-2.5-pro"


@dataclass(frozen=True)
class DemoSize:
    users: int
    days: int
    evaluations: int  # training runs in total: the baseline's seeds, candidates, confirmation seeds
    online_days: int  # the longest a Rollout runs (maxDuration)
    top_k: int  # Rollouts live at once
    epochs: int
    max_train_examples: int
    world: str  # world preset (cambrian.world.params.PRESETS)
    # the Rollouts' group-sequential design: planned by days (it ends at maxDuration, so the final analysis reads
    # every user's minutes over the test) or by users (it ends once users/4 per arm arrived: on the first day)
    planned_by_days: bool = False


# Fast: one wake-up of 9 proposals (3 personas x explore/exploit/innovate) and their confirmation seeds,
# small training runs, on the `easy` world (large online effects: one day of minutes decides, so its Rollouts
# are planned by users and the demo stays short). Full: the calibrated world, whose effects are of a real
# product's size (world/README.md): its Rollouts are planned by days, since a design that ends at users/4 per arm
# decides on the first day's minutes and promoted a true +11.9% change in 29.5% of simulated experiments, the
# design by days in 100% (+3.8%: 4.5% against 44%), with A/A promotions within α/2 (bench/README.md, decision-world).
# Its tests run three whole weeks: at 10 days the design promoted a +3.8% change in 40.5% of experiments, at 21 days
# (+5.0% there: effects grow while habits form) in 78.5%, with A/A promotions 2.25% (decision-world --durations).
FAST = DemoSize(users=1000, days=6, evaluations=18, online_days=6, top_k=2, epochs=2,
                max_train_examples=200_000, world="easy")
FULL = DemoSize(users=2000, days=14, evaluations=45, online_days=21, top_k=2, epochs=4,
                max_train_examples=500_000, world="calibrated", planned_by_days=True)


class DemoState:
    """Which stages are done, with their results; written atomically after each stage."""

    def __init__(self, out: Path):
        self.path = out / STAGE_FILE
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def done(self, stage: str) -> bool:
        return stage in self.data

    def finish(self, stage: str, result: Any) -> None:
        self.data[stage] = result
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True, default=str) + "\n")
        tmp.replace(self.path)


def _gemini_available() -> bool:
    return bool(os.environ.get("GEMINI_API_KEY"))


def evolution_object(size: DemoSize, seed: int, gemini: bool) -> dict[str, Any]:
    """The demo's Evolution: what `kubectl apply` would take for the same loop in a cluster."""
    agent: dict[str, Any] = {"provider": "gemini", "model": GEMINI_MODEL} if gemini else {"provider": "builtin"}
    # by days: no decision before users/8 per arm, the design ends at maxDuration (union boundaries); by users:
    # it ends at users/4 per arm (exact boundaries). stats/decision.py, operator/reconcile/readout.policy_for
    statistics: dict[str, Any] = (
        {"minSamplePerArm": max(50, size.users // 8)} if size.planned_by_days else
        {"minSamplePerArm": 50, "plannedSamplePerArm": max(100, size.users // 4)})
    return {
        "apiVersion": "cambrian.dev/v1alpha1", "kind": "Evolution", "metadata": {"name": EVOLUTION},
        "spec": {
            "baseline": {"training": {"epochs": size.epochs, "max_train_examples": size.max_train_examples,
                                      "seed": seed}},
            # reward changes are scored by the operator's default offline objective, the world's proxy of the
            # north star top_watch_share (the share of each user's held-out watch seconds in the model's top 6%):
            # on the fidelity benchmark its gain ranks the online effects best (bench/README.md)
            "objective": {"northStar": [{"name": "watch_minutes", "direction": "maximize", "window": "1d"},
                                        {"name": "returned_next_day", "direction": "maximize", "window": "1d"}]},
            "guardrails": [{"metric": "hate_rate", "direction": "minimize", "margin": 0.10}],
            "agent": {**agent, "personas": ["optimizer", "architecture", "reward"], "proposalsPerWakeup": 3,
                      "quotas": {"explore": 1, "exploit": 1, "innovate": 1},
                      "budgets": {"evaluations": size.evaluations}},
            "topK": size.top_k,
            # a wake-up and a review per simulated day: the clock waits while training runs, so each
            # wake-up's proposals are trained and judged before the next review picks the top K
            "cadence": {"offline": "1d", "online": "1d"},
            "launchPolicy": "auto",
            "training": {"gpu": {"count": 0}, "maxAttempts": 1},
            "experiment": {
                "ramp": {"steps": [{"weights": [90, 10], "duration": "1d"}, {"weights": [75, 25], "duration": "1d"},
                                   {"weights": [50, 50], "duration": "1d"}]},
                "readout": {"interval": "1d"},
                "statistics": {**statistics, "maxDuration": f"{size.online_days}d"},
            },
            "data": {"world": {"users": size.users, "days": size.days, "seed": seed}},
        },
    }


def stage_world(out: Path, size: DemoSize, seed: int, console) -> str:
    from cambrian.world.generate import generate

    world = out / "world"
    console.print(f"[bold]1/3 world[/bold]: {size.users} simulated users, {size.days} logged days, "
                  f"{size.world} world")
    summary = generate(world, n_users=size.users, days=size.days, seed=seed, force=True, preset=size.world)
    overall = summary["overall"]
    console.print(f"    CTR {overall['ctr']:.3f}, completion {overall['completion']:.3f}, "
                  f"next-day return {overall['return_rate']:.3f}")
    return str(world)


def decision_applied(evolution_status: dict[str, Any], rollout: dict[str, Any]) -> bool:
    """Its Evolution applied the Rollout's decision: the name is still in status.handledDecisions, or (once the
    next reconcile marked the Rollout and forgot the name) the Rollout carries the mark (evolution.py step 3)."""
    from cambrian.operator.reconcile.views import rollout_view

    view = rollout_view(rollout)
    return view.name in (evolution_status.get("handledDecisions") or ()) or view.applied is not None


def rollouts_settled(driver) -> str | None:
    """The demo's end: its budget is spent, every Rollout it started has concluded and been applied by the
    Evolution (a champion launched or not), and the review after the last of them started nothing (a launch
    sends the hypotheses it overtook back to be tested against the new champion). The driver stops on its own
    when no Rollout ever starts."""
    evo = driver.store.get("evolutions", "default", EVOLUTION) or {}
    st = evo.get("status") or {}
    rollouts = driver.store.list("rollouts")
    if st.get("phase") != "BudgetExhausted" or not rollouts:
        return None
    if not all(decision_applied(st, r) for r in rollouts):
        return None
    if driver.evolutions_busy([evo], driver.store.list("hypotheses")):
        return None
    return "every rollout of the demo concluded"


class Progress:
    """One line whenever the counts of hypothesis and rollout phases change (the driver's on_pass)."""

    def __init__(self, console, every_s: float = 2.0):
        self.console, self.last, self.every_s, self.checked = console, None, every_s, 0.0

    def __call__(self, driver) -> None:
        import time

        from cambrian.operator.platform.local import SIM_EPOCH

        if time.monotonic() - self.checked < self.every_s:  # reading every object costs CPU the training needs
            return
        self.checked = time.monotonic()

        def count(plural: str) -> str:
            phases: dict[str, int] = {}
            for o in driver.store.list(plural):
                p = (o.get("status") or {}).get("phase") or "New"
                phases[p] = phases.get(p, 0) + 1
            return ", ".join(f"{n} {p}" for p, n in sorted(phases.items())) or "none"

        line = f"hypotheses: {count('hypotheses')}; rollouts: {count('rollouts')}"
        if line != self.last:
            self.last = line
            day = (driver.now - SIM_EPOCH).total_seconds() / 86400
            self.console.print(f"    day {day:4.1f}  {line}")


def stage_evolve(out: Path, world: str, size: DemoSize, seed: int, console, warm: bool = True,
                 zygote: bool = True) -> dict[str, Any]:
    from cambrian.operator import api
    from cambrian.operator.local_driver import LocalDriver

    obj = evolution_object(size, seed, _gemini_available())
    api.parse_resource(obj)  # the demo's own object: a failure here is a bug, not bad input
    console.print(f"[bold]2/3 evolve[/bold]: Evolution {EVOLUTION} in {out / 'evolve'}: up to {size.evaluations} "
                  f"training runs, top {size.top_k} in A/B rollouts of up to {size.online_days} simulated days")
    driver = LocalDriver(out / "evolve", data_dir=world, workers=2, max_days=size.online_days * 4 + 10,
                         on_pass=Progress(console), until=rollouts_settled, warm=warm,
                         warm_zygote=zygote)
    driver.apply([obj])
    summary = driver.run()
    console.print(f"    {summary.reason} (after {summary.days:g} simulated days)")
    return {"reason": summary.reason, "days": round(summary.days, 3)}


def stage_report(out: Path, console) -> str:
    from cambrian.report import load_run, write_report

    path = write_report(load_run(out / "evolve"), out / "report")
    console.print(f"[bold]3/3 report[/bold]: {path}")
    return str(path)


def outcome(run_dir: Path) -> dict[str, Any]:
    """What the core decided, read from the driver's objects: offline winners, rollouts, champion."""
    from cambrian.operator.localstore import LocalStore

    store = LocalStore(run_dir)
    evo = store.get("evolutions", "default", EVOLUTION) or {}
    st = evo.get("status") or {}
    hyps = store.list("hypotheses")
    rollouts = sorted(store.list("rollouts"), key=lambda r: r["metadata"].get("creationTimestamp") or "")
    tested = [t["hypothesisRef"]["name"] for r in rollouts for t in (r.get("spec") or {}).get("treatments", [])]
    champion = (st.get("champion") or {}).get("name") or "baseline"
    decided = [(r, (r.get("status") or {}).get("decision")) for r in rollouts]
    promoted = [r for r, d in decided if d == "promote" and r["metadata"]["name"] == (st.get("champion") or {}).get("rollout")]
    if promoted:
        result, why = "promote", [promoted[0]]
    elif any(d is None for _, d in decided):
        result, why = "continue", rollouts
    else:
        ds = [d for _, d in decided]
        result = "rollback" if "rollback" in ds else ("inconclusive" if ds else None)
        why = rollouts
    reason = "; ".join(f"{', '.join(t['hypothesisRef']['name'] for t in r['spec']['treatments'])}: "
                       f"{(r.get('status') or {}).get('reason') or (r.get('status') or {}).get('phase')}" for r in why)
    return {"winners_offline": sorted(h["metadata"]["name"] for h in hyps if (h.get("status") or {}).get("verdict") == "better"),
            "tested_online": tested, "online_outcome": result, "online_reason": reason or None, "champion": champion}


def _failure(run_dir: Path) -> str | None:
    from cambrian.operator.localstore import LocalStore

    st = (LocalStore(run_dir).get("evolutions", "default", EVOLUTION) or {}).get("status") or {}
    return (st.get("reason") or "no reason recorded") if st.get("phase") == "Failed" else None


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="where the demo writes everything"),
    fast: bool = typer.Option(False, "--fast", help="a smaller world and budget: about 5 minutes on 2 cores"),
    seed: int = typer.Option(0, "--seed", help="world and agent seed"),
    fresh: bool = typer.Option(False, "--fresh", help="start over instead of resuming an earlier demo in --out"),
    users: Optional[int] = typer.Option(None, "--users", min=50, help="override the number of simulated users"),
    days: Optional[int] = typer.Option(None, "--days", min=2, help="override the number of logged days"),
    evaluations: Optional[int] = typer.Option(None, "--evaluations", min=4, help="override the training budget"),
    online_days: Optional[int] = typer.Option(None, "--online-days", min=1, help="override the A/B tests' length"),
    as_json: bool = typer.Option(False, "--json", help="print the final summary as JSON (no live display)"),
    warm: bool = typer.Option(True, "--warm/--no-warm", help="warm worker slots (README: Warm worker slots); "
                              "--no-warm: three fresh processes per candidate"),
    zygote: bool = typer.Option(True, "--zygote/--no-zygote", help="warm slots' steps fork from the slot's zygote "
                                "(torch imported once); --no-zygote: a pre-started bubblewrap sandbox per step"),
) -> None:
    """Run the whole loop on the built-in simulated world: the operator's core through the local platform
    (baseline noise floor, proposals, training, A/B rollouts, launch), then a report.

    Re-running resumes where the last run stopped (Ctrl-C, or a kill, is safe).
    """
    import logging

    from rich.console import Console

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    console = Console(quiet=as_json)
    size = FAST if fast else FULL
    overrides = {"users": users, "days": days, "evaluations": evaluations, "online_days": online_days}
    size = replace(size, **{k: v for k, v in overrides.items() if v is not None})
    inputs.output_dir(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    state = DemoState(out)
    if state.data.get("size") not in (None, size.__dict__):
        raise typer.BadParameter(f"{out} holds a demo of another size; use --fresh or another --out")
    state.data["size"] = size.__dict__
    agent = "Gemini" if _gemini_available() else "built-in proposer (set GEMINI_API_KEY for Gemini)"
    console.rule(f"Cambrian demo — {'fast' if fast else 'full'} — agents: {agent}")

    if not state.done("world"):
        state.finish("world", stage_world(out, size, seed, console))
    if not state.done("evolve"):
        state.finish("evolve", stage_evolve(out, state.data["world"], size, seed, console, warm, zygote))
    if not state.done("report"):
        state.finish("report", stage_report(out, console))
    summary = {"out": str(out), **outcome(out / "evolve"), "report": state.data["report"]}
    summary = {k: summary[k] for k in ("out", "winners_offline", "tested_online", "online_outcome", "online_reason",
                                       "champion", "report")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    failed = _failure(out / "evolve")
    if failed:  # as `cambrian evolve -f` exits: the report and summary.json say what was done
        raise TrainingError(f"the demo's Evolution failed: {failed}", hint=f"see {out / 'evolve' / 'events.jsonl'}")
    if as_json:
        typer.echo(json.dumps(summary))
        return
    console.rule("summary")
    for key, value in summary.items():
        console.print(f"[bold]{key}[/bold]: {value}")
