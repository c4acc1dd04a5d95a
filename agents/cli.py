"""`cambrian journal`: a run's hypotheses, scores and verdicts as a table (`cambrian evolve` is
operator/local_cli.py). It reads what `cambrian report` reads (cambrian/report.py load_run): the --dir of
`cambrian evolve -f` / `cambrian demo`, or a journal.jsonl folder of the previous engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

PHASE_STYLE = {"Scored": "green", "Failed": "red", "Rejected": "yellow", "Training": "cyan", "Proposed": "white"}


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) else ("" if x is None else str(x))


def journal_rows(journal) -> list[dict[str, Any]]:
    from cambrian.agents.personas import PERSONAS

    rows = []
    for h in journal.hypotheses:
        p = PERSONAS.get(h.persona)
        # the metric it was judged on (the Evolution's spec.objective.offline), else its persona's default
        metric = h.primary_metric or (p.metric if p else ("val_loss" if "val_loss" in h.offline else None))
        score = h.offline.get(metric) if metric else None
        rows.append({
            "id": h.id, "generation": h.generation, "persona": h.persona, "category": h.category, "phase": h.phase,
            "verdict": h.verdict, "metric": metric, "score": score.mean if score else None,
            "std": score.std if score else None, "seeds": score.n if score else 0, "gain": h.gain,
            "noise_floor": h.noise_floor, "delta": h.delta_summary or ("(baseline)" if h.id == "baseline" else ""),
            "reason": h.reason, "online": h.online or None, "origin": h.origin,
        })  # fmt: skip
    return rows


def journal_cells(journal, limit: int | None = None):
    """(columns, rows, styles) of the journal table; `journal` is anything with `.hypotheses` (a report Run)."""
    from cambrian.tables import Column

    columns = [Column("id"), Column("persona"), Column("cat"), Column("phase"), Column("verdict"), Column("metric"),
               Column("score ± std (n)"), Column("gain / floor"), Column("delta", wide=True),
               Column("why", wide=True)]
    rows, styles = [], []
    for r in journal_rows(journal)[-limit:] if limit else journal_rows(journal):
        style = PHASE_STYLE.get(r["phase"], "")
        if r["verdict"] == "better":
            style = "bold green"
        score = f"{_fmt(r['score'])} ± {_fmt(r['std'])} ({r['seeds']})" if r["score"] is not None else ""
        gain = f"{_fmt(r['gain'])} / {_fmt(r['noise_floor'])}" if r["gain"] is not None else ""
        rows.append([r["id"], r["persona"], r["category"], r["phase"], r["verdict"] or "", r["metric"] or "", score,
                     gain, r["delta"], (r["reason"] or "")[:240]])
        styles.append(style)
    return columns, rows, styles


def print_journal(journal, title: str, console=None) -> None:
    from cambrian.tables import print_table

    columns, rows, styles = journal_cells(journal)
    print_table(columns, rows, title=title, styles=styles, console=console)


def journal(
    run_dir: Path = typer.Argument(..., help="run directory: the --dir of `cambrian evolve -f` (or a journal.jsonl "
                                             "folder of the previous engine)"),
    as_json: bool = typer.Option(False, "--json", help="print the hypotheses as JSON"),
    persona: Optional[str] = typer.Option(None, help="only this persona"),
) -> None:
    """Print the experiment journal: every hypothesis, its score, verdict and why it won or lost."""
    from rich.console import Console

    from cambrian.report import load_run

    run = load_run(run_dir)
    if persona:
        run.hypotheses = [h for h in run.hypotheses if h.persona in (persona, "baseline")]
    if as_json:
        u = run.usage
        typer.echo(json.dumps({
            "run_dir": str(run.path),
            "baseline": {k: v.model_dump() for k, v in run.baseline.items()},
            "stop_reason": run.stop_reason,
            "spend": {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens, "dollars": u.dollars,
                      "train_seconds": run.train_seconds, "evaluations": run.evaluations},
            "hypotheses": [h.model_dump(mode="json") for h in run.hypotheses],
        }, indent=2, sort_keys=True))  # fmt: skip
        return
    con = Console()
    print_journal(run, title=f"Experiment journal — {run.path}", console=con)
    if run.stop_reason:
        con.print(f"stopped: {run.stop_reason}")
