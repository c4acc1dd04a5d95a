"""`cambrian report RUN_DIR [--out DIR]`: an HTML report with plots for one run.

A run directory is the `--dir` of `cambrian evolve -f` (and `cambrian demo`'s `evolve/`): the operator's
objects with their status, read by report_objects.py into the same Run. The old `--config` engine's runs
are read here: journal.jsonl, evolve-config.json, candidates/, optionally holding online experiments:
any sub-folder with the files `cambrian rollout --config` writes (result.json and/or timeline.json).
Extra rollout folders can be named with --rollout.

A treatment arm is tied to a hypothesis when the arm is named after the hypothesis id, when the
rollout folder holds its spec (rollout.yaml / spec.yaml / spec.json, a RolloutSpec) whose treatment
bundle lies under candidates/<id>/, or when the hypothesis' journal `online` entry names the rollout
and arm ({"rollout": ..., "arm": ...}).

The module is split in three: loading (I/O, here), tables (pure, here), plots (report_plots.py).
Partial runs work: sections without data say why instead of showing a plot.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import typer

from cambrian import inputs
from cambrian.errors import ConfigError

REPORT_FILE = "report.html"
SPEC_FILES = ("rollout.yaml", "rollout.json", "spec.yaml", "spec.json")
_SKIP_DIRS = {"candidates", "services", "prometheus", "data", "__pycache__", ".git"}


# ============================================================================================ loading
@dataclass
class Rollout:
    name: str
    path: Path
    result: dict[str, Any] | None
    timeline: list[dict[str, Any]]
    spec: dict[str, Any] | None
    arm_hypothesis: dict[str, str] = field(default_factory=dict)  # treatment arm -> hypothesis id
    predicted: dict[str, dict[str, Any]] = field(default_factory=dict)  # hypothesis id -> {mean, sd, by} at launch

    @property
    def control(self) -> str:
        return (self.spec or {}).get("control_name", "control")

    @property
    def north_star(self) -> str:
        """From the spec when the folder keeps it; else the one metric with sequential-test state in the last
        decision that is not a guardrail (the state is keyed "arm/metric")."""
        if (self.spec or {}).get("north_star"):
            return self.spec["north_star"]
        last = (self.result or {}).get("last_decision") or {}
        guards = {g.get("metric") for d in (last.get("arms") or {}).values() for g in d.get("guardrails") or []}
        tested = {k.split("/", 1)[1] for k in (last.get("state") or {}) if "/" in k} - guards
        return tested.pop() if len(tested) == 1 else "north star"

    @property
    def readouts(self) -> list[dict[str, Any]]:
        return [e for e in self.timeline if e.get("kind") == "readout"]


@dataclass
class Run:
    path: Path
    hypotheses: list[Any]  # cambrian.agents.journal.Hypothesis
    baseline: dict[str, Any]  # metric -> Score
    usage: Any
    train_seconds: float
    evaluations: int
    generations_done: list[int]
    stop_reason: str | None
    config: dict[str, Any]
    rollouts: list[Rollout]
    champion: tuple[str, str] | None = None  # (champion, why) as the Evolution decided it, for a driver run
    tokens_split: bool = True  # the LLM usage is known as tokens in and out (a driver run counts the total)

    def by_id(self) -> dict[str, Any]:
        return {h.id: h for h in self.hypotheses}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({exc})") from None


def _read_spec(folder: Path) -> dict[str, Any] | None:
    import yaml

    for name in SPEC_FILES:
        p = folder / name
        if p.is_file():
            try:
                data = yaml.safe_load(p.read_text())  # YAML is a superset of JSON
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"{p}: not a readable rollout spec ({exc})") from None
            return data if isinstance(data, dict) else None
    return None


def find_rollout_dirs(run_dir: Path) -> list[Path]:
    """Folders under the run holding result.json or timeline.json (candidate and service folders skipped)."""
    found = []
    for root, dirs, files in os.walk(run_dir):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        if "timeline.json" in files or ("result.json" in files and Path(root) != run_dir):
            found.append(Path(root))
    return found


def load_rollout(folder: Path, hypothesis_ids: set[str]) -> Rollout:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--rollout {folder}: not a directory")
    result = _read_json(folder / "result.json") if (folder / "result.json").is_file() else None
    timeline = _read_json(folder / "timeline.json") if (folder / "timeline.json").is_file() else []
    if result is None and not timeline:
        raise ConfigError(f"{folder}: no result.json or timeline.json (not a `cambrian rollout` output folder)")
    if not isinstance(timeline, list):
        raise ConfigError(f"{folder / 'timeline.json'}: expected a list of events")
    if result is not None and not isinstance(result, dict):
        raise ConfigError(f"{folder / 'result.json'}: expected an object")
    spec = _read_spec(folder)
    name = (result or {}).get("experiment") or (spec or {}).get("name") or folder.name
    ro = Rollout(name, folder, result, timeline, spec)
    ro.arm_hypothesis = arm_hypotheses(arms_of(ro), spec, hypothesis_ids)
    return ro


def finished_generations(hypotheses: Iterable[Any], marked_done: Iterable[int]) -> list[int]:
    """Generations marked done, and those whose proposals all reached a final phase: the operator's loop
    never marks a generation (a wake-up) done, which read as "0 of 1" after a full generation."""
    from cambrian.agents.journal import TERMINAL_PHASES

    by_gen: dict[int, list[str]] = {}
    for h in hypotheses:
        if h.generation >= 1:
            by_gen.setdefault(h.generation, []).append(h.phase)
    settled = {g for g, phases in by_gen.items() if all(ph in TERMINAL_PHASES for ph in phases)}
    return sorted(set(marked_done) | settled)


def _bundle_paths(spec: dict[str, Any] | None) -> list[Path]:
    spec = spec or {}
    treatments = spec.get("treatments") or {}
    named = [spec.get("control"), *(treatments.values() if isinstance(treatments, dict) else [])]
    return [Path(b) for b in named if isinstance(b, str) and b]


def _in_run(bundle: Path, run_dir: Path) -> bool:
    # A relative path was typed against some working directory: it may name the run's folder or lie inside it.
    return bundle.resolve().is_relative_to(run_dir) or (not bundle.is_absolute() and (run_dir / bundle).exists())


def check_rollout_belongs(ro: Rollout, run_dir: Path, config: dict[str, Any]) -> None:
    """An extra --rollout must test this run's bundles on this run's data; otherwise its winner would be
    declared champion of a run that never produced it."""
    run_dir = run_dir.resolve()
    world, data = (ro.spec or {}).get("world"), config.get("data_dir")
    if isinstance(world, str) and isinstance(data, str) and Path(world).resolve() != Path(data).resolve():
        raise ConfigError(f"--rollout {ro.path}: rollout {ro.name} ran on data {world}, but run {run_dir} "
                          f"was trained on {data}; pass a rollout of this run")
    bundles = _bundle_paths(ro.spec)
    if bundles and not any(_in_run(b, run_dir) for b in bundles):
        raise ConfigError(f"--rollout {ro.path}: rollout {ro.name} serves bundles of another run "
                          f"({bundles[0]}), not of run {run_dir}; pass a rollout of this run")
    if not bundles and not ro.arm_hypothesis:
        raise ConfigError(f"--rollout {ro.path}: rollout {ro.name} has no spec and no arm named after a "
                          f"hypothesis of run {run_dir}; pass a rollout of this run")


def load_run(run_dir: str | Path, extra_rollouts: list[Path] | None = None) -> Run:
    from cambrian.agents.journal import JOURNAL_FILE, Journal
    from cambrian.report_objects import is_driver_run, load_driver_run

    p = Path(run_dir)
    if not p.exists():
        raise ConfigError(f"{p}: no such directory", hint="name a run directory written by `cambrian evolve`")
    if not p.is_dir():
        raise ConfigError(f"{p}: not a directory", hint="name a run directory written by `cambrian evolve`")
    if is_driver_run(p):  # `cambrian evolve -f` / `cambrian demo`: the operator's objects and their status
        if extra_rollouts:
            raise ConfigError("--rollout: a run of `cambrian evolve -f` keeps its rollouts itself")
        return load_driver_run(p)
    if not (p / JOURNAL_FILE).is_file():
        raise ConfigError(f"{p} is not a Cambrian run directory: it has no objects/ folder and no {JOURNAL_FILE}",
                          hint="name the --dir of `cambrian evolve -f` (runs/demo/evolve for `cambrian demo`)")
    j = Journal(p, readonly=True)
    st = j.state
    config = _read_json(p / "evolve-config.json") if (p / "evolve-config.json").is_file() else {}
    config = config if isinstance(config, dict) else {}
    ids = set(st.hypotheses)
    own = find_rollout_dirs(p)
    extra = [Path(x).resolve() for x in (extra_rollouts or [])]
    rollouts = [load_rollout(f, ids) for f in dict.fromkeys([f.resolve() for f in own] + extra)]
    for ro in rollouts:
        if ro.path in extra and ro.path not in {f.resolve() for f in own}:
            check_rollout_belongs(ro, p, config)
    run = Run(p, list(st.hypotheses.values()), dict(st.baseline), st.usage, st.train_seconds, st.evaluations,
              finished_generations(st.hypotheses.values(), st.generations_done), st.stop_reason, config, rollouts)
    # Hypotheses whose journal entry names a rollout arm.
    for h in run.hypotheses:
        rname, arm = h.online.get("rollout"), h.online.get("arm")
        for ro in rollouts:
            if rname == ro.name and isinstance(arm, str):
                ro.arm_hypothesis.setdefault(arm, h.id)
    return run


# ============================================================================================ tables (pure)
def arms_of(ro: Rollout) -> list[str]:
    """Every arm seen in the rollout's result or timeline, control first."""
    arms: dict[str, None] = {}
    r = ro.result or {}
    for a in (r.get("final_weights") or {}):
        arms[a] = None
    for e in ro.timeline:
        for key in ("weights", "n", "exposures"):
            for a in (e.get(key) or {}):
                arms[a] = None
        for a in (e.get("arms") or {}):
            arms[a] = None
    ctl = ro.control
    return ([ctl] if ctl in arms else []) + [a for a in arms if a != ctl]


def arm_hypotheses(arms: list[str], spec: dict[str, Any] | None, ids: set[str]) -> dict[str, str]:
    out = {a: a for a in arms if a in ids}
    for arm, bundle in ((spec or {}).get("treatments") or {}).items():
        parts = Path(str(bundle)).parts
        for i, part in enumerate(parts[:-1]):
            if part == "candidates" and parts[i + 1] in ids:
                out.setdefault(arm, parts[i + 1])
    return out


def persona_metric(h: Any) -> tuple[str | None, bool]:
    """(primary offline metric, lower is better) of a hypothesis: the metric it was judged on (an Evolution's
    spec.objective.offline may differ from the persona's default), else its persona's."""
    from cambrian.agents.personas import PERSONAS

    p = PERSONAS.get(h.persona)
    if h.primary_metric:
        lower = p.lower_is_better if p is not None and p.metric == h.primary_metric else h.primary_metric.endswith("loss")
        return h.primary_metric, lower
    if p is not None:
        return p.metric, p.lower_is_better
    return None, True


def outcome_of(h: Any) -> str:
    """One word for the lineage colouring: launched, live, retired, better, promising, not better, failed ..."""
    if h.phase in ("Launched", "Live", "Retired", "Failed", "Rejected"):
        return h.phase.lower()
    if h.verdict in ("better", "promising", "not_better"):
        return h.verdict.replace("_", " ")
    return h.phase.lower()


def best_so_far(run: Run) -> dict[str, dict[str, Any]]:
    """Per persona: metric, direction, baseline, generations, best-so-far per generation, and every score."""
    out: dict[str, dict[str, Any]] = {}
    gens = sorted({h.generation for h in run.hypotheses} | {0})
    for h in run.hypotheses:
        if h.id == "baseline" or h.persona == "baseline":
            continue
        metric, lower = persona_metric(h)
        if metric is None:
            continue
        d = out.setdefault(h.persona, {"metric": metric, "lower": lower, "points": [], "floor": None})
        if metric in h.offline:
            d["points"].append((h.generation, h.offline[metric].mean, h.verdict or h.phase.lower(), h.id))
        if h.noise_floor is not None:
            d["floor"] = h.noise_floor if d["floor"] is None else min(d["floor"], h.noise_floor)
    for persona, d in out.items():
        base = run.baseline.get(d["metric"])
        d["baseline"] = base.mean if base is not None else None
        d["baseline_std"] = base.std if base is not None else None
        best = d["baseline"]
        curve = []
        for g in gens:
            for gen, v, _, _ in d["points"]:
                if gen == g and (best is None or (v < best if d["lower"] else v > best)):
                    best = v
            curve.append((g, best))
        d["curve"] = curve
    return {k: v for k, v in out.items() if v["points"] or v["baseline"] is not None}


def arm_effects(ro: Rollout) -> dict[str, list[tuple[Any, float, float | None, float | None]]]:
    """Per treatment arm: (day, estimate, ci low, ci high) at every readout with an estimate."""
    out: dict[str, list] = {}
    for i, e in enumerate(ro.readouts):
        day = e.get("day", i)
        for arm, d in (e.get("arms") or {}).items():
            est = _num(d.get("effect"))
            if isinstance(d.get("effect"), dict):
                est = _num(d["effect"].get("estimate"))
            if est is None:
                continue
            ci = d.get("ci") or [None, None]
            out.setdefault(arm, []).append((day, est, _num(ci[0]), _num(ci[1])))
    return out


def planned_effects(ro: Rollout) -> dict[str, float]:
    """Per treatment arm: the effect its design was sized for, at the latest readout that says it (group-sequential
    designs; stats.decision.ArmDecision.planned_effect)."""
    out: dict[str, float] = {}
    for e in ro.readouts:
        for arm, d in (e.get("arms") or {}).items():
            v = _num(d.get("planned_effect")) if isinstance(d, dict) else None
            if v is not None:
                out[arm] = v
    return out


def is_relative(ro: Rollout) -> bool:
    last = (ro.result or {}).get("last_decision") or {}
    for d in (last.get("arms") or {}).values():
        if isinstance(d.get("effect"), dict) and "relative" in d["effect"]:
            return bool(d["effect"]["relative"])
    return bool((ro.spec or {}).get("north_star_relative", True))


def guardrail_series(ro: Rollout) -> tuple[dict[tuple[str, str], list[dict[str, Any]]], bool]:
    """{(metric, arm): [{day, estimate, lower, upper, bound, status}]}, and whether it is a per-look history
    (True) or only the final look (False: the timeline's readouts carry no guardrail results)."""
    series: dict[tuple[str, str], list] = {}
    for i, e in enumerate(ro.readouts):
        for arm, d in (e.get("arms") or {}).items():
            for g in d.get("guardrails") or []:
                series.setdefault((g["metric"], arm), []).append({**g, "day": e.get("day", i)})
    if series:
        return series, True
    last = (ro.result or {}).get("last_decision") or {}
    day = (ro.readouts[-1].get("day") if ro.readouts else None)
    for arm, d in (last.get("arms") or {}).items():
        for g in d.get("guardrails") or []:
            series.setdefault((g["metric"], arm), []).append({**g, "day": day if day is not None else 0})
    return series, False


def weight_steps(ro: Rollout) -> list[tuple[Any, dict[str, int]]]:
    """(first day the weights apply, weights). A change made after a day was served (a rollback or a
    promotion at that day's look) applies from the next day; a ramp step applies from its own day."""
    steps, served = [], set()
    first = next((e.get("day") for e in ro.timeline
                  if e.get("kind") in ("day", "readout") and e.get("day") is not None), None)
    for e in ro.timeline:
        if e.get("kind") == "day":
            served.add(e.get("day"))
        elif e.get("kind") in ("started", "weights") and isinstance(e.get("weights"), dict):
            day = e.get("day")
            if day is None:  # the weights at start apply from the first day served
                day = first
            elif day in served:
                day += 1
            steps.append((day, e["weights"]))
    return steps


def online_outcomes(run: Run) -> dict[str, str]:
    """Hypothesis id -> what its latest arm's rollout made of it: promoted, rolled back, inconclusive or live; a
    test that decided nothing about it (a promotion over a replaced champion, or a rollout its Evolution ended:
    evolution.py step 3) is superseded while its hypothesis waits, Scored, for its next test, and when it was Retired
    after spec.experiment.maxTests such tests (a Retired winner: an Evolution from before hypotheses were tested
    again)."""
    out = {}
    hs = run.by_id()
    for ro in run.rollouts:  # concluded first, in order: a later test's outcome replaces an earlier one's
        r = ro.result
        for arm, hid in ro.arm_hypothesis.items():
            phase = hs[hid].phase if hid in hs else None
            if r is None:
                out[hid] = "live"
            elif phase == "Scored" or (phase == "Retired" and not hs[hid].online.get("decision")):
                out[hid] = "superseded"  # waiting for its next test, or Retired after maxTests undecided ones
            elif arm in (r.get("rolled_back") or {}) or r.get("outcome") == "rollback":
                out[hid] = "rolled back"
            elif r.get("outcome") == "promote":
                out[hid] = "promoted" if r.get("winner") == arm else "retired"
                if out[hid] == "promoted" and phase == "Retired":
                    out[hid] = "superseded"
            else:
                out[hid] = "inconclusive"
    return out


def _predicted(p: dict[str, Any] | None) -> str:
    """What the online agent's surrogate predicted when it launched the rollout; '-' when it did not rank."""
    return f"{p['mean']:+.4g} ± {p['sd']:.2g} ({p.get('by', 'surrogate')})" if p else "-"


def proxy_vs_online(run: Run) -> list[dict[str, Any]]:
    """One point per treatment arm tied to a scored hypothesis with an online effect: the offline gain
    (in noise-floor units) against the final online effect on the north star with its interval."""
    hs = run.by_id()
    points = []
    for ro in run.rollouts:
        last = (ro.result or {}).get("last_decision") or {}
        effects = arm_effects(ro)
        for arm, hid in ro.arm_hypothesis.items():
            h = hs.get(hid)
            if h is None or h.gain is None:
                continue
            d = (last.get("arms") or {}).get(arm) or {}
            est = _num((d.get("effect") or {}).get("estimate")) if isinstance(d.get("effect"), dict) else None
            ci = d.get("ci")
            if est is None and effects.get(arm):
                _, est, lo, hi = effects[arm][-1]
                ci = [lo, hi]
            if est is None:
                continue
            floor = h.noise_floor or 0.0
            points.append({"id": hid, "arm": arm, "rollout": ro.name, "persona": h.persona,
                           "offline": h.gain / floor if floor > 0 else h.gain,
                           "offline_units": "floor" if floor > 0 else "raw",
                           "online": est, "lo": _num((ci or [None, None])[0]), "hi": _num((ci or [None, None])[1]),
                           "relative": is_relative(ro), "north_star": ro.north_star,
                           "outcome": (d.get("outcome") or outcome_of(h)), "predicted": ro.predicted.get(hid)})
    return points


def champion(run: Run) -> tuple[str, str]:
    """(champion, why): the Evolution's own champion in a driver run; else the last promoted winner of a
    rollout, else the launched hypothesis, else the baseline."""
    if run.champion is not None:
        return run.champion
    for ro in reversed(run.rollouts):
        r = ro.result or {}
        if r.get("outcome") == "promote" and r.get("winner"):
            w = r["winner"]
            hid = ro.arm_hypothesis.get(w)
            return (f"{w}" + (f" (hypothesis {hid})" if hid and hid != w else ""),
                    f"promoted by rollout {ro.name}: {r.get('reason', '')}")
    launched = [h for h in run.hypotheses if h.phase == "Launched"]
    if launched:
        h = max(launched, key=lambda h: h.updated_at)
        return h.id, h.reason or "launched"
    return "baseline", "no rollout has promoted a treatment yet"


def summary_rows(run: Run) -> list[tuple[str, str]]:
    hs = [h for h in run.hypotheses if h.id != "baseline"]
    phases: dict[str, int] = {}
    for h in hs:
        phases[h.phase] = phases.get(h.phase, 0) + 1
    champ, why = champion(run)
    u = run.usage
    better = [h.id for h in hs if h.verdict == "better"]
    budgets = run.config.get("budgets") or {}
    gens = run.config.get("generations")
    rows = [
        ("Champion", f"{champ} — {why}"),
        ("Generations done", f"{len(run.generations_done)}" + (f" of {gens}" if gens else "")
         + (f" ({', '.join(map(str, run.generations_done))})" if run.generations_done else "")),
        ("Stopped", run.stop_reason or "not stopped (running or interrupted)"),
        ("Hypotheses", f"{len(hs)}: " + (", ".join(f"{k} {v}" for k, v in sorted(phases.items())) or "none")),
        ("Better than baseline offline", ", ".join(better) or "none yet"),
        ("LLM spend", f"{u.input_tokens + u.output_tokens:,} tokens"
                      + (f" ({u.input_tokens:,} in, {u.output_tokens:,} out)" if run.tokens_split else "")
                      + f", ${u.dollars:.4f} over {u.calls} call(s)"
                      + _budget_text(budgets, ("max_tokens", "max_dollars"))),
        ("Training spend", f"{run.evaluations} training run(s), {run.train_seconds:,.1f} s of training wall time"
                           + _budget_text(budgets, ("max_evaluations", "max_train_seconds"))),
    ]
    for ro in run.rollouts:
        r = ro.result
        if r is None:
            last = ro.readouts[-1] if ro.readouts else None
            rows.append((f"Rollout {ro.name}", "running: " + (f"last look on day {last.get('day')}: "
                                                              f"{last.get('outcome')} ({last.get('reason')})"
                                                              if last else "no readout yet")))
        else:
            rb = "; ".join(f"{a} rolled back ({why})" for a, why in (r.get("rolled_back") or {}).items())
            rows.append((f"Rollout {ro.name}", f"{r.get('outcome')} after {r.get('days_run')} day(s)"
                         + (f", winner {r['winner']}" if r.get("winner") else "") + f": {r.get('reason')}"
                         + (f"; {rb}" if rb else "")))
    if not run.rollouts:
        rows.append(("Online decisions", "none yet: no rollout results in this run"))
    return rows


def _budget_text(budgets: dict[str, Any], keys: tuple[str, ...]) -> str:
    parts = [f"{k.removeprefix('max_').replace('_', ' ')} ≤ {budgets[k]:g}"
             for k in keys if budgets.get(k) is not None]
    return f" (budget: {', '.join(parts)})" if parts else ""


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


# ============================================================================================ HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;width:100%;font-size:.92em}
td,th{border:1px solid #ddd;padding:.35em .5em;vertical-align:top;text-align:left}
th{background:#f5f5f5} img{max-width:100%;border:1px solid #eee}
.missing{color:#8a6d3b;background:#fcf8e3;padding:.6em;border-radius:4px}
.muted{color:#777;font-size:.9em} code{background:#f3f3f3;padding:0 .2em}
"""


def _table(rows: list[list[Any]], head: list[str] | None = None) -> str:
    out = ["<table>"]
    if head:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape('' if c is None else str(c))}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(name: str, alt: str) -> str:
    return f'<p><img src="{html.escape(name)}" alt="{html.escape(alt)}"></p>'


def _missing(text: str) -> str:
    return f'<p class="missing">{html.escape(text)}</p>'


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else ("" if x is None else str(x))


def write_report(run: Run, out: Path) -> Path:
    """Render every plot into `out` and write out/report.html; returns its path."""
    from cambrian import report_plots as rp

    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Cambrian report: {html.escape(run.path.name)}"
             f"</title><style>{_CSS}</style></head><body>",
             f"<h1>Cambrian report: {html.escape(run.path.name)}</h1>",
             f"<p class='muted'>Run directory <code>{html.escape(str(run.path.resolve()))}</code>; generated "
             f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}.</p>",
             "<h2>Summary</h2>", _table([list(r) for r in summary_rows(run)])]

    # --- offline
    parts.append("<h2>Offline loop: best proxy metric per generation</h2>")
    curves = best_so_far(run)
    if curves:
        rp.offline_progress(curves, out / "offline_progress.png")
        parts.append(_img("offline_progress.png", "best-so-far offline proxy metric per generation, per persona"))
        parts.append("<p class='muted'>One panel per persona (the component it changes) on its own offline metric. "
                     "The line is the best score found up to each generation; dots are single candidates; the "
                     "grey band is the baseline ± its noise floor (a gain inside it is indistinguishable from "
                     "seed-to-seed noise).</p>")
    else:
        parts.append(_missing("No scored hypotheses and no baseline measurement yet: nothing to plot."))

    parts.append("<h2>Hypothesis lineage</h2>")
    hs = [h for h in run.hypotheses if h.id != "baseline"]
    if hs:
        rp.lineage(run.hypotheses, out / "lineage.png", online_outcomes(run))
        parts.append(_img("lineage.png", "hypothesis lineage by generation, coloured by persona and outcome"))
        parts.append("<p class='muted'>Every hypothesis is a delta against the baseline (grey lines); arrows "
                     "link a failed hypothesis to the repair the agent proposed for it.</p>")
        rows = []
        for h in sorted(hs, key=lambda h: (h.generation, h.id)):
            metric, _ = persona_metric(h)
            score = h.offline.get(metric) if metric else None
            rows.append([h.id, h.generation, h.persona, h.category, h.phase, h.verdict or "",
                         f"{metric}={score.mean:.4g}±{score.std:.2g} (n={score.n})" if score else "",
                         f"{h.gain:+.3g} / {h.noise_floor:.3g}" if h.gain is not None and h.noise_floor else "",
                         h.parent or "", (h.reason or "")[:200]])
        parts.append(_table(rows, ["id", "gen", "persona", "category", "phase", "verdict", "offline score",
                                   "gain / noise floor", "repair of", "why"]))
    else:
        parts.append(_missing("No hypotheses in the journal yet."))

    # --- online
    parts.append("<h2>Online experiments: effects with confidence intervals</h2>")
    if not run.rollouts:
        parts.append(_missing("No online results yet: this run has no rollout folder (result.json / "
                              "timeline.json). Run `cambrian rollout`, or pass --rollout DIR."))
    for i, ro in enumerate(run.rollouts):
        parts.append(f"<h3>Rollout {html.escape(ro.name)}</h3>")
        effects = arm_effects(ro)
        if effects:
            name = f"effects_{i}_{_safe(ro.name)}.png"
            rp.effects(ro.name, ro.north_star, is_relative(ro), effects, weight_steps(ro), ro.readouts, out / name,
                       arm_order=arms_of(ro), planned=planned_effects(ro))
            parts.append(_img(name, f"treatment effects over time, rollout {ro.name}"))
            parts.append("<p class='muted'>Effect of each treatment on the north star versus the control at "
                         "every look, with its always-valid confidence interval (CUPED-adjusted, sequential); "
                         "dashed: the effect its design was sized for (smaller effects were out of its reach). "
                         "Lower panel: the traffic weight of each arm.</p>")
        else:
            parts.append(_missing(f"Rollout {ro.name}: no readout with an effect estimate yet."))
        parts.append("<h4>Guardrails</h4>")
        series, history = guardrail_series(ro)
        if series:
            name = f"guardrails_{i}_{_safe(ro.name)}.png"
            rp.guardrails(ro.name, series, history, out / name, rp.arm_colors(arms_of(ro)))
            parts.append(_img(name, f"guardrails over time, rollout {ro.name}"))
            if not history:
                parts.append("<p class='muted'>The timeline holds no per-look guardrail results; shown is the "
                             "final look only.</p>")
        else:
            parts.append(_missing(f"Rollout {ro.name}: no guardrail results (none configured, or no look yet)."))
        decisions = [[e.get("day"), e.get("outcome"), e.get("reason")] for e in ro.readouts]
        decisions += [[e.get("day"), "no decision", e.get("reason")]
                      for e in ro.timeline if e.get("kind") == "no_decision"]
        if decisions:
            decisions.sort(key=lambda r: (r[0] is None, r[0] or 0))
            parts.append(_table(decisions, ["day", "decision", "reason"]))

    parts.append("<h2>Does the offline proxy predict the online effect?</h2>")
    points = proxy_vs_online(run)
    if points:
        rp.proxy_vs_online(points, out / "proxy_vs_online.png")
        parts.append(_img("proxy_vs_online.png", "offline proxy gain versus online effect"))
        parts.append(_table([[p["id"], p["persona"], p["rollout"], f"{p['offline']:.3g}", _predicted(p["predicted"]),
                              f"{p['online']:.4g}", f"[{_fmt(p['lo'])}, {_fmt(p['hi'])}]", p["outcome"]]
                             for p in points],
                            ["hypothesis", "persona", "rollout", "offline gain (noise floors)",
                             "predicted online effect (at launch)", "online effect", "interval", "online outcome"]))
    elif run.rollouts:
        parts.append(_missing("No treatment arm could be tied to a scored hypothesis (name arms after hypothesis "
                              "ids, or keep the rollout spec next to its result)."))
    else:
        parts.append(_missing("No online results yet: the comparison needs at least one finished rollout."))
    parts.append("</body></html>\n")
    path = out / REPORT_FILE
    path.write_text("\n".join(parts))
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]


def report(
    run_dir: Path = typer.Argument(..., help="run directory: the --dir of `cambrian evolve -f` (or an old "
                                   "`--config` run holding journal.jsonl)"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write report.html and the plots "
                                       "(default: RUN_DIR/report)"),
    rollout: list[Path] = typer.Option([], "--rollout", help="an extra rollout output folder (repeatable)"),
) -> None:
    """Write an HTML report with plots for a run."""
    run = load_run(run_dir, rollout)  # reads only
    path = write_report(run, inputs.output_dir(out or Path(run_dir) / "report"))
    typer.echo(str(path))
