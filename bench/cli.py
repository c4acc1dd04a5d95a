"""`cambrian bench NAME`: each benchmark compares against a baseline measured in the same run.

A benchmark is a module in cambrian.bench exposing `run(quick: bool) -> dict`; the dict has at least
`name`, `ratio` (the headline ratio), `ratio_meaning` and `command`. Results are written to
bench/results/NAME.json so the README can cite them.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import typer

BENCHMARKS = {
    "search": "cambrian.bench.search",
    "decision": "cambrian.bench.decision",
    "throughput": "cambrian.bench.throughput",
    "serving": "cambrian.bench.serving",
    "operator": "cambrian.bench.operator_scale",
    "training": "cambrian.bench.training",
    "fidelity": "cambrian.bench.fidelity",
    "scaling": "cambrian.bench.scaling",
    "datasource": "cambrian.bench.datasource",
}

app = typer.Typer(help="Run a benchmark; prints its ratio against a baseline measured in the same run.",
                  add_completion=False, no_args_is_help=True)


@app.command("run")
def run(
    name: str = typer.Argument(..., help=f"one of: {', '.join(BENCHMARKS)}"),
    quick: bool = typer.Option(False, "--quick", help="smaller sizes, for CI"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    out: Path = typer.Option(Path("bench/results"), help="folder for NAME.json"),
) -> None:
    """Run benchmark NAME and record its result."""
    if name not in BENCHMARKS:
        raise typer.BadParameter(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    result = importlib.import_module(BENCHMARKS[name]).run(quick=quick)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
    else:
        typer.echo(f"{name}: ratio {result['ratio']:.3g} ({result['ratio_meaning']})")


@app.command("list")
def list_benchmarks() -> None:
    """List the benchmarks."""
    for name, module in BENCHMARKS.items():
        typer.echo(f"{name}\t{module}")
