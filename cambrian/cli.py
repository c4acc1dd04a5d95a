"""The `cambrian` command line.

Sub-commands are loaded lazily from the modules that own them, so `cambrian --help` stays fast
(torch, kopf and friends are imported only by the command that needs them). Each entry maps a
command name to "module:attribute"; the attribute is a typer.Typer app or a plain function that
typer turns into a command.
"""

from __future__ import annotations

import importlib
import sys

import click
import typer

# name -> (import path, one-line help shown by `cambrian --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "world": ("cambrian.world.cli:app", "Generate and inspect the simulated world."),
    "train": ("cambrian.trainer.cli:train", "Train one configuration (optionally with a delta)."),
    "gate": ("cambrian.trainer.cli:gate", "Run only the validation gate on a config and delta."),
    "evolve": ("cambrian.operator.agents.cli:evolve", "Run the offline loop locally."),
    "journal": ("cambrian.operator.agents.cli:journal", "Show the experiment journal."),
    "serve": ("cambrian.online.cli:serve", "Serve a model bundle over HTTP."),
    "route": ("cambrian.online.cli:route", "Run the user-sticky A/B router."),
    "rollout": ("cambrian.online.cli:rollout", "Run one online experiment locally."),
    "operator": ("cambrian.operator.cli:app", "Run the Kubernetes operator."),
    "demo": ("cambrian.demo:demo", "Run the whole loop on the built-in simulated world."),
    "report": ("cambrian.report:report", "Write an HTML report with plots for a run."),
    "dashboards": ("cambrian.dashboards:dashboards", "Generate the Grafana dashboards."),
    "bench": ("cambrian.bench.cli:app", "Run a benchmark and print its ratio."),
}


def _load(path: str) -> click.Command:
    module_name, attr = path.split(":")
    target = getattr(importlib.import_module(module_name), attr)
    if isinstance(target, typer.Typer):
        return typer.main.get_command(target)
    if isinstance(target, click.Command):
        return target
    sub = typer.Typer(add_completion=False)
    sub.command()(target)
    return typer.main.get_command(sub)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        command = _load(COMMANDS[name][0])
        command.name = name
        if not command.help:
            command.help = COMMANDS[name][1]
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Use the static help lines so that --help imports nothing heavy.
        rows = [(name, COMMANDS[name][1]) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cambrian")
def cli() -> None:
    """Cambrian: LLM agents evolve a ranking model offline, A/B-test it online and launch winners."""


def main() -> None:
    from cambrian.errors import CambrianError

    try:
        cli(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("Interrupted; progress so far is saved and the command can be re-run to resume.", err=True)
        sys.exit(130)
    except CambrianError as exc:
        click.echo(f"error: {exc}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
