"""The experiment journal: the durable memory both agents read (paper §2.1, feature A1/A2).

Storage is an append-only JSONL event log (`RUN_DIR/journal.jsonl`). Every change is one event,
written with flush+fsync, and the current state is the replay of all events. A run killed at any
moment therefore loses at most the event being written (a torn last line is ignored on load) and
never duplicates anything: hypothesis ids are deterministic and re-recording an id is an error.

Event types
  hypothesis  {id, ...Hypothesis fields}            a new hypothesis (phase Proposed or Rejected)
  update      {id, fields: {...}}                   a change of phase / scores / failure / online
  baseline    {metrics: {name: Score}, seeds}       the baseline's noise floor measurement
  usage       {provider, model, input_tokens, output_tokens, dollars}
  generation  {generation, status: started|done}
  evaluation  {id, seed, train_seconds, ok}         one training run finished (counts against budgets)
  analysis    {generation, persona, question, sql, output}   a read-only SQL analysis and its result
  stop        {reason}                              the run stopped (budget name or "completed")
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field

from cambrian.errors import ConfigError

SCHEMA_VERSION = 1
JOURNAL_FILE = "journal.jsonl"

Phase = Literal["Proposed", "Validated", "Training", "Scored", "Failed", "Rejected", "Live", "Launched", "Retired"]
Category = Literal["explore", "exploit", "innovate", "repair", "baseline"]
Verdict = Literal["better", "not_better", "promising", "pending"]
TERMINAL_PHASES = {"Scored", "Failed", "Rejected", "Launched", "Retired"}


class Score(BaseModel):
    """An offline metric over seeds: mean, sample std (0 for one seed), and the raw values."""

    model_config = ConfigDict(extra="forbid")
    mean: float
    std: float = 0.0
    n: int = 1
    values: list[float] = Field(default_factory=list)

    @classmethod
    def of(cls, values: Iterable[float]) -> "Score":
        from cambrian.stats.noise import mean_std

        vals = [float(v) for v in values]
        m, sd, n = mean_std(vals)
        return cls(mean=m, std=sd, n=n, values=vals)


# Failures a proposer may be able to fix when shown the error (a repair is asked once per failure, on both
# platforms); "gate" is the operator's name for a gate failure whose stage the trainer did not report.
REPAIRABLE_STAGES = frozenset({"parse", "static", "reward_sql", "forward_backward", "training", "export", "crash",
                               "memory", "timeout", "gate"})


class Failure(BaseModel):
    model_config = ConfigDict(extra="forbid")
    phase: str  # the hypothesis phase it failed in: Proposed (parse), Validated (gate), Training
    stage: str  # parse | static | reward_sql | forward_backward | training | timeout | memory | sandbox
    reason: str
    exit_code: int | None = None


class Hypothesis(BaseModel):
    """One proposed change. `delta` is a trainer Delta as a dict ({component, patch, code})."""

    model_config = ConfigDict(extra="forbid")
    id: str
    generation: int
    persona: str
    component: str
    category: Category
    explanation: str = ""
    predicted_effect: str = ""
    delta: dict[str, Any] | None = None
    delta_summary: str = ""
    fingerprint: str | None = None  # ModelConfig.fingerprint() of the applied config (seed-normalised)
    origin: str = ""  # provider/model, "builtin", "human"
    parent: str | None = None  # the failed hypothesis a repair descends from
    meta: dict[str, Any] = Field(default_factory=dict)  # proposer bookkeeping (catalogue entry, sampled params)
    phase: Phase = "Proposed"
    attempts: int = 0
    offline: dict[str, Score] = Field(default_factory=dict)
    primary_metric: str | None = None
    gain: float | None = None  # improvement of the primary metric over the baseline mean (positive = better)
    noise_floor: float | None = None
    verdict: Verdict | None = None
    reason: str = ""  # why it won, lost, failed or was rejected: the journal's "why"
    failure: Failure | None = None
    online: dict[str, Any] = Field(default_factory=dict)  # {metric: value, "matured": bool, ...}
    train_seconds: float = 0.0
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    dollars: float = 0.0
    calls: int = 0


@dataclass
class JournalState:
    hypotheses: dict[str, Hypothesis] = field(default_factory=dict)
    baseline: dict[str, Score] = field(default_factory=dict)
    baseline_seeds: list[int] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    generations_done: set[int] = field(default_factory=set)
    generations_started: set[int] = field(default_factory=set)
    stop_reason: str | None = None
    train_seconds: float = 0.0
    evaluations: int = 0  # training runs finished (each seed counts)
    analyses: list[dict[str, Any]] = field(default_factory=list)


class Journal:
    """Append-only, replayable journal of one run directory. Thread-safe for concurrent writers."""

    def __init__(self, run_dir: str | Path, readonly: bool = False):
        p = Path(run_dir)
        if p.name.endswith(".jsonl"):  # a journal file was named instead of its run directory
            p = p.parent
        self.run_dir = p
        self.readonly = readonly
        self.path = self.run_dir / JOURNAL_FILE
        if readonly and not self.path.is_file():
            raise ConfigError(f"{self.path}: no journal here", hint="name a run directory of `cambrian evolve`")
        if not readonly:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.state = JournalState()
        self._seq = 0
        if self.path.exists():
            self._replay()

    # ---------------------------------------------------------------- persistence
    def _replay(self) -> None:
        raw = self.path.read_bytes()
        offset = 0
        lines = raw.split(b"\n")
        for i, line in enumerate(lines):
            line_start = offset
            offset += len(line) + 1
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                if any(rest.strip() for rest in lines[i + 1 :]):
                    raise ConfigError(f"{self.path}: line {i + 1} is not valid JSON; the journal is corrupt") from None
                # a torn final write from a killed process: drop it so the next append starts clean
                if not self.readonly:
                    with open(self.path, "r+b") as fh:
                        fh.truncate(line_start)
                break
            self._apply(event)
            self._seq = max(self._seq, int(event.get("seq", 0)))
        else:
            if raw and not raw.endswith(b"\n") and not self.readonly:  # complete last event but its newline was lost
                with open(self.path, "ab") as fh:
                    fh.write(b"\n")

    def _append(self, event: dict[str, Any]) -> None:
        if self.readonly:
            raise RuntimeError(f"{self.path} was opened read-only")
        with self._lock:
            self._seq += 1
            event = {"seq": self._seq, "ts": time.time(), "v": SCHEMA_VERSION, **event}
            self._apply(event)  # validate before writing: a bad event never reaches the disk
            line = json.dumps(event, sort_keys=True, separators=(",", ":")) + "\n"
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())

    def _apply(self, event: dict[str, Any]) -> None:
        st = self.state
        kind = event["type"]
        if kind == "hypothesis":
            h = Hypothesis.model_validate(event["data"])
            if h.id in st.hypotheses:
                raise ValueError(f"hypothesis {h.id} is already in the journal")
            st.hypotheses[h.id] = h
        elif kind == "update":
            old = st.hypotheses[event["id"]]
            data = old.model_dump()
            data.update(event["fields"])
            data["updated_at"] = event.get("ts", time.time())
            st.hypotheses[old.id] = Hypothesis.model_validate(data)
        elif kind == "baseline":
            st.baseline = {k: Score.model_validate(v) for k, v in event["metrics"].items()}
            st.baseline_seeds = list(event.get("seeds", []))
        elif kind == "usage":
            st.usage.input_tokens += int(event.get("input_tokens", 0))
            st.usage.output_tokens += int(event.get("output_tokens", 0))
            st.usage.dollars += float(event.get("dollars", 0.0))
            st.usage.calls += 1
        elif kind == "evaluation":
            st.evaluations += 1
            st.train_seconds += float(event.get("train_seconds", 0.0))
        elif kind == "generation":
            (st.generations_done if event["status"] == "done" else st.generations_started).add(int(event["generation"]))
        elif kind == "analysis":
            st.analyses.append({k: event.get(k) for k in ("generation", "persona", "question", "sql", "output")})
        elif kind == "stop":
            st.stop_reason = event["reason"]
        else:
            raise ValueError(f"unknown journal event type {kind!r}")

    # ---------------------------------------------------------------- writers
    def add(self, h: Hypothesis) -> Hypothesis:
        self._append({"type": "hypothesis", "id": h.id, "data": h.model_dump(mode="json")})
        return self.state.hypotheses[h.id]

    def update(self, hid: str, **fields: Any) -> Hypothesis:
        clean = {k: (v.model_dump(mode="json") if isinstance(v, BaseModel) else v) for k, v in fields.items()}
        if "offline" in clean:
            clean["offline"] = {
                k: (v.model_dump(mode="json") if isinstance(v, BaseModel) else v) for k, v in clean["offline"].items()
            }
        self._append({"type": "update", "id": hid, "fields": clean})
        return self.state.hypotheses[hid]

    def fail(self, hid: str, failure: Failure) -> Hypothesis:
        return self.update(hid, phase="Failed", failure=failure, reason=f"failed at {failure.stage}: {failure.reason}")

    def reject(self, hid: str, reason: str, stage: str = "parse") -> Hypothesis:
        return self.update(
            hid, phase="Rejected", reason=reason, failure=Failure(phase="Proposed", stage=stage, reason=reason)
        )

    def record_online(self, hid: str, metrics: dict[str, Any], matured: bool) -> Hypothesis:
        """Online results from the outer loop; only matured ones are shown to the agents."""
        return self.update(hid, online={**metrics, "matured": bool(matured)})

    def set_baseline(self, metrics: dict[str, Score], seeds: list[int]) -> None:
        self._append(
            {"type": "baseline", "metrics": {k: v.model_dump(mode="json") for k, v in metrics.items()}, "seeds": seeds}
        )

    def record_usage(self, provider: str, model: str, input_tokens: int, output_tokens: int, dollars: float) -> None:
        self._append(
            {
                "type": "usage",
                "provider": provider,
                "model": model,
                "input_tokens": int(input_tokens),
                "output_tokens": int(output_tokens),
                "dollars": float(dollars),
            }
        )

    def record_evaluation(self, hid: str, seed: int, train_seconds: float, ok: bool) -> None:
        self._append({"type": "evaluation", "id": hid, "seed": seed, "train_seconds": train_seconds, "ok": ok})

    def record_analysis(self, generation: int, persona: str, question: str, sql: str, output: str) -> None:
        self._append(
            {"type": "analysis", "generation": generation, "persona": persona, "question": question, "sql": sql,
             "output": output}
        )

    def mark_generation(self, generation: int, status: Literal["started", "done"]) -> None:
        self._append({"type": "generation", "generation": generation, "status": status})

    def stop(self, reason: str) -> None:
        self._append({"type": "stop", "reason": reason})

    # ---------------------------------------------------------------- readers
    @property
    def hypotheses(self) -> list[Hypothesis]:
        with self._lock:
            return list(self.state.hypotheses.values())

    def get(self, hid: str) -> Hypothesis:
        return self.state.hypotheses[hid]

    def by_fingerprint(self, fingerprint: str) -> Hypothesis | None:
        """The hypothesis (not rejected) that owns this applied config, if any: never train twice."""
        for h in self.hypotheses:
            if h.fingerprint == fingerprint and h.phase != "Rejected":
                return h
        return None

    def generation_ids(self, generation: int) -> list[Hypothesis]:
        return [h for h in self.hypotheses if h.generation == generation]

    def next_id(self, generation: int) -> str:
        return f"g{generation:03d}-{len(self.generation_ids(generation)) + 1:02d}"


# ---------------------------------------------------------------- ranking and rendering (pure)
def metric_value(h: Hypothesis, metric: str) -> float | None:
    s = h.offline.get(metric)
    return None if s is None else s.mean


def sort_key(h: Hypothesis, metric: str, lower_is_better: bool) -> tuple:
    """Scored first, best offline score first; then unscored (failed/rejected) newest first."""
    v = metric_value(h, metric)
    if v is None:
        return (1, -h.created_at)
    return (0, v if lower_is_better else -v)


def ranked(hs: Iterable[Hypothesis], metric: str, lower_is_better: bool) -> list[Hypothesis]:
    return sorted(hs, key=lambda h: sort_key(h, metric, lower_is_better))


def _fmt(x: float) -> str:
    return f"{x:.5g}"


def _delta_text(delta: dict[str, Any] | None, max_code: int = 600) -> str:
    """A delta for a prompt: plugin code is cut so one long plugin cannot crowd out the journal."""
    if not delta:
        return "(none)"
    d = dict(delta)
    code = d.get("code")
    if isinstance(code, str) and len(code) > max_code:
        d["code"] = code[:max_code] + f"... ({len(code.splitlines())} lines in all)"
    return json.dumps(d, sort_keys=True)


def render_entry(h: Hypothesis, metric: str, show_metrics: Iterable[str] | None = None) -> str:
    head = f"- [{h.id}] {h.category} {h.phase}"
    if h.verdict:
        head += f" verdict={h.verdict}"
    lines = [head, f"  delta: {_delta_text(h.delta)}"]
    if h.explanation:
        lines.append(f"  explanation: {h.explanation.strip()[:400]}")
    shown = set(show_metrics) if show_metrics is not None else None
    scores = [
        f"{k}={_fmt(s.mean)}±{_fmt(s.std)} (n={s.n})"
        for k, s in sorted(h.offline.items())
        if shown is None or k in shown
    ]
    if scores:
        lines.append("  offline: " + ", ".join(scores))
    if h.gain is not None:
        lines.append(f"  gain vs baseline on {metric}: {_fmt(h.gain)} (noise floor {_fmt(h.noise_floor or 0)})")
    if h.online.get("matured"):
        online = {k: v for k, v in h.online.items() if k != "matured"}
        lines.append(f"  online (matured): {json.dumps(online, sort_keys=True)}")
    if h.phase in ("Failed", "Rejected") and h.reason:
        lines.append(f"  why: {h.reason[:300]}")
    return "\n".join(lines)


def approx_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def render_journal(
    hs: Iterable[Hypothesis],
    metric: str,
    lower_is_better: bool,
    token_budget: int,
    components: Iterable[str] | None = None,
    show_metrics: Iterable[str] | None = None,
) -> str:
    """The journal section of a prompt: best offline score first, cut to a token budget (chars/4).

    Only matured online metrics appear. Duplicates are left out (they add nothing the original lacks).
    """
    comps = set(components) if components else None
    pool = [h for h in hs if (comps is None or h.component in comps) and not h.reason.startswith("duplicate of")]
    if not pool:
        return "(the journal is empty: no experiments yet)"
    out: list[str] = []
    used = 0
    omitted = 0
    for h in ranked(pool, metric, lower_is_better):
        entry = render_entry(h, metric, show_metrics)
        cost = approx_tokens(entry) + 1
        if used + cost > token_budget:
            omitted += 1
            continue
        out.append(entry)
        used += cost
    if omitted:
        out.append(f"({omitted} more entries omitted to fit the context budget)")
    return "\n".join(out)
