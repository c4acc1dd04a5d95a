"""`cambrian journal` (show a run's journal) and the previous engine's live view (cambrian demo uses it until
it runs on the LocalDriver; `cambrian evolve` is operator/local_cli.py)."""

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
        metric = p.metric if p else ("val_loss" if "val_loss" in h.offline else None)
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
    """(columns, rows, styles) of the journal table, shared by the live view, `journal` and the demo."""
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


def journal_table(journal, title: str = "Experiment journal", limit: int | None = None):
    from cambrian.tables import rich_table

    from rich.console import Console

    columns, rows, styles = journal_cells(journal, limit)
    return rich_table(columns, rows, title=title, styles=styles, width=Console().width)


def print_journal(journal, title: str, console=None) -> None:
    from cambrian.tables import print_table

    columns, rows, styles = journal_cells(journal)
    print_table(columns, rows, title=title, styles=styles, console=console)


def _run_live(cfg):
    from rich.console import Console, Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cambrian.agents.evolve import Evolution

    if not Console().is_terminal:  # a file or pipe: no live display, the complete journal once at the end
        result = Evolution(cfg).run()
        print_journal(result_journal(result), title=f"journal — {result.run_dir}")
        return result
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[status]}"))
    gens = progress.add_task("generations", total=cfg.generations, status="")
    evals = progress.add_task("evaluations", total=cfg.budgets.max_evaluations, status="")
    holder: dict[str, Any] = {}

    def render():
        evo = holder.get("evo")
        parts = [progress]
        if evo is not None:
            parts.append(journal_table(evo.journal, title=f"journal — {evo.run_dir}", limit=18))
        return Group(*parts)

    with Live(render(), refresh_per_second=2, transient=False) as live:

        def reporter(kind: str, data: dict) -> None:
            evo = holder.get("evo")
            if evo is None:
                return
            st = evo.journal.state
            progress.update(gens, completed=len(st.generations_done),
                            status=f"gen {data.get('generation', '')}" if kind == "generation" else "")
            spend = evo.spend()
            progress.update(evals, completed=st.evaluations,
                            status=f"{spend.tokens} tok ${spend.dollars:.3f} {spend.train_seconds:.0f}s train")
            live.update(render())

        evo = Evolution(cfg, reporter=reporter)
        holder["evo"] = evo
        live.update(render())
        result = evo.run()
        live.update(render())
    return result


def result_journal(result):
    from cambrian.agents.journal import Journal

    return Journal(result.run_dir, readonly=True)


def _print_summary(result) -> None:
    from rich.console import Console

    con = Console()
    con.print(f"[bold]stopped:[/bold] {result.stop_reason}")
    base = ", ".join(f"{k} {v.mean:.4g}±{v.std:.2g}" for k, v in result.baseline.items())
    con.print(f"baseline ({next(iter(result.baseline.values())).n if result.baseline else 0} seeds): {base}")
    if result.winners:
        for h in result.winners:
            con.print(f"[bold green]better[/bold green] {h.id} ({h.persona}) {h.delta_summary}: {h.reason}")
    else:
        con.print("no hypothesis beat the baseline beyond the noise floor")
    s = result.spend
    con.print(f"spend: {s.evaluations} evaluations, {s.train_seconds:.0f}s training, {s.tokens} tokens, ${s.dollars:.4f}")
    con.print(f"journal: cambrian journal {result.run_dir}")


def journal(
    run_dir: Path = typer.Argument(..., help="run directory of `cambrian evolve` (holds journal.jsonl)"),
    as_json: bool = typer.Option(False, "--json", help="print the hypotheses as JSON"),
    persona: Optional[str] = typer.Option(None, help="only this persona"),
) -> None:
    """Print the experiment journal: every hypothesis, its score, verdict and why it won or lost."""
    from rich.console import Console

    from cambrian.agents.journal import Journal

    j = Journal(run_dir, readonly=True)
    if persona:
        j.state.hypotheses = {k: h for k, h in j.state.hypotheses.items() if h.persona in (persona, "baseline")}
    if as_json:
        st = j.state
        typer.echo(json.dumps({
            "run_dir": str(j.run_dir),
            "baseline": {k: v.model_dump() for k, v in st.baseline.items()},
            "stop_reason": st.stop_reason,
            "spend": {"input_tokens": st.usage.input_tokens, "output_tokens": st.usage.output_tokens,
                      "dollars": st.usage.dollars, "train_seconds": st.train_seconds, "evaluations": st.evaluations},
            "hypotheses": [h.model_dump(mode="json") for h in j.hypotheses],
        }, indent=2, sort_keys=True))  # fmt: skip
        return
    con = Console()
    print_journal(j, title=f"Experiment journal — {j.run_dir}", console=con)
    if j.state.stop_reason:
        con.print(f"stopped: {j.state.stop_reason}")
