"""Errors a user can act on. The CLI prints the message and the hint and exits with the code."""

from __future__ import annotations


class CambrianError(Exception):
    """Base class: a clear message, an optional hint on what to do, and a meaningful exit code."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class ConfigError(CambrianError):
    """A configuration file, delta or spec is malformed or invalid (exit code 2, like a usage error)."""

    exit_code = 2


class GateError(CambrianError):
    """A candidate failed the validation gate before training (exit code 3)."""

    exit_code = 3

    def __init__(self, stage: str, message: str, hint: str | None = None):
        super().__init__(f"validation gate failed at {stage}: {message}", hint)
        self.stage = stage
        self.reason = message


class TrainingError(CambrianError):
    """Training started but did not produce a usable model (exit code 4)."""

    exit_code = 4


class BudgetExhausted(CambrianError):
    """A budget (tokens, dollars, training seconds, evaluations) ran out; the run stopped cleanly (exit 5)."""

    exit_code = 5


class MissingExtra(CambrianError):
    """The command needs an optional dependency group (`pip install 'cambrian[EXTRA]'`) that is not
    installed (exit code 1: the installation, not the input, is at fault)."""


def one_line(exc: BaseException) -> str:
    """An exception as one line for an error message: a YAML error as its problem and position (PyYAML's
    own text spans several lines and starts with the context, "while parsing a flow sequence")."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem:
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"{problem}{where}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
