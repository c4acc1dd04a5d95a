"""`cambrian bench NAME`: each benchmark compares against a baseline measured in the same run.

A benchmark is a module in cambrian.bench exposing `run(quick: bool) -> dict`; the dict has at least
`name`, `ratio` (the headline ratio), `ratio_meaning` and `command`. Results are written to
bench/results/NAME.json so the README can cite them.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import typer

BENCHMARKS = {
    "search": "cambrian.bench.search",
    "search-plugin": "cambrian.bench.search_plugin",
    "decision": "cambrian.bench.decision",
    "decision-world": "cambrian.bench.decision_world",
    "throughput": "cambrian.bench.throughput",
    "serving": "cambrian.bench.serving",
    "operator": "cambrian.bench.operator_scale",
    "training": "cambrian.bench.training",
    "fidelity": "cambrian.bench.fidelity",
    "scaling": "cambrian.bench.scaling",
    "datasource": "cambrian.bench.datasource",
    "multifidelity": "cambrian.bench.multifidelity",
    "trap": "cambrian.bench.trap",
    "streaming": "cambrian.bench.streaming",
}

app = typer.Typer(help="Run a benchmark; prints its ratio against a baseline measured in the same run.",
                  add_completion=False, no_args_is_help=True)


@app.command("run")
def run(
    name: str = typer.Argument(..., help=f"one of: {', '.join(BENCHMARKS)}"),
    quick: bool = typer.Option(False, "--quick", help="smaller sizes, for CI"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    out: Path = typer.Option(Path("bench/results"), help="folder for NAME.json"),
    hypotheses: int = typer.Option(None, "--hypotheses", min=1, help="operator: Hypotheses to create (default 1000)"),
    evolutions: int = typer.Option(None, "--evolutions", min=1, help="operator: Evolutions they are spread over"),
    users: int = typer.Option(None, "--users", min=100, help="trap, decision-world: simulated users instead of the size's own"),
    online_days: int = typer.Option(None, "--online-days", min=2, max=60,
                                    help="trap: each Rollout's maxDuration in days (and the truth's horizon at least "
                                         "as long) instead of the size's own"),
    window: float = typer.Option(None, "--window", min=1,
                                 help="operator: stop following an operator once every object has its first phase and "
                                      "this many seconds passed since the first create (else: until all are steady)"),
    arms: str = typer.Option(None, "--arms", help="decision-world: comma-separated arms to simulate (e.g. aa)"),
    sims: int = typer.Option(None, "--sims", min=10, help="decision-world: simulated experiments per arm"),
    durations: str = typer.Option(None, "--durations", help="decision-world: also compare the design at these "
                                                            "maxDurations in days (comma-separated, e.g. 10,14,21)"),
    world: str = typer.Option(None, "--world", help="fidelity, trap, decision-world: the world preset and the Φ0 its product "
                                                    "runs (calibrated: a click model; hooked and wary: a watch-time model)"),
    seeds: str = typer.Option(None, "--seeds", help="multifidelity, search, search-plugin: comma-separated seeds "
                                                    "instead of the default ones (e.g. held-out seeds 5,6,7,8,9); "
                                                    "fidelity: run these world seeds and report them together"),
    replay: Path = typer.Option(None, "--replay", exists=True, dir_okay=False,
                                help="fidelity: re-read a stored result's offline half with this code (worlds and "
                                     "candidates trained again, its online effects kept, every recorded reading "
                                     "that comes back different listed)"),
) -> None:
    """Run benchmark NAME and record its result (NAME.json; with sizes, NAME-<size>-<size>.json)."""
    if name not in BENCHMARKS:
        raise typer.BadParameter(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    fn = importlib.import_module(BENCHMARKS[name]).run
    sizes = {k: v for k, v in (("hypotheses", hypotheses), ("evolutions", evolutions), ("users", users),
                               ("online_days", online_days)) if v is not None}
    options = {k: v for k, v in (("window", window), ("sims", sims), ("world", world),
                                 ("arms", tuple(arms.split(",")) if arms else None),
                                 ("seeds", _seeds(seeds) if seeds else None),
                                 ("durations", _days(durations) if durations else None),
                                 ("replay", replay)) if v is not None}
    for k in options:
        if k not in inspect.signature(fn).parameters:
            raise typer.BadParameter(f"benchmark {name!r} takes no --{k}")
    unknown = [k for k in sizes if k not in inspect.signature(fn).parameters]
    if unknown:
        raise typer.BadParameter(f"benchmark {name!r} takes no --{unknown[0].replace('_', '-')}")
    if sizes.get("evolutions", 1) > sizes.get("hypotheses", sizes.get("evolutions", 1)):
        raise typer.BadParameter("--evolutions must not exceed --hypotheses")
    result = fn(quick=quick, **sizes, **options)
    out.mkdir(parents=True, exist_ok=True)
    stem = "-".join([name, *(f"{v}{k[0]}" for k, v in sizes.items()),   # e.g. operator-10000h-10e, trap-21o
                     *([arms.replace(",", "-").replace(":", "_")] if arms else []),   # decision-world-aa
                     *([world] if world else []),  # fidelity-hooked
                     *(["quick"] if quick and seeds else []),  # fidelity-quick-seeds0-1
                     *([f"seeds{'-'.join(map(str, options['seeds']))}"] if seeds else []),  # multifidelity-seeds5-6
                     *([f"durations{'-'.join(map(str, sorted(options['durations'])))}"] if durations else []),
                     *([f"replay-{replay.stem}"] if replay else [])])  # fidelity-replay-fidelity-wary-seeds0-1
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
    else:
        typer.echo(f"{name}: ratio {result['ratio']:.3g} ({result['ratio_meaning']})")


def _distinct_ints(option: str, text: str, lo: int, hi: int | None, shape: str, kinds: str) -> tuple[int, ...]:
    """A comma-separated list of distinct integers in [lo, hi] for `--option`, or a BadParameter naming it."""
    try:
        out = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"--{option} {text!r}: expected {shape}") from None
    if not out or any(v < lo or (hi is not None and v > hi) for v in out) or len(set(out)) != len(out):
        raise typer.BadParameter(f"--{option} {text!r}: expected distinct {kinds}")
    return out


def _seeds(text: str) -> tuple[int, ...]:
    return _distinct_ints("seeds", text, 0, None, "comma-separated integers, e.g. 5,6,7", "non-negative integers")


def _days(text: str) -> tuple[int, ...]:
    return _distinct_ints("durations", text, 2, 60, "comma-separated days, e.g. 10,14,21", "days from 2 to 60")


@app.command("list")
def list_benchmarks() -> None:
    """List the benchmarks."""
    for name, module in BENCHMARKS.items():
        typer.echo(f"{name}\t{module}")
