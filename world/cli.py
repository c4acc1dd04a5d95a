"""`cambrian world generate|summary`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .params import DEFAULT_PRESET, PRESETS

PRESET_HELP = (f"world preset: {', '.join(PRESETS)} (calibrated: effects of a real product's size; hooked: the "
               "calibrated world with binge-watched bait whose cost shows over weeks; wary: hooked, with return following "
               "satisfaction twice as closely; easy: the original world, where "
               "model changes move minutes by tens of percent)")

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, help="Generate and inspect the simulated world.")


def _parse_sets(sets: list[str]) -> dict:
    """--set name=value (repeatable): override any simulator parameter (see WorldParams)."""
    out = {}
    for item in sets:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--set")
        try:
            out[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            raise typer.BadParameter(f"{item!r}: value must be a number", param_hint="--set") from None
    return out


def _preset(preset: str, easy: bool) -> str:
    """--easy is short for --preset easy; both at once must agree."""
    if easy and preset not in ("easy", DEFAULT_PRESET):
        raise typer.BadParameter(f"--easy contradicts --preset {preset}", param_hint="--easy")
    return "easy" if easy else preset


@app.command()
def generate(
    out: Path = typer.Option(..., "--out", help="directory to write (must be empty unless --force)"),
    users: int = typer.Option(2000, "--users", min=1, help="number of users"),
    days: int = typer.Option(14, "--days", min=1, max=32000, help="logged days"),
    seed: int = typer.Option(0, "--seed", min=0, help="world seed (catalogue, users, every random draw)"),
    policy: str = typer.Option("random", "--policy", help="logging policy: random, ctr_greedy, watch_time, "
                               "satisfaction_aware[:LAMBDA]"),
    items: Optional[int] = typer.Option(None, "--items", min=2, help="catalogue size (default 500)"),
    sets: list[str] = typer.Option([], "--set", help="override a simulator parameter: NAME=VALUE (repeatable)"),
    force: bool = typer.Option(False, "--force", help="replace the outputs of an earlier run in --out"),
    preset: str = typer.Option(DEFAULT_PRESET, "--preset", help=PRESET_HELP),
    easy: bool = typer.Option(False, "--easy", help="the easy world: same as --preset easy"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Simulate USERS users for DAYS days under a logging policy and write the world data directory."""
    from .generate import generate as run

    # Errors (CambrianError) go to cambrian.cli.main: one line, or the JSON error object under --json.
    summary = run(out, n_users=users, days=days, seed=seed, policy=policy, n_items=items,
                  overrides=_parse_sets(sets), force=force, preset=_preset(preset, easy))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print(summary, per_day=False, title=f"world written to {out}")


@app.command()
def summary(
    data_dir: Path = typer.Argument(..., help="a world data directory"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """CTR, completion, DAU, minutes and next-day return per day of a world data directory."""
    from .logs import summarize_dir

    result = summarize_dir(data_dir)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        _print(result, per_day=True, title=str(data_dir))


@app.command()
def compare(
    users: int = typer.Option(2000, "--users", min=1, help="number of users"),
    days: int = typer.Option(30, "--days", min=1, max=32000, help="simulated days"),
    seed: int = typer.Option(0, "--seed", min=0, help="world seed"),
    policies: str = typer.Option(",".join(("random", "ctr_greedy", "watch_time", "satisfaction_aware:0.5",
                                           "satisfaction_aware:1", "satisfaction_aware:2")),
                                 "--policies", help="comma-separated oracle policies"),
    sets: list[str] = typer.Option([], "--set", help="override a simulator parameter: NAME=VALUE (repeatable)"),
    preset: str = typer.Option(DEFAULT_PRESET, "--preset", help=PRESET_HELP),
    easy: bool = typer.Option(False, "--easy", help="the easy world: same as --preset easy"),
    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON"),
) -> None:
    """Run the oracle policies (hidden truth) on copies of one world: the proxy vs north-star table."""
    from .compare import compare_policies
    from .params import WorldParams

    params = WorldParams.build(_preset(preset, easy), **{**_parse_sets(sets), "n_users": users})
    rows = compare_policies(params, seed, days, [p.strip() for p in policies.split(",") if p.strip()])
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    cols = {"policy": "policy", "day0_ctr": "CTR d0", "day0_minutes_per_dau": "min/DAU d0", "ctr": "CTR",
            "completion": "compl.", "return_rate": "return", "dau": "DAU", "dau_late": "DAU late",
            "minutes_per_user": "min/user", "satisfaction_end": "sat. end"}
    table = Table(*cols.values(), title=f"{_preset(preset, easy)} world, {users} users, {days} days, seed {seed} "
                                        "(DAU late: last third, <= 10 days)")
    for r in rows:
        table.add_row(*[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols])
    Console(width=max(Console().width, 130)).print(table)


def _print(summary: dict, per_day: bool, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    o = summary["overall"]
    console.print(
        f"[bold]{title}[/bold]  policy={summary.get('logging_policy')} seed={summary.get('seed')}  "
        f"users={o['users']} days={o['days']} impressions={o['impressions']:,}\n"
        f"CTR {o['ctr']:.3f}  completion {o['completion']:.3f}  DAU {o['dau_frac']:.3f}  "
        f"minutes/DAU {o['minutes_per_dau']:.2f}  next-day return {o['return_rate']:.3f}  "
        f"likes/click {o['like_rate']:.3f}  skips/click {o['skip_rate']:.3f}"
    )
    if not per_day:
        return
    table = Table("day", "DAU", "DAU frac", "CTR", "completion", "minutes/DAU", "return")
    for r in summary["per_day"]:
        table.add_row(str(r["day"]), str(r["dau"]), f"{r['dau_frac']:.3f}", f"{r['ctr']:.3f}",
                      f"{r['completion']:.3f}", f"{r['minutes_per_dau']:.2f}", f"{r['return_rate']:.3f}")
    console.print(table)
