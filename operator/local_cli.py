"""`cambrian evolve -f evolution.yaml` and `cambrian rollout -f rollout.yaml`: the operator's loop, locally.

The input is the CRD YAML the cluster takes (manifests/examples/); the objects and their status are kept
in `--dir` (one YAML file each), so re-running the same command resumes a run that was stopped or
killed. The old evolve.yaml format (`cambrian evolve --config`) is converted to the equivalent Evolution
(operator/legacy.py) and run the same way; the old local rollout format is refused with a pointer to the
Rollout format. `cambrian demo` runs on the driver too (cambrian/demo.py).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from cambrian import inputs
from cambrian.errors import ConfigError

CONVERTED = ("evolve: {config} (the old evolve.yaml format) was converted to the Evolution in {file}; "
             "run it with `cambrian evolve -f {file} --dir {dir}` from now on")


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
            data = spec.get("data") or {}
            if data.get("persistentVolumeClaim") or data.get("source"):
                where = "a volume" if data.get("persistentVolumeClaim") else "its own source"
                raise ConfigError(f"--users/--days/--seed: the Evolution reads its data from {where}, not a generated world")
            spec["data"] = {"world": {**((spec.get("data") or {}).get("world") or {}), **world}}
        if evaluations is not None:
            spec.setdefault("agent", {}).setdefault("budgets", {})["evaluations"] = evaluations
    return out


def run_local(file: Path, out: Path, *, kinds: tuple[str, ...], data: Path | None, users: int | None = None,
              days: int | None = None, seed: int | None = None, evaluations: int | None = None,
              approve: list[str] | None = None, max_days: float = 60.0, workers: int = 1, as_json: bool = False,
              limits: Any = None, train_command: list[str] | None = None, warehouse: Any = None,
              promql_url: str | None = None, warm: bool = True, zygote: bool = True) -> int:
    """`limits`, `train_command`: the sandbox limits and trainer command of this machine's training runs
    (agents.runner.run_candidate); None: its defaults. `warm`: warm worker slots (README: Warm worker slots);
    `zygote`: their steps fork from the slot's zygote (trainer/zygote.py), else pre-started bubblewrap sandboxes."""
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
    driver = LocalDriver(out, data_dir=data, workers=workers, max_days=max_days, limits=limits,
                         train_command=train_command, warehouse=warehouse, promql_url=promql_url, warm=warm,
                         warm_zygote=zygote)
    check_rollouts(driver, objs, data)
    for line in driver.apply(objs):
        typer.echo(line, err=True)
    for name, decision in decisions:
        driver.approve(name, decision)
    summary = driver.run()
    report = {"reason": summary.reason, "dir": str(driver.root), "simulatedDays": round(summary.days, 3),
              "phases": summary.phases, "awaitingApproval": summary.awaiting_approval, "stalled": summary.stalled,
              "champions": {p.stem: json.loads(p.read_text()) for p in sorted((driver.root / "champions").glob("*.json"))}}
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        _print(driver, report)
    return exit_code(summary)


def exit_code(summary: Any) -> int:
    """4: an Evolution failed (its baseline did not train); 1: the run ended because an Evolution's proposer kept
    creating nothing (a provider that fails every time: a script must not read that as success); else 0."""
    if any(p == "Failed" for p in summary.phases.get("Evolution", {}).values()):
        return 4
    return 1 if summary.stalled else 0


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
WAREHOUSE_URL = typer.Option(None, "--warehouse-url", envvar="CAMBRIAN_WAREHOUSE_URL", show_default=False,
                             help="a warehouse for online metrics (duckdb:///PATH, postgresql://USER@HOST:PORT/DB; "
                                  "the password in PGPASSWORD): each rollout's exposure log and the simulated users' "
                                  "days land there, and the --warehouse-metrics are computed there")
WAREHOUSE_METRICS = typer.Option(None, "--warehouse-metrics", help="YAML list of {name, kind: mean|ratio, sql} over "
                                 "the warehouse's tables (README: Bring your own data)")
PROMQL_URL = typer.Option(None, "--promql-url", envvar="CAMBRIAN_PROMQL_URL", show_default=False,
                          help="your own Prometheus, which the rollouts' PromQL metrics and guardrail queries run "
                               "against (default: each rollout's own Prometheus)")
WAREHOUSE_EVENTS = typer.Option("sim_user_days", "--warehouse-events-table",
                                help="the warehouse table the simulated users' days land in")


def local_warehouse(url: str | None, metrics: Path | None, events_table: str) -> Any:
    """--warehouse-* as one online/warehouse.Warehouse, checked before anything starts (None without a URL)."""
    from cambrian.online.warehouse import Warehouse

    if url is None:
        if metrics is not None:
            raise ConfigError("--warehouse-metrics needs --warehouse-url (or CAMBRIAN_WAREHOUSE_URL)")
        return None
    return Warehouse.checked(url, metrics, events_table)


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
    config: Optional[Path] = typer.Option(None, "--config", "-c", hidden=True,
                                          help="old evolve.yaml settings: converted to an Evolution and run"),
    warehouse_url: Optional[str] = WAREHOUSE_URL,
    warehouse_metrics: Optional[Path] = WAREHOUSE_METRICS,
    warehouse_events: str = WAREHOUSE_EVENTS,
    promql_url: Optional[str] = PROMQL_URL,
    warm: bool = typer.Option(True, "--warm/--no-warm", help="warm worker slots: pre-started sandboxes and cached "
                              "rows (README: Warm worker slots); --no-warm: three fresh processes per candidate"),
    zygote: bool = typer.Option(True, "--zygote/--no-zygote", help="warm slots' steps fork from the slot's zygote "
                                "(torch imported once); --no-zygote: a pre-started bubblewrap sandbox per step"),
) -> None:
    """Run an Evolution locally: baseline, agent wake-ups, sandboxed training, reviews, rollouts, launches."""
    _logging(verbose)
    if config is not None:
        raise typer.Exit(_evolve_settings(config, file, out, max_days, as_json))
    code = run_local(_need(file, out), out, kinds=("Evolution", "Hypothesis", "Rollout"), data=data, users=users,
                     days=days, seed=seed, evaluations=evaluations, approve=approve, max_days=max_days,
                     workers=workers, as_json=as_json,
                     warehouse=local_warehouse(warehouse_url, warehouse_metrics, warehouse_events),
                     promql_url=inputs_promql_url(promql_url), warm=warm, zygote=zygote)
    raise typer.Exit(code)


def rollout(
    file: Optional[Path] = FILE,
    out: Optional[Path] = DIR,
    data: Optional[Path] = DATA,
    approve: Optional[list[str]] = APPROVE,
    max_days: float = MAX_DAYS,
    as_json: bool = JSON,
    verbose: bool = VERBOSE,
    # the old local rollout format and its options: refused with a pointer to the Rollout format
    config: Optional[Path] = typer.Option(None, "--config", hidden=True, help="old local rollout format (refused)"),
    legacy_out: Optional[Path] = typer.Option(None, "--out", hidden=True, help="old format (refused)"),
    seconds_per_day: Optional[float] = typer.Option(None, "--seconds-per-day", hidden=True, min=0),
    warehouse_url: Optional[str] = WAREHOUSE_URL,
    warehouse_metrics: Optional[Path] = WAREHOUSE_METRICS,
    warehouse_events: str = WAREHOUSE_EVENTS,
    promql_url: Optional[str] = PROMQL_URL,
) -> None:
    """Run Rollout objects locally: arms, router, simulated users, Prometheus, the operator's decision.

    Bundles named pvc://CLAIM/PATH are read from DIR/volumes/CLAIM/PATH (where `cambrian evolve` puts them)."""
    if config is not None:
        from cambrian.operator.legacy import refuse_rollout_settings

        refuse_rollout_settings(f"rollout --config {config}")
    _logging(verbose)
    code = run_local(_need(file, out), out, kinds=("Rollout",), data=data, approve=approve, max_days=max_days,
                     as_json=as_json, warehouse=local_warehouse(warehouse_url, warehouse_metrics, warehouse_events),
                     promql_url=inputs_promql_url(promql_url))
    raise typer.Exit(code)


def inputs_promql_url(url: str | None) -> str | None:
    """--promql-url: an http(s) URL without credentials (process listings show it); None stays None."""
    from urllib.parse import urlsplit

    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--promql-url {url!r}: expected http://HOST:PORT of a Prometheus")
    if parts.password:
        raise ConfigError("--promql-url: no password in the URL (process listings show it)")
    return url.rstrip("/")


def _evolve_settings(config: Path, file: Path | None, out: Path | None, max_days: float, as_json: bool) -> int:
    """`cambrian evolve --config evolve.yaml`: the equivalent Evolution, written to RUN_DIR/evolution.yaml and run."""
    from cambrian.agents.settings import load_evolve_config
    from cambrian.operator.legacy import EVOLUTION_FILE, evolution_from_settings

    if file is not None or out is not None:
        raise ConfigError("--config (the old evolve.yaml format) holds the run folder (run_dir) itself; "
                          "give either --config FILE or -f FILE --dir DIR")
    run = evolution_from_settings(load_evolve_config(config), str(config))
    inputs.output_dir(run.run_dir, "run_dir")
    inputs.data_dir(run.data_dir)  # checked before RUN_DIR/evolution.yaml is written
    converted = run.run_dir / EVOLUTION_FILE
    run.run_dir.mkdir(parents=True, exist_ok=True)
    converted.write_text(yaml.safe_dump(run.evolution, sort_keys=False))
    typer.echo("note: " + CONVERTED.format(config=config, file=converted, dir=run.run_dir), err=True)
    return run_local(converted, run.run_dir, kinds=("Evolution",), data=run.data_dir, max_days=max_days,
                     workers=run.workers, as_json=as_json, limits=run.limits, train_command=run.train_command)


def _need(file: Path | None, out: Path | None) -> Path:
    if file is None or out is None:
        raise ConfigError("give -f FILE (Evolution/Rollout YAML) and --dir DIR (the run folder)")
    return file
