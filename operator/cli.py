"""`cambrian operator run`: the Kubernetes operator (kopf) with Cambrian's handlers."""

from __future__ import annotations

import os
from typing import Optional

import typer

app = typer.Typer(add_completion=False, help="Run the Kubernetes operator.", no_args_is_help=True)


@app.command()
def run(
    namespace: Optional[list[str]] = typer.Option(None, "--namespace", "-n",
                                                  help="namespace(s) to watch (repeatable); default: all"),
    prometheus_url: Optional[str] = typer.Option(None, "--prometheus-url", envvar="CAMBRIAN_PROMETHEUS_URL",
                                                 help="Prometheus HTTP API the rollout readouts query"),
    promql_url: Optional[str] = typer.Option(None, "--promql-url", envvar="CAMBRIAN_PROMQL_URL",
                                             help="the Prometheus holding your own series, which PromQL metrics and "
                                                  "guardrail queries run against (default: --prometheus-url)"),
    prometheus_timeout: float = typer.Option(5.0, "--prometheus-timeout", min=0.1, envvar="CAMBRIAN_PROMETHEUS_TIMEOUT",
                                             help="seconds a Prometheus call (and its query evaluation) may take"),
    interval: float = typer.Option(15.0, "--interval", min=1.0, envvar="CAMBRIAN_OPERATOR_INTERVAL",
                                   help="seconds between timer reconciles of Evolutions (and their Hypotheses' sweep) and running Rollouts; Hypotheses are event-driven"),
    liveness: Optional[str] = typer.Option(None, "--liveness", help="e.g. http://0.0.0.0:8080/healthz"),
    peering: Optional[str] = typer.Option(
        None, "--peering", envvar="CAMBRIAN_OPERATOR_PEERING",
        help="kopf peering object for leader election between replicas (ClusterKopfPeering when cluster-wide, "
             "KopfPeering in each --namespace); default: standalone, one replica only"),
    priority: Optional[int] = typer.Option(
        None, "--priority", min=1, envvar="CAMBRIAN_OPERATOR_PRIORITY",
        help="peering priority: the live replica with the highest one works, the others wait; default: random, "
             "so identical replicas never tie (kopf pauses every replica on a tie)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Watch Evolutions, Hypotheses and Rollouts and reconcile them (needs a kubeconfig or in-cluster config)."""
    import asyncio
    import logging

    # Read by operator/handlers.py at import time and in its startup handler.
    os.environ["CAMBRIAN_OPERATOR_INTERVAL"] = str(interval)
    if prometheus_url:
        os.environ["CAMBRIAN_PROMETHEUS_URL"] = prometheus_url
    if promql_url:
        os.environ["CAMBRIAN_PROMQL_URL"] = promql_url
    os.environ["CAMBRIAN_PROMETHEUS_TIMEOUT"] = str(prometheus_timeout)

    import kopf

    from cambrian.operator import handlers  # registers the handlers

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cambrian.operator import heap

    heap.limit_arenas()  # before kopf and the handlers start their threads
    heap.keep_trimming()
    asyncio.run(
        kopf.operator(
            standalone=peering is None,
            peering_name=peering,
            priority=election_priority(priority) if peering else None,
            namespaces=namespace or (),  # () with clusterwide: kopf iterates it
            clusterwide=not namespace,
            liveness_endpoint=liveness,
            memories=handlers.EventOnlyMemories(),  # no per-object record for Hypotheses, Jobs and Pods
        )
    )


def election_priority(given: Optional[int]) -> int:
    """The peering priority: the given one, else a random one. kopf's peering pauses every peer that sees
    a live peer of the same priority, so the replicas of one Deployment (same arguments) must differ."""
    import secrets

    return given if given is not None else 1 + secrets.randbelow(2**31 - 1)


@app.command()
def crds(out: Optional[str] = typer.Option(None, "--out", help="write here instead of printing")) -> None:
    """Print (or write) the CustomResourceDefinitions, generated from the models."""
    from pathlib import Path

    from cambrian.operator import crdgen

    if out:
        from cambrian import inputs

        for p in crdgen.write(inputs.output_dir(Path(out))):
            typer.echo(p)
    else:
        typer.echo("---\n".join(crdgen.render(k) for k in crdgen.NAMES))
