"""`cambrian serve | route` (and `python -m cambrian.online.cli collect` for the collector); `cambrian rollout`
is operator/local_cli.py."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from cambrian.errors import ConfigError


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the timeline


ADMIN_PORT = 9090  # the default admin port of `serve` and `route`
# The admin port (metrics; the router's weights and flush) is a port of its own: the serving port, the one a
# Service and a Gateway forward users to, serves nothing else than /rank and /healthz.
_ADMIN_PORT = typer.Option(ADMIN_PORT, "--admin-port", min=0, max=65535,
                           help="admin port: /metrics (the router's /weights and /flush too); 0: any free port")
_ADMIN_HOST = typer.Option("127.0.0.1", "--admin-host", help="admin address (0.0.0.0 where Prometheus scrapes it)")
_ADMIN_PORT_FILE = typer.Option(None, "--admin-port-file", help="write the bound admin port here once listening")


def _admin(app, host: str, port: int, port_file: Optional[Path], serving_port: int):
    from cambrian.online.runner import Admin

    if port and port == serving_port:
        raise typer.BadParameter(f"{port} is --port too; the admin port must be another", param_hint="--admin-port")
    return Admin(app, host, port, str(port_file) if port_file else None)


def serve(
    bundle: Path = typer.Option(..., "--bundle", help="model bundle directory (from `cambrian train`)"),
    arm: str = typer.Option(..., "--arm", help="arm name used in metric labels"),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="port (0: any free port)"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port_file: Optional[Path] = typer.Option(None, "--port-file", help="write the bound port here once listening"),
    admin_port: int = _ADMIN_PORT,
    admin_host: str = _ADMIN_HOST,
    admin_port_file: Optional[Path] = _ADMIN_PORT_FILE,
    sandbox: str = typer.Option("auto", "--sandbox", envvar="CAMBRIAN_SANDBOX",
                                help="where the bundle's program runs: auto/bwrap (a bubblewrap sandbox; refuses "
                                     "to serve without one) or none (a plain child process, only where an outer "
                                     "boundary such as the server's pod contains it)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve a model bundle: POST /rank, GET /healthz; GET /metrics on the admin port."""
    from cambrian.online.runner import serve_forever
    from cambrian.online.server import bundle_server

    _logging(verbose)
    if sandbox not in ("auto", "bwrap", "none"):
        raise ConfigError(f"--sandbox must be auto, bwrap or none, got {sandbox!r}")
    server = bundle_server(str(bundle), arm, sandbox)
    serve_forever(server.app(), host, port, str(port_file) if port_file else None,
                  admin=_admin(server.admin_app(), admin_host, admin_port, admin_port_file, port))


def route(
    config: Path = typer.Option(..., "--config", help="router config (YAML or JSON): experiment, salt, arms, collector"),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="port (0: any free port)"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port_file: Optional[Path] = typer.Option(None, "--port-file", help="write the bound port here once listening"),
    admin_port: int = _ADMIN_PORT,
    admin_host: str = _ADMIN_HOST,
    admin_port_file: Optional[Path] = _ADMIN_PORT_FILE,
    read_only_config: bool = typer.Option(
        False, "--read-only-config", help="the config file is someone else's (a mounted ConfigMap): weights change "
        "only there, and the admin port serves no POST /weights"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the user-sticky A/B router: POST /rank on --port; edit the config file, or POST /weights on the admin
    port, to change weights live."""
    from cambrian.online.router import Router, RouterConfig
    from cambrian.online.runner import serve_forever

    _logging(verbose)
    try:
        cfg = RouterConfig.load(config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    router = Router(cfg, config_path=str(config), read_only=read_only_config)
    serve_forever(router.app(), host, port, str(port_file) if port_file else None,
                  admin=_admin(router.admin_app(), admin_host, admin_port, admin_port_file, port))


def collect(
    db: Path = typer.Option(..., "--db", help="SQLite file (created if missing; reused after a restart)"),
    port: int = typer.Option(8080, "--port", min=0, max=65535),
    host: str = typer.Option("127.0.0.1", "--host"),
    port_file: Optional[Path] = typer.Option(None, "--port-file"),
    pre_days: int = typer.Option(14, "--pre-days", min=1, help="CUPED pre-period length in days"),
    active_window: int = typer.Option(7, "--active-window", min=1, help="active_days counts days f+1..f+N"),
    warehouse_url: Optional[str] = typer.Option(
        None, "--warehouse-url", envvar="CAMBRIAN_WAREHOUSE_URL", show_default=False,
        help="land the exposure log and closed days in this warehouse for SQL-defined metrics "
             "(postgresql://user@host/db, duckdb:///file; the password from PGPASSWORD)"),
    warehouse_metrics: Optional[Path] = typer.Option(
        None, "--warehouse-metrics", help="YAML list of {name, kind: mean|ratio, sql}: metrics computed in the "
        "warehouse from its own tables and the exposure log, published beside the built-in ones"),
    warehouse_rollout_table: Optional[str] = typer.Option(
        None, "--warehouse-rollout-table", help="a table whose rows each belong to one rollout (column `rollout`; "
        "local mode's simulated users' days): each experiment's SQL metrics read only its own rows of it"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the event collector."""
    from cambrian.online.aggregate import AggregationSettings
    from cambrian.online.collector import Collector, Store
    from cambrian.online.runner import serve_forever

    _logging(verbose)
    metrics = []
    if warehouse_metrics is not None:
        from cambrian.online.warehouse import load_metrics

        if not warehouse_url:
            raise typer.BadParameter("needs --warehouse-url (or CAMBRIAN_WAREHOUSE_URL)", param_hint="--warehouse-metrics")
        metrics = load_metrics(warehouse_metrics)
    store = Store(db, AggregationSettings(pre_days=pre_days, active_window=active_window))
    collector = Collector(store, warehouse_url=warehouse_url, warehouse_metrics=metrics,
                          warehouse_rollout_table=warehouse_rollout_table)
    serve_forever(collector.app(), host, port, str(port_file) if port_file else None)


app = typer.Typer(add_completion=False, no_args_is_help=True, help="Cambrian online services.")
for _fn in (serve, route, collect):
    app.command(_fn.__name__)(_fn)

if __name__ == "__main__":
    from cambrian.errors import CambrianError

    try:
        app()
    except CambrianError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(exc.exit_code) from None
