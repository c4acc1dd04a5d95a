"""`cambrian demo`: the whole self-evolving loop on the built-in simulated world, on one machine.

Stages (each leaves its result on disk, so a re-run resumes where the last one stopped):
  1. world     generate the simulated world's logs (cambrian world generate)
  2. offline   the offline agent's generations: propose, gate, train, score against the noise floor
  3. select    the online agent ranks the journal and picks the top K for a live experiment
  4. online    an A/B/n Rollout: model servers, sticky router, simulated users, real Prometheus, decision
  5. launch    the decision is written back to the journal; a winner becomes the champion
  6. report    report.html with plots
With GEMINI_API_KEY set, both agents are Gemini (google-genai); otherwise the built-in proposer and rule.
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

STAGE_FILE = "demo-state.json"


@dataclass(frozen=True)
class DemoSize:
    users: int
    days: int
    generations: int
    evaluations: int
    online_days: int
    top_k: int
    epochs: int
    max_train_examples: int
    world: str  # world preset (cambrian.world.params.PRESETS)


# Fast: one generation of 9 proposals (3 personas x explore/exploit/innovate), small training runs,
# on the `easy` world (large online effects, so a 6-day A/B test on 1000 users decides). Full: the
# calibrated world, whose effects are of a real product's size (world/README.md).
FAST = DemoSize(users=1000, days=6, generations=1, evaluations=18, online_days=6, top_k=2, epochs=2,
                max_train_examples=200_000, world="easy")
FULL = DemoSize(users=2000, days=14, generations=3, evaluations=45, online_days=10, top_k=2, epochs=4,
                max_train_examples=500_000, world="calibrated")


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


def stage_world(out: Path, size: DemoSize, seed: int, console) -> str:
    from cambrian.world.generate import generate

    world = out / "world"
    console.print(f"[bold]1/6 world[/bold]: {size.users} simulated users, {size.days} logged days, "
                  f"{size.world} world")
    summary = generate(world, n_users=size.users, days=size.days, seed=seed, force=True, preset=size.world)
    overall = summary["overall"]
    console.print(f"    CTR {overall['ctr']:.3f}, completion {overall['completion']:.3f}, "
                  f"next-day return {overall['return_rate']:.3f}")
    return str(world)


def offline_config(out: Path, world: str, size: DemoSize, seed: int):
    from cambrian.agents.settings import parse_evolve_config

    provider = {"kind": "gemini"} if _gemini_available() else {"kind": "builtin"}
    return parse_evolve_config({
        "data_dir": world, "run_dir": str(out / "evolve"), "generations": size.generations, "workers": 2,
        "provider": provider, "seed": seed, "budgets": {"max_evaluations": size.evaluations},
        "baseline_overrides": {"training": {"epochs": size.epochs, "max_train_examples": size.max_train_examples}},
        "online_metrics": ["watch_minutes", "returned_next_day"],
    }, "demo offline settings")


def stage_offline(out: Path, world: str, size: DemoSize, seed: int, live: bool) -> dict:
    from cambrian.agents.cli import _print_summary, _run_live
    from cambrian.agents.evolve import Evolution

    cfg = offline_config(out, world, size, seed)
    result = _run_live(cfg) if live else Evolution(cfg).run()
    if live:
        _print_summary(result)
    return result.to_json()


def stage_select(out: Path, size: DemoSize, console) -> dict:
    from cambrian.agents.evolve import bundle_path
    from cambrian.agents.journal import Journal
    from cambrian.agents.online import GeminiRanker, OnlineAgent

    journal = Journal(out / "evolve")
    ranker = GeminiRanker() if _gemini_available() else None
    agent = OnlineAgent(k=size.top_k, ranker=ranker, north_star=["watch_minutes", "returned_next_day"],
                        guardrails=["hate_rate must not rise by more than 10% relative"])
    selection = agent.select(journal.hypotheses)
    arms = {hid: str(bundle_path(out / "evolve", hid)) for hid in selection.ranking if bundle_path(out / "evolve", hid)}
    console.print(f"[bold]3/6 select[/bold] ({selection.ranked_by}): "
                  + (", ".join(f"{h} — {selection.reasons.get(h, '')}" for h in arms) or "nothing to test"))
    if selection.note:
        console.print(f"    {selection.note}")
    for hid in arms:
        journal.update(hid, phase="Live")
    return {"arms": arms, "ranked_by": selection.ranked_by, "reasons": selection.reasons}


def stage_online(out: Path, world: str, arms: dict[str, str], size: DemoSize, console) -> dict:
    from cambrian.agents.evolve import BASELINE_ID, bundle_path
    from cambrian.online.rollout import run_rollout

    control = bundle_path(out / "evolve", BASELINE_ID)
    if control is None:
        raise typer.BadParameter("the offline stage produced no baseline bundle")
    per_arm = min(33, 100 // (len(arms) + 1))
    spec = {
        "name": "demo", "world": world, "control": str(control), "treatments": arms, "days": size.online_days,
        "ramp": [{"day": 0, "weight": min(10, per_arm)}, {"day": 1, "weight": min(25, per_arm)}, {"day": 2, "weight": per_arm}],
        "north_star": "watch_minutes", "secondary": ["returned_next_day", "ctr"],
        "guardrails": [{"metric": "hate_rate", "margin": 0.10, "relative": True, "higher_is_better": False}],
        "planned_users_per_arm": max(100, size.users // 4), "min_users_per_arm": 50,
    }
    rollout_dir = out / "evolve" / "rollouts" / "demo"
    console.print(f"[bold]4/6 online[/bold]: A/B/{len(arms) + 1} test of {', '.join(arms)} against the baseline, "
                  f"up to {size.online_days} simulated days, real Prometheus")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("    simulated days"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[status]}"), console=console)

    def day_done(rollout, day: int) -> None:
        last = rollout.last_decision.outcome if rollout.last_decision else "no look yet"
        weights = " ".join(f"{arm}={w}%" for arm, w in rollout.weights.items())
        progress.update(task, advance=1, status=f"day {day}: {weights}; last look: {last}")

    with progress:
        task = progress.add_task("online", total=size.online_days, status="starting servers and Prometheus")
        result = run_rollout(spec, rollout_dir, on_day_end=day_done)
    return {**result.to_dict(), "dir": str(rollout_dir)}


def stage_launch(out: Path, online: dict, console) -> dict:
    from cambrian.agents.journal import Journal
    from cambrian.agents.online import record_outcome

    journal = Journal(out / "evolve")
    decision = online.get("last_decision") or {}
    arms = decision.get("arms", {}) if isinstance(decision, dict) else {}
    winner = online.get("winner") if online.get("outcome") == "promote" else None
    for hid in online.get("final_weights", {}):
        if hid == "control" or hid not in journal.state.hypotheses:
            continue
        arm = arms.get(hid, {}) if isinstance(arms, dict) else {}
        outcome = "promote" if hid == winner else online["rolled_back"].get(hid, online.get("outcome", "inconclusive"))
        outcome = outcome if outcome in ("promote", "inconclusive") else "rollback"
        record_outcome(journal, hid, outcome, {k: arm[k] for k in ("effect", "ci", "p_value") if k in arm},
                       launched=hid == winner)
    champion = {"hypothesis": winner or "baseline", "decided_by": online.get("reason", "")}
    (out / "champion.json").write_text(json.dumps(champion, indent=2) + "\n")
    console.print(f"[bold]5/6 launch[/bold]: {online.get('outcome')} — champion is {champion['hypothesis']}")
    return champion


def stage_report(out: Path, console) -> str:
    from cambrian.report import load_run, write_report

    path = write_report(load_run(out / "evolve"), out / "report")
    console.print(f"[bold]6/6 report[/bold]: {path}")
    return str(path)


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="where the demo writes everything"),
    fast: bool = typer.Option(False, "--fast", help="a smaller world and budget: about 5 minutes on 2 cores"),
    seed: int = typer.Option(0, "--seed", help="world and agent seed"),
    fresh: bool = typer.Option(False, "--fresh", help="start over instead of resuming an earlier demo in --out"),
    users: Optional[int] = typer.Option(None, "--users", min=50, help="override the number of simulated users"),
    days: Optional[int] = typer.Option(None, "--days", min=2, help="override the number of logged days"),
    evaluations: Optional[int] = typer.Option(None, "--evaluations", min=4, help="override the training budget"),
    online_days: Optional[int] = typer.Option(None, "--online-days", min=1, help="override the A/B test's length"),
    as_json: bool = typer.Option(False, "--json", help="print the final summary as JSON (no live display)"),
) -> None:
    """Run the whole loop on the built-in simulated world: offline agent, online A/B test, launch, report.

    Re-running resumes after the last finished stage (Ctrl-C is safe).
    """
    from rich.console import Console

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
    world = state.data["world"]
    if not state.done("offline"):
        console.print(f"[bold]2/6 offline[/bold]: {size.generations} generations, up to {size.evaluations} evaluations")
        state.finish("offline", stage_offline(out, world, size, seed, live=not as_json))
    if not state.done("select"):
        state.finish("select", stage_select(out, size, console))
    arms = state.data["select"]["arms"]
    if arms and not state.done("online"):
        state.finish("online", stage_online(out, world, arms, size, console))
    if arms and not state.done("launch"):
        state.finish("launch", stage_launch(out, state.data["online"], console))
    if not state.done("report"):
        state.finish("report", stage_report(out, console))
    summary = {
        "out": str(out), "winners_offline": [w["id"] for w in state.data["offline"].get("winners", [])],
        "tested_online": list(arms), "online_outcome": state.data.get("online", {}).get("outcome"),
        "online_reason": state.data.get("online", {}).get("reason"),
        "champion": state.data.get("launch", {}).get("hypothesis", "baseline"), "report": state.data["report"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(summary))
        return
    console.rule("summary")
    for key, value in summary.items():
        console.print(f"[bold]{key}[/bold]: {value}")

