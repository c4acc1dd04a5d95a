"""`cambrian data check SOURCE`: validate a data source against its declaration before any training;
`cambrian data fetch SOURCE --out DIR`: the checked snapshot that training reads (trainer/fetch.py)."""

from __future__ import annotations

import json

import typer

from cambrian.errors import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Check a data source against its declaration, or fetch a checked snapshot of it.")

SCHEMA_HELP = "the declaration: a YAML file (README: Bring your own data) or a built-in name (world, movielens-100k)"


@app.command()
def check(
    source: str = typer.Argument(..., help="a folder of Parquet, s3://bucket/prefix, or postgresql://user@host:port/db"),
    schema: str = typer.Option("world", "--schema", help=SCHEMA_HELP),
    batch_rows: int = typer.Option(65_536, "--batch-rows", min=1, help="rows per streamed batch (bounds memory)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Missing or mistyped columns, null ids, days without rows, labels out of range, future-day leakage:
    one line per problem naming table and column; exit code 2 when there is any."""
    from cambrian.trainer.datacheck import check_source
    from cambrian.trainer.schema import load_schema
    from cambrian.trainer.sources import close, open_source

    declared = load_schema(schema)
    opened = open_source(source)
    try:
        report = check_source(declared, opened, batch_rows)
    finally:
        close(opened)
    if as_json:
        typer.echo(json.dumps({**report.to_dict(), **({} if report.ok else {"exit_code": ConfigError.exit_code})}))
    else:
        for problem in report.problems:
            typer.echo(str(problem), err=True)
        if report.ok:
            rows = ", ".join(f"{k} {t.rows} rows" for k, t in report.tables.items())
            typer.echo(f"{report.source}: passes the {declared.name} declaration ({rows})")
    if not report.ok:
        raise ConfigError(f"{report.source} fails the {declared.name} declaration: {len(report.problems)} problem(s)")


@app.command()
def fetch(
    source: str = typer.Argument(..., help="a folder of Parquet, s3://bucket/prefix, or postgresql://user@host:port/db"),
    out: str = typer.Option(..., "--out", help="the data directory to write (kept as it is when already complete)"),
    batch_rows: int = typer.Option(65_536, "--batch-rows", min=1, help="rows per streamed batch (bounds memory)"),
    schema: str = typer.Option("world", "--schema", help=SCHEMA_HELP),
) -> None:
    """Copy the declared tables of a source into a data directory, checked: the snapshot every candidate of an
    Evolution trains on; its world.json names the declaration (a YAML one is copied beside it), so training reads
    it through that. Credentials come from the environment only."""
    from cambrian.trainer.fetch import fetch as fetch_source
    from cambrian.trainer.schema import load_schema

    meta = fetch_source(source, out, load_schema(schema), batch_rows=batch_rows)
    rows = ", ".join(f"{k} {n} rows" for k, n in meta.get("rows", {}).items())
    typer.echo(f"{out}: a snapshot of {meta.get('source') or source}" + (f" ({rows})" if rows else ""))
