"""The Offline Agent's fast inner loop (paper §2.2-2.5), run locally.

    result = run_evolution(load_evolve_config("evolve.yaml"))

One run directory holds the journal (the only state), the SQL analysis database, and one folder per
candidate and seed with its config, delta, training log and model bundle. The loop:

1. measures the baseline's seed-to-seed noise floor (`noise.baseline_seeds` seeds);
2. optionally warm-starts: the best K per persona of a previous run are re-evaluated on this data (gen 0);
3. per generation and persona: builds the prompt (persona slice of Φ, SQL output, journal best-first),
   asks the proposer for explore/exploit/innovate proposals, admits or rejects each (schema, persona,
   static gate, exact de-duplication by the applied Φ's fingerprint), trains the admitted ones in
   parallel sandboxed subprocesses, sends each gate/training failure back once for repair, judges each
   score against the noise floor, and re-runs the most promising with extra seeds;
4. stops at the last generation or the first exhausted budget, saying which.
Killing it at any point and running it again resumes: finished candidates are never re-run, a
candidate caught in training is re-run once.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cambrian.errors import ConfigError, GateError, TrainingError
from cambrian.agents import canonical
from cambrian.agents.budgets import Spend, cost_usd, llm_exhausted, training_exhausted
from cambrian.agents.journal import REPAIRABLE_STAGES, Failure, Hypothesis, Journal, Score, ranked, render_journal
from cambrian.stats.noise import baseline_seeds, confirmation_seeds, judge, noise_floor
from cambrian.agents.personas import PERSONAS, Persona
from cambrian.agents.prompts import build_prompt
from cambrian.agents.proposers import make_proposer
from cambrian.agents.proposers.base import CATEGORIES, ProposalRequest, Proposer, ProposerResult
from cambrian.agents.runner import RunOutcome, run_candidate
from cambrian.agents.settings import EvolveConfig
from cambrian.trainer.config import ModelConfig, load_config, parse_config
from cambrian.trainer.delta import Delta, merge_patch

METRICS = ("val_loss", "auc", "long_watch_corr", "return_corr", "like_corr")
PROMPT_METRICS = {
    "optimizer": ("val_loss", "auc"),
    "architecture": ("val_loss", "auc"),
    "reward": ("long_watch_corr", "return_corr", "like_corr", "auc"),
}
BASELINE_ID = "baseline"

DEFAULT_QUERIES = [
    (
        "Next-day return rate by how much of a clicked video was watched",
        "SELECT CASE WHEN i.completion >= 0.8 THEN 'high' WHEN i.completion >= 0.3 THEN 'mid' ELSE 'low' END "
        "AS completion_bucket, COUNT(*) AS clicks, AVG(u.returned_next_day) AS return_rate, AVG(i.watch_seconds) "
        "AS watch_seconds FROM impressions i JOIN user_days u USING (day, user_id) WHERE i.click = 1 "
        "GROUP BY 1 ORDER BY 1",
    ),
    (
        "Do likes and hates after a click predict returning the next day?",
        "SELECT i.\"like\", i.hate, COUNT(*) AS n, AVG(u.returned_next_day) AS return_rate FROM impressions i "
        "JOIN user_days u USING (day, user_id) WHERE i.click = 1 GROUP BY 1, 2 ORDER BY 1, 2",
    ),
    (
        "Clickbait check: thumbnail intensity vs click rate and completion of clicks",
        "SELECT ROUND(it.thumb_intensity, 1) AS thumb, COUNT(*) AS n, AVG(i.click) AS ctr, "
        "AVG(CASE WHEN i.click = 1 THEN i.completion END) AS completion_if_clicked FROM impressions i "
        "JOIN items it USING (item_id) GROUP BY 1 ORDER BY 1",
    ),
]


@dataclass
class EvolutionResult:
    run_dir: Path
    stop_reason: str
    baseline: dict[str, Score]
    winners: list[Hypothesis]  # verdict "better", best gain first
    best: dict[str, Hypothesis | None]  # per persona, best offline score
    counts: dict[str, int]  # per phase
    spend: Spend
    generations_done: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "stop_reason": self.stop_reason,
            "baseline": {k: v.model_dump() for k, v in self.baseline.items()},
            "baseline_bundle": _str(bundle_path(self.run_dir, BASELINE_ID)),
            "winners": [{**summary(h), "bundle": _str(bundle_path(self.run_dir, h))} for h in self.winners],
            "best": {k: ({**summary(h), "bundle": _str(bundle_path(self.run_dir, h))} if h else None)
                     for k, h in self.best.items()},
            "counts": self.counts,
            "spend": self.spend.__dict__,
            "generations_done": self.generations_done,
        }


def _str(p: Path | None) -> str | None:
    return None if p is None else str(p)


def summary(h: Hypothesis) -> dict[str, Any]:
    return {
        "id": h.id, "persona": h.persona, "category": h.category, "phase": h.phase, "verdict": h.verdict,
        "delta": h.delta, "primary_metric": h.primary_metric, "gain": h.gain, "noise_floor": h.noise_floor,
        "offline": {k: v.mean for k, v in h.offline.items()}, "reason": h.reason,
    }  # fmt: skip


Reporter = Callable[[str, dict[str, Any]], None]


def bundle_path(run_dir: str | Path, h: Hypothesis | str, seed: int | None = None) -> Path | None:
    """The model bundle a hypothesis trained (its first seed unless named); None if there is none."""
    hid = h if isinstance(h, str) else h.id
    base = Path(run_dir) / "candidates" / hid
    seeds = [f"seed-{seed}"] if seed is not None else sorted(
        (p.name for p in base.glob("seed-*")), key=lambda n: int(n.split("-")[1]))
    for name in seeds:
        b = base / name / "out" / "bundle"
        if (b / "bundle.json").is_file():
            return b
    return None


class Evolution:
    def __init__(self, cfg: EvolveConfig, proposer: Proposer | None = None, reporter: Reporter | None = None):
        self.cfg = cfg
        self.data_dir = Path(cfg.data_dir)
        if not (self.data_dir / "world.json").is_file():
            raise ConfigError(f"data_dir: {self.data_dir} is not a data directory (no world.json)",
                              hint="create one with `cambrian world generate --out DIR`")
        self.journal = Journal(cfg.run_dir)
        self.run_dir = self.journal.run_dir
        self.baseline = self._load_baseline()
        self._check_same_baseline()
        self.proposer = proposer or make_proposer(cfg.provider, seed=cfg.seed)
        self.personas: list[Persona] = [PERSONAS[p] for p in cfg.personas]
        self.report: Reporter = reporter or (lambda kind, data: None)
        self._lock = threading.RLock()
        self._inflight = 0
        self._stop: str | None = None
        self._training_stopped = False
        self._sql = None
        (self.run_dir / "evolve-config.json").write_text(cfg.model_dump_json(indent=2))

    # ================================================================= setup
    def _load_baseline(self) -> ModelConfig:
        base = load_config(self.cfg.baseline)
        if self.cfg.baseline_overrides:
            base = parse_config(merge_patch(base.model_dump(mode="json"), self.cfg.baseline_overrides),
                                "baseline_overrides")
        return base

    def _check_same_baseline(self) -> None:
        """A journal is only valid for one baseline Φ: scores, noise floor and de-duplication keys all
        refer to it. Resuming after the baseline changed (another file, or new defaults after an
        upgrade) would mix incomparable numbers, so it is refused."""
        old = self.journal.state.hypotheses.get(BASELINE_ID)
        now = canonical.fingerprint(self.baseline, None)
        if old is not None and old.fingerprint != now:
            raise ConfigError(
                f"run_dir {self.run_dir} was started with another baseline Φ (fingerprint {old.fingerprint}, now "
                f"{now}); its scores are not comparable",
                hint="use a new run_dir, and set warm_start.journal to this one to carry its best findings over",
            )

    def spend(self) -> Spend:
        st = self.journal.state
        return Spend(st.usage.input_tokens + st.usage.output_tokens, st.usage.dollars, st.train_seconds, st.evaluations)

    # ================================================================= the run
    def run(self) -> EvolutionResult:
        try:
            with ThreadPoolExecutor(max_workers=self.cfg.workers, thread_name_prefix="candidate") as pool:
                self.pool = pool
                self._measure_baseline()
                if self._stop is None and self.cfg.warm_start.journal is not None:
                    self._warm_start()
                for gen in range(1, self.cfg.generations + 1):
                    if self._stop is not None:
                        break
                    if gen in self.journal.state.generations_done:
                        continue
                    self._generation(gen)
        finally:
            if self._sql is not None:
                self._sql.close()
        reason = self._stop or "completed all generations"
        self.journal.stop(reason)
        self.report("stop", {"reason": reason})
        return self.result(reason)

    def result(self, reason: str) -> EvolutionResult:
        hs = [h for h in self.journal.hypotheses if h.id != BASELINE_ID]
        winners = sorted([h for h in hs if h.verdict == "better"],
                         key=lambda h: -(h.gain or 0) / max(h.noise_floor or 1e-12, 1e-12))
        best = {}
        for p in self.personas:
            scored = [h for h in hs if h.persona == p.name and p.metric in h.offline]
            best[p.name] = ranked(scored, p.metric, p.lower_is_better)[0] if scored else None
        counts: dict[str, int] = {}
        for h in hs:
            counts[h.phase] = counts.get(h.phase, 0) + 1
        return EvolutionResult(self.run_dir, reason, self.journal.state.baseline, winners, best, counts, self.spend(),
                               sorted(self.journal.state.generations_done))

    def _halt(self, reason: str, training: bool = False) -> None:
        """Stop proposing; with training=True (a training budget) also stop starting runs."""
        if self._stop is None:
            self._stop = reason
        if training:
            self._training_stopped = True

    # ================================================================= baseline and noise floor
    def _measure_baseline(self) -> None:
        if self.journal.state.baseline:
            return
        seeds = baseline_seeds(self.baseline.training.seed, self.cfg.noise.baseline_seeds)
        if BASELINE_ID not in self.journal.state.hypotheses:
            self.journal.add(Hypothesis(
                id=BASELINE_ID, generation=0, persona="baseline", component="baseline", category="baseline",
                explanation="the current production configuration Φ", origin="baseline",
                fingerprint=canonical.fingerprint(self.baseline, None), phase="Validated",
            ))
        self.report("baseline", {"seeds": seeds})
        self._train(BASELINE_ID, seeds)
        h = self.journal.get(BASELINE_ID)
        if h.phase == "Failed":
            raise TrainingError(f"the baseline failed to train: {h.reason}",
                                hint=f"see {self.run_dir / 'candidates' / BASELINE_ID}/seed-*/train.log")
        if len(self._runs(h)) < len(seeds):
            self._halt(self._stop or "budget exhausted while measuring the baseline")
            return
        scores = self._scores(h)
        self.journal.set_baseline(scores, seeds)
        self.journal.update(BASELINE_ID, phase="Scored", offline=scores, reason="baseline: seed-to-seed noise floor")

    # ================================================================= warm start (lesson L3)
    def _warm_start(self) -> None:
        ws = self.cfg.warm_start
        if any(h.origin.startswith("warm-start:") for h in self.journal.hypotheses):
            pending = [h for h in self.journal.generation_ids(0) if h.phase in ("Proposed", "Training")]
        else:
            prev = Journal(ws.journal, readonly=True)
            pending = []
            for p in self.personas:
                mine = [h for h in prev.hypotheses if h.persona == p.name and p.metric in h.offline and h.delta]
                order = {"better": 0, "promising": 1}
                mine.sort(key=lambda h: (order.get(h.verdict or "", 2),
                                         h.offline[p.metric].mean * (1 if p.lower_is_better else -1)))
                for old in mine[: ws.k]:
                    hid = self.journal.next_id(0)
                    h = self._admit(0, p, {
                        "category": "exploit", "delta": old.delta, "predicted_effect": old.predicted_effect,
                        "explanation": f"[warm start from {prev.run_dir.name}/{old.id}] {old.explanation}",
                        "meta": {**old.meta, "warm_start_of": old.id},
                    }, origin=f"warm-start:{prev.run_dir.name}/{old.id}", hid=hid)
                    if h.phase == "Proposed":
                        pending.append(h)
        self._train_many([h.id for h in pending])

    # ================================================================= one generation
    def _generation(self, gen: int) -> None:
        j = self.journal
        if gen not in j.state.generations_started:
            j.mark_generation(gen, "started")
        self.report("generation", {"generation": gen, "of": self.cfg.generations})
        for p in self.personas:
            if self._stop is not None:
                break
            if any(h.persona == p.name for h in j.generation_ids(gen)):
                continue  # proposed before a restart: never ask (and pay) twice
            self._wake_up(gen, p)
        # train what is proposed (and re-run what a kill interrupted)
        self._train_many([h.id for h in j.generation_ids(gen) if h.phase in ("Proposed", "Training")])
        if self.cfg.repair:
            self._repairs(gen)
        self._confirm(gen)
        if self._stop is None:
            j.mark_generation(gen, "done")

    def _wake_up(self, gen: int, p: Persona) -> None:
        reason = llm_exhausted(self.cfg.budgets, self.spend())
        if reason:
            self._halt(reason)
            return
        request = ProposalRequest(p, gen, self.cfg.quotas.as_dict(), "", self.baseline, self.journal)
        request.prompt = self.prompt_for(p)
        result = self._ask(request)
        if result.error:
            hid = j_id = self.journal.next_id(gen)
            self.journal.add(Hypothesis(
                id=j_id, generation=gen, persona=p.name, component=p.components[0], category="explore",
                origin=self._origin(), phase="Rejected", reason=f"unusable LLM output: {result.error}",
                failure=Failure(phase="Proposed", stage="llm", reason=result.error),
                meta={"raw": result.raw_text[:4000]},
            ))
            self.report("rejected", {"id": hid, "reason": result.error})
            return
        total = sum(self.cfg.quotas.as_dict().values())
        for i, prop in enumerate(result.proposals):
            if i >= total:
                h = self._admit(gen, p, prop)
                if h.phase == "Proposed":
                    self.journal.reject(h.id, f"over the wake-up quota of {total} proposals", stage="quota")
                continue
            self._admit(gen, p, prop)
        if p.uses_sql and result.queries:
            self._run_queries(gen, p, result.queries[: self.cfg.sql.max_queries])

    def _ask(self, request: ProposalRequest) -> ProposerResult:
        result = ProposerResult(error="not asked")
        for _attempt in range(self.cfg.provider.retries + 1):
            result = self.proposer.propose(request)
            if result.input_tokens or result.output_tokens:
                dollars = cost_usd(result.model or self.proposer.model, result.input_tokens, result.output_tokens,
                                   self.cfg.provider.prices)
                self.journal.record_usage(self.proposer.name, result.model or self.proposer.model,
                                          result.input_tokens, result.output_tokens, dollars)
            if not result.error:
                return result
            if llm_exhausted(self.cfg.budgets, self.spend()):
                break
        return result

    def _origin(self) -> str:
        return f"{self.proposer.name}:{self.proposer.model}"

    # ================================================================= prompts
    def prompt_for(self, p: Persona, repair_of: Hypothesis | None = None) -> str:
        base = self.journal.state.baseline
        shown = PROMPT_METRICS.get(p.name, METRICS)
        head = "BASELINE: " + ", ".join(f"{k}={base[k].mean:.5g}±{base[k].std:.2g} (n={base[k].n})"
                                        for k in shown if k in base) if base else "BASELINE: not measured yet"
        pool = [h for h in self.journal.hypotheses if h.id != BASELINE_ID]
        text = head + "\n" + render_journal(pool, p.metric, p.lower_is_better, self.cfg.journal_tokens,
                                            components=p.components, show_metrics=shown)
        floor = None
        if p.metric in base:
            floor = noise_floor(base[p.metric], None, 1, self.cfg.noise)
        return build_prompt(p, p.view(self.baseline), text, self.cfg.quotas.as_dict(), self.cfg.online_metrics, floor,
                            sql_output=self._sql_output(p) if p.uses_sql else None, steering=self.cfg.steering,
                            repair_of=repair_of)

    # ================================================================= SQL analyses (reward persona)
    def _sql_tool(self):
        if self._sql is None:
            from cambrian.agents.sql import SqlTool, build_database

            db = build_database(self.data_dir, self.run_dir)
            self._sql = SqlTool(db, max_rows=self.cfg.sql.max_rows, timeout_s=self.cfg.sql.timeout_s)
        return self._sql

    def _sql_output(self, p: Persona) -> str:
        if not self.cfg.sql.enabled:
            return "(SQL analysis is disabled)"
        analyses = [a for a in self.journal.state.analyses if a["persona"] == p.name]
        if not analyses:
            self._run_queries(0, p, [{"question": q, "sql": s} for q, s in DEFAULT_QUERIES])
            analyses = [a for a in self.journal.state.analyses if a["persona"] == p.name]
        parts = [f"Q: {a['question']}\nSQL: {a['sql']}\n{a['output']}" for a in analyses[-6:]]
        return "\n\n".join(parts)

    def _run_queries(self, gen: int, p: Persona, queries: list[dict[str, str]]) -> None:
        if not self.cfg.sql.enabled:
            return
        tool = self._sql_tool()
        for q in queries:
            res = tool.query(q["sql"])
            self.journal.record_analysis(gen, p.name, q.get("question", ""), q["sql"], res.render(tool.max_chars))

    # ================================================================= admission (the fast-fail gate)
    def _admit(self, gen: int, p: Persona, prop: dict[str, Any], origin: str | None = None,
               hid: str | None = None, parent: str | None = None) -> Hypothesis:
        """Journal a proposal as Proposed, or as Rejected/Failed with the reason. Never raises."""
        j = self.journal
        category = prop.get("category") if prop.get("category") in CATEGORIES else "explore"
        h = Hypothesis(
            id=hid or j.next_id(gen), generation=gen, persona=p.name, component=p.components[0], category=category,
            explanation=str(prop.get("explanation", ""))[:4000], predicted_effect=str(prop.get("predicted_effect", ""))[:500],
            origin=origin or self._origin(), parent=parent, meta=dict(prop.get("meta") or {}),
        )
        raw = prop.get("delta")
        problem: tuple[str, str] | None = None
        delta: Delta | None = None
        if not isinstance(raw, dict):
            problem = ("parse", "the proposal has no delta object")
        elif isinstance(raw.get("patch"), dict) and "__invalid_patch_json__" in raw["patch"]:
            problem = ("parse", f"delta.patch_json is not valid JSON: {raw['patch']['__invalid_patch_json__']}")
        else:
            try:
                delta = canonical.delta_from(raw, "delta")
            except ConfigError as exc:
                problem = ("parse", str(exc))
        if delta is not None:
            h.component = delta.component
            h.delta = delta.model_dump(mode="json", exclude_none=True)
            h.delta_summary = delta.summary()
            if delta.component not in p.components:
                problem = ("persona", f"the {p.name} persona may change only {', '.join(p.components)}, "
                                      f"not {delta.component}")
        if problem is None and delta is not None:
            try:
                cfg = canonical.applied(self.baseline, delta)
                h.fingerprint = canonical.normalised(cfg).fingerprint()
            except ConfigError as exc:
                problem = ("parse", str(exc))
        if problem is not None:
            h.phase, h.reason = "Rejected", problem[1]
            h.failure = Failure(phase="Proposed", stage=problem[0], reason=problem[1])
            return self._add(h)
        dup = j.by_fingerprint(h.fingerprint)
        if dup is not None:
            h.phase = "Rejected"
            h.reason = f"duplicate of {dup.id} (same applied configuration {h.fingerprint}); not trained again"
            h.failure = Failure(phase="Proposed", stage="duplicate", reason=h.reason)
            return self._add(h)
        gate = static_gate(delta)
        if gate is not None:
            h.phase, h.reason = "Failed", f"failed at {gate.stage}: {gate.reason}"
            h.failure = gate
            return self._add(h)
        return self._add(h)

    def _add(self, h: Hypothesis) -> Hypothesis:
        h = self.journal.add(h)
        self.report("proposed" if h.phase == "Proposed" else h.phase.lower(), {"id": h.id, "reason": h.reason})
        return h

    # ================================================================= training
    def _runs(self, h: Hypothesis) -> dict[str, dict]:
        return dict(h.meta.get("runs", {}))

    def _scores(self, h: Hypothesis) -> dict[str, Score]:
        runs = self._runs(h).values()
        out = {}
        for m in METRICS:
            vals = [r[m] for r in runs if isinstance(r.get(m), (int, float))]
            if vals:
                out[m] = Score.of(vals)
        return out

    def _train_many(self, ids: list[str]) -> None:
        """First evaluation (one seed) of each hypothesis, in parallel up to `workers`."""
        seed = self.baseline.training.seed
        self._run_jobs([(hid, seed) for hid in ids])
        for hid in ids:
            h = self.journal.get(hid)
            if h.phase not in ("Failed", "Rejected") and str(seed) in self._runs(h):
                self._judge(hid)

    def _train(self, hid: str, seeds: list[int]) -> None:
        have = self._runs(self.journal.get(hid))
        self._run_jobs([(hid, s) for s in seeds if str(s) not in have])

    def _run_jobs(self, jobs: list[tuple[str, int]]) -> None:
        queue = list(jobs)
        running: dict[Future, tuple[str, int]] = {}
        while queue or running:
            while queue and len(running) < self.cfg.workers and not self._training_stopped:
                reason = training_exhausted(self.cfg.budgets, self.spend(), reserved=len(running))
                if reason:
                    self._halt(reason, training=True)
                    break
                hid, seed = queue.pop(0)
                if not self._start(hid, seed):
                    continue
                self.report("training", {"id": hid, "seed": seed})
                running[self.pool.submit(self._run_one, hid, seed)] = (hid, seed)
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                hid, seed = running.pop(fut)
                try:
                    outcome = fut.result()
                except Exception as exc:  # a bug in the runner must not kill the loop
                    outcome = RunOutcome(False, failure=Failure(phase="Training", stage="sandbox",
                                                                reason=f"{type(exc).__name__}: {exc}"))
                self._record(hid, seed, outcome)
        for hid, _seed in queue:  # left untrained by a budget: say so, keep them Proposed for a resume
            h = self.journal.get(hid)
            if h.phase == "Proposed":
                self.journal.update(hid, reason=f"not trained: {self._stop}")
        if self._training_stopped:
            return

    def _start(self, hid: str, seed: int) -> bool:
        """Journal the start of one run; False if it must not run (done, failed, interrupted twice)."""
        with self._lock:
            h = self.journal.get(hid)
            if h.phase in ("Failed", "Rejected") or str(seed) in self._runs(h):
                return False
            starts = dict(h.meta.get("starts", {}))
            if starts.get(str(seed), 0) >= 2:  # started twice, finished never: a kill hit it twice
                self.journal.fail(hid, Failure(phase="Training", stage="interrupted",
                                               reason=f"seed {seed} was interrupted twice while training"))
                return False
            starts[str(seed)] = starts.get(str(seed), 0) + 1
            fields: dict[str, Any] = {"meta": {**h.meta, "starts": starts}, "attempts": h.attempts + 1}
            if h.phase in ("Proposed", "Validated"):
                fields["phase"] = "Training"
            self.journal.update(hid, **fields)
            return True

    def _run_one(self, hid: str, seed: int) -> RunOutcome:
        h = self.journal.get(hid)
        delta = Delta.model_validate(h.delta) if h.delta else None
        work = self.run_dir / "candidates" / hid / f"seed-{seed}"
        return run_candidate(canonical.with_seed(self.baseline, seed), delta, self.data_dir, work,
                             self.cfg.limits, self.cfg.train_command)

    def _record(self, hid: str, seed: int, outcome: RunOutcome) -> None:
        with self._lock:
            self.journal.record_evaluation(hid, seed, outcome.wall_seconds, outcome.ok)
            h = self.journal.get(hid)
            if outcome.ok and outcome.metrics is not None:
                runs = self._runs(h)
                runs[str(seed)] = {k: outcome.metrics.get(k) for k in (*METRICS, "train_seconds")}
                self.journal.update(hid, meta={**h.meta, "runs": runs},
                                    train_seconds=h.train_seconds + outcome.wall_seconds)
                self.report("trained", {"id": hid, "seed": seed})
                if hid != BASELINE_ID and h.phase == "Training":  # first evaluation: judge it right away
                    self._judge(hid)
            else:
                failure = outcome.failure or Failure(phase="Training", stage="unknown", reason="no outcome")
                self.journal.update(hid, train_seconds=h.train_seconds + outcome.wall_seconds)
                self.journal.fail(hid, failure)
                self.report("failed", {"id": hid, "reason": failure.reason})

    # ================================================================= judging (noise floor)
    def _judge(self, hid: str) -> None:
        h = self.journal.get(hid)
        p = PERSONAS.get(h.persona)
        base = self.journal.state.baseline
        scores = self._scores(h)
        if p is None or p.metric not in scores or p.metric not in base:
            self.journal.update(hid, phase="Scored", offline=scores, reason="scored (no baseline to compare with)")
            return
        jd = judge(p.metric, scores[p.metric], base[p.metric], p.lower_is_better, self.cfg.noise)
        reason = jd.reason
        for extra in p.secondary_metrics:
            if extra in scores and extra in base:
                reason += f"; {extra} {scores[extra].mean:.4g} vs {base[extra].mean:.4g}"
        self.journal.update(hid, phase="Scored", offline=scores, primary_metric=p.metric, gain=jd.gain,
                            noise_floor=jd.floor, verdict=jd.verdict, reason=reason)
        self.report("scored", {"id": hid, "verdict": jd.verdict})

    def _confirm(self, gen: int) -> None:
        """Re-run the most promising candidates with extra seeds; only then can they be 'better'."""
        n = self.cfg.noise
        if n.confirm_top == 0 or self._training_stopped:
            return
        promising = [h for h in self.journal.hypotheses if h.verdict == "promising"]
        promising.sort(key=lambda h: -(h.gain or 0) / max(h.noise_floor or 1e-12, 1e-12))
        chosen = promising[: n.confirm_top]
        seeds = confirmation_seeds(self.baseline.training.seed, n.confirm_seeds)
        jobs = [(h.id, s) for h in chosen for s in seeds]
        jobs = [(hid, s) for hid, s in jobs if str(s) not in self._runs(self.journal.get(hid))]
        self._run_jobs(jobs)
        for h in chosen:
            h = self.journal.get(h.id)
            if h.phase == "Failed":
                continue
            if len(self._runs(h)) >= 1 + n.confirm_seeds:
                self._judge(h.id)

    # ================================================================= self-repair
    def _repairs(self, gen: int) -> None:
        j = self.journal
        children = {h.parent for h in j.hypotheses if h.parent}
        failed = [h for h in j.generation_ids(gen) if h.phase == "Failed" and h.parent is None and h.id not in children
                  and h.failure is not None and h.failure.stage in REPAIRABLE_STAGES and h.persona in PERSONAS]
        new_ids = []
        for h in failed:
            if self._stop is not None or llm_exhausted(self.cfg.budgets, self.spend()):
                break
            p = PERSONAS[h.persona]
            req = ProposalRequest(p, gen, {"exploit": 1}, self.prompt_for(p, repair_of=h), self.baseline, j, repair_of=h)
            result = self._ask(req)
            if result.error or not result.proposals:
                continue  # nothing to repair with; the failure stays in the journal
            prop = dict(result.proposals[0])
            prop["category"] = "exploit"
            child = self._admit(gen, p, prop, parent=h.id)
            if child.phase == "Proposed":
                new_ids.append(child.id)
        self._train_many(new_ids)


def static_gate(delta: Delta | None) -> Failure | None:
    """The cheap, side-effect-free part of the trainer's gate, run before any compute is spent."""
    if delta is None:
        return None
    try:
        if delta.code:
            from cambrian.trainer.codecheck import check_code

            check_code(delta.code, delta.component)
        reward = delta.patches().get("reward") or {}
        if reward:
            from cambrian.trainer.data import check_reward_sql

            for what in ("label", "weight"):
                if isinstance(reward.get(what), str):
                    check_reward_sql(reward[what], what)
    except GateError as exc:
        return Failure(phase="Validated", stage=exc.stage, reason=exc.reason)
    except ImportError:  # an older trainer without these checks: its subprocess gate still runs
        return None
    return None


def run_evolution(cfg: EvolveConfig, proposer: Proposer | None = None, reporter: Reporter | None = None) -> EvolutionResult:
    """The Python API: run (or resume) an evolution and return its result."""
    return Evolution(cfg, proposer=proposer, reporter=reporter).run()


def dump_json(result: EvolutionResult) -> str:
    return json.dumps(result.to_json(), indent=2, sort_keys=True, default=str)
