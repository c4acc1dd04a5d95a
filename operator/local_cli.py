"""`cambrian evolve -f evolution.yaml` and `cambrian rollout -f rollout.yaml`: the operator's loop, locally.

The input is the CRD YAML the cluster takes (manifests/examples/); the objects and their status are kept
in `--dir` (one YAML file each), so re-running the same command resumes a run that was stopped or
killed. The old settings formats (`--config`) still run the previous local engine for now, with a
notice (the benchmarks use that engine too); `cambrian demo` runs on the driver (cambrian/demo.py).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Optional

import typer

from cambrian import inputs
from cambrian.errors import ConfigError

LEGACY = ("{what}: --config takes the old {fmt} format, which is deprecated and will be removed; "
          "write a {kind} object (manifests/examples/{example}) and run `cambrian {what} -f FILE --dir DIR`")


def apply_overrides(objs: list[dict[str, Any]], users: int | None, days: int | None, seed: int | None,
                    evaluations: int | None) -> list[dict[str, Any]]:
    """World size, seed and evaluation budget of every Evolution, for a quick local run."""
    out = copy.deepcopy(objs)
    for o in out:
        if o["kind"] != "Evolution":
            continue
        spec = o.setdefault("spec", {})
        world = {k: v for k, v in (("users", users), ("days", days), ("seed", seed)) if v is not None}
        if world:
            if (spec.get("data") or {}).get("persistentVolumeClaim"):
                raise ConfigError("--users/--days/--seed: the Evolution reads its data from a volume, not a generated world")
            spec["data"] = {"world": {**((spec.get("data") or {}).get("world") or {}), **world}}
        if evaluations is not None:
            spec.setdefault("agent", {}).setdefault("budgets", {})["evaluations"] = evaluations
    return out


def run_local(file: Path, out: Path, *, kinds: tuple[str, ...], data: Path | None, users: int | None = None,
              days: int | None = None, seed: int | None = None, evaluations: int | None = None,
              approve: list[str] | None = None, max_days: float = 60.0, workers: int = 1, as_json: bool = False) -> int:
    from cambrian.operator import api
    from cambrian.operator.local_driver import LocalDriver
    from cambrian.operator.localstore import LocalStore, load_manifests

    # Every input is checked before the driver creates anything in --dir.
    inputs.output_dir(out, "--dir")
    if data is not None:
        inputs.data_dir(data)
    decisions = parse_approvals(approve or [])
    objs = load_manifests(file)
    wrong = [f"{o['kind']} {o['metadata']['name']}" for o in objs if o["kind"] not in kinds]
    if wrong:
        raise ConfigError(f"{file}: expected {' or '.join(kinds)} objects, found {', '.join(wrong)}")
    objs = apply_overrides(objs, users, days, seed, evaluations)
    for o in objs:  # overrides are validated like the file itself
        api.parse_resource(o)
    check_approvals(decisions, objs, LocalStore(out))
    driver = LocalDriver(out, data_dir=data, workers=workers, max_days=max_days)
    check_rollouts(driver, objs, data)
    for line in driver.apply(objs):
        typer.echo(line, err=True)
    for name, decision in decisions:
        driver.approve(name, decision)
    summary = driver.run()
    report = {"reason": summary.reason, "dir": str(driver.root), "simulatedDays": round(summary.days, 3),
              "phases": summary.phases, "awaitingApproval": summary.awaiting_approval,
              "champions": {p.stem: json.loads(p.read_text()) for p in sorted((driver.root / "champions").glob("*.json"))}}
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        _print(driver, report)
    failed = [n for n, p in summary.phases.get("Evolution", {}).items() if p == "Failed"]
    return 4 if failed else 0


def check_approvals(decisions: list[tuple[str, str]], objs: list[dict[str, Any]], store) -> None:
    """Each approved rollout is in the file or already in --dir (from an earlier run): checked before anything
    is written, so a typo stores nothing."""
    known = {o["metadata"]["name"] for o in objs if o["kind"] == "Rollout"}
    for name, _ in decisions:
        if name not in known and store.get("rollouts", "default", name) is None:
            raise ConfigError(f"--approve {name}: no Rollout {name!r} in the file or in {store.root}")


def parse_approvals(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, _, decision = item.partition("=")
        if not name or decision not in ("promote", "rollback"):
            raise ConfigError(f"--approve {item!r}: expected NAME=promote or NAME=rollback")
        out.append((name, decision))
    return out


def check_rollouts(driver: Any, objs: list[dict[str, Any]], data: Path | None) -> None:
    """Before anything starts: every arm's bundle is on this machine, and the users come from somewhere."""
    from cambrian.operator.platform.local import local_path

    evolutions = {o["metadata"]["name"] for o in objs if o["kind"] == "Evolution"}
    evolutions |= {e["metadata"]["name"] for e in driver.store.list("evolutions")}
    for o in objs:
        if o["kind"] != "Rollout":
            continue
        name, spec = o["metadata"]["name"], o["spec"]
        for arm in [spec["control"], *spec.get("treatments", [])]:
            path = local_path(arm["bundle"], driver.root)
            if path is None or not (path / "bundle.json").is_file():
                raise ConfigError(f"rollout {name}: arm {arm['name']}: bundle {arm['bundle']} is not on this machine"
                                  + (f" (no bundle.json in {path})" if path else " (only pvc:// and file:// can be served)"),
                                  hint="train it first with `cambrian evolve -f ... --dir` on the same folder, "
                                       "or name a bundle folder as file:///PATH")
        ref = (spec.get("evolutionRef") or {}).get("name")
        if data is None and ref not in evolutions:
            raise ConfigError(f"rollout {name}: no Evolution {ref!r} in {driver.root} to take the simulated users from",
                              hint="pass --data DIR (a `cambrian world generate` folder)")


def _print(driver: Any, report: dict[str, Any]) -> None:
    echo = typer.echo
    echo(f"{report['reason']} (after {report['simulatedDays']:g} simulated days)")
    print_hypotheses(driver.store.list("hypotheses"))
    for r in driver.store.list("rollouts"):
        st = r.get("status") or {}
        echo(f"  rollout {r['metadata']['name']}: {st.get('phase')}"
             + (f" — {st['reason']}" if st.get("reason") else "") + (f" [{st['weightsSummary']}]" if st.get("weightsSummary") else ""))
    for name, champ in report["champions"].items():
        echo(f"  champion of {name}: {champ['name']} ({champ['bundle']})")
    for name in report["awaitingApproval"]:
        echo(f"  approve with: cambrian rollout -f FILE --dir {report['dir']} --approve {name}=promote (or =rollback)")
    echo(f"objects: {report['dir']}/objects   events: {report['dir']}/events.jsonl")


def print_hypotheses(hypotheses: list[dict[str, Any]]) -> None:
    """The hypotheses as one table (plain tab-separated text when stdout is not a terminal)."""
    from cambrian.tables import Column, print_table

    rows = []
    for h in hypotheses:
        st, origin = h.get("status") or {}, (h.get("spec") or {}).get("origin") or {}
        score = f"{st['offlineScore']:.5g}" if st.get("offlineScore") is not None else ""
        rows.append([h["metadata"]["name"], origin.get("persona") or origin.get("kind") or "", st.get("phase") or "",
                     st.get("offlineMetric") or "", score, st.get("reason") or ""])
    if rows:
        print_table([Column("hypothesis"), Column("persona"), Column("phase"), Column("metric"), Column("score"),
                     Column("why", wide=True)], rows, title="hypotheses")


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


FILE = typer.Option(None, "--file", "-f", help="YAML with the objects to run (the CRD format of the cluster)")
DIR = typer.Option(None, "--dir", help="run folder: objects and status, jobs, bundles, rollouts, events "
                                         "(re-running with the same folder resumes)")
DATA = typer.Option(None, "--data", help="use this world data folder (`cambrian world generate`) instead of "
                                          "generating the one spec.data names")
APPROVE = typer.Option(None, "--approve", help="NAME=promote|rollback: a human decision for a rollout (repeatable)")
MAX_DAYS = typer.Option(60.0, "--max-days", min=0.01, help="stop after this much simulated time")
WORKERS = typer.Option(1, "--workers", min=1, max=64, help="training runs at once")
JSON = typer.Option(False, "--json", help="print the outcome as JSON")
VERBOSE = typer.Option(False, "--verbose", "-v")


def evolve(
    file: Optional[Path] = FILE,
    out: Optional[Path] = DIR,
    users: Optional[int] = typer.Option(None, "--users", min=10, help="override spec.data.world.users"),
    days: Optional[int] = typer.Option(None, "--days", min=2, help="override spec.data.world.days"),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="override spec.data.world.seed"),
    evaluations: Optional[int] = typer.Option(None, "--evaluations", min=1, help="override spec.agent.budgets.evaluations"),
    data: Optional[Path] = DATA,
    approve: Optional[list[str]] = APPROVE,
    max_days: float = MAX_DAYS,
    workers: int = WORKERS,
    as_json: bool = JSON,
    verbose: bool = VERBOSE,
    config: Optional[Path] = typer.Option(None, "--config", "-c", hidden=True, help="deprecated settings format"),
) -> None:
    """Run an Evolution locally: baseline, agent wake-ups, sandboxed training, reviews, rollouts, launches."""
    if config is not None:
        from cambrian.agents.cli import evolve as legacy

        legacy(config=config, as_json=as_json)
        if not as_json:  # after the run: errors and JSON output stay what scripts parse
            typer.echo("note: " + LEGACY.format(what="evolve", fmt="evolve.yaml", kind="Evolution",
                                                 example="evolution.yaml"), err=True)
        return
    _logging(verbose)
    code = run_local(_need(file, out), out, kinds=("Evolution", "Hypothesis", "Rollout"), data=data, users=users,
                     days=days, seed=seed, evaluations=evaluations, approve=approve, max_days=max_days,
                     workers=workers, as_json=as_json)
    raise typer.Exit(code)


def rollout(
    file: Optional[Path] = FILE,
    out: Optional[Path] = DIR,
    data: Optional[Path] = DATA,
    approve: Optional[list[str]] = APPROVE,
    max_days: float = MAX_DAYS,
    as_json: bool = JSON,
    verbose: bool = VERBOSE,
    config: Optional[Path] = typer.Option(None, "--config", hidden=True, help="deprecated settings format"),
    legacy_out: Optional[Path] = typer.Option(None, "--out", hidden=True, help="deprecated (with --config)"),
    seconds_per_day: Optional[float] = typer.Option(None, "--seconds-per-day", hidden=True, min=0),
) -> None:
    """Run Rollout objects locally: arms, router, simulated users, Prometheus, the operator's decision.

    Bundles named pvc://CLAIM/PATH are read from DIR/volumes/CLAIM/PATH (where `cambrian evolve` puts them)."""
    if config is not None:
        from cambrian.online.cli import rollout as legacy

        if legacy_out is None:
            raise ConfigError("--config needs --out")
        legacy(config=config, out=legacy_out, seconds_per_day=seconds_per_day, as_json=as_json, verbose=verbose)
        if not as_json:
            typer.echo("note: " + LEGACY.format(what="rollout", fmt="local rollout", kind="Rollout",
                                                 example="rollout.yaml"), err=True)
        return
    _logging(verbose)
    code = run_local(_need(file, out), out, kinds=("Rollout",), data=data, approve=approve, max_days=max_days,
                     as_json=as_json)
    raise typer.Exit(code)


def _need(file: Path | None, out: Path | None) -> Path:
    if file is None or out is None:
        raise ConfigError("give -f FILE (Evolution/Rollout YAML) and --dir DIR (the run folder)")
    return file
