"""Cluster-mode adapter between Hypothesis objects and the agents (agents/).

- `journal_view` turns Hypothesis objects (plain dicts from the API server) into the agents' journal
  entries, so the same proposers and the same Online Agent run in cluster and local mode.
- `ClusterProposer` is the KubernetesPlatform's `proposer`: for one wake-up it asks the configured
  proposer (built-in, Gemini, OpenAI-compatible) once per persona for what the core allocated it (the
  action's allocation, reconcile/scheduling.py), in the core's training order, and
  returns Hypothesis specs (never code to run: deltas are data; plugin code runs only in training
  Jobs). Usage (tokens, dollars) rides on the first created Hypothesis's annotations, where
  `views.spend` counts it against the Evolution's budgets.
- `select_top_k` runs the Online Agent (built-in rule, or Gemini when the Evolution asks for it).

API keys come from the operator's environment (the chart mounts the Secret as GEMINI_API_KEY /
OPENAI_API_KEY; `spec.agent.apiKeySecretRef` names that Secret); the operator never reads Secrets.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Protocol

from cambrian.errors import ConfigError
from cambrian.operator import api
from cambrian.operator.reconcile.actions import ProposeHypotheses
from cambrian.operator.reconcile.scheduling import component_persona
from cambrian.operator.reconcile.views import A_DOLLARS, A_TOKENS, spend

log = logging.getLogger("cambrian.operator.proposing")

A_META = "cambrian.dev/proposal-meta"  # proposer bookkeeping (catalogue entry, sampled params) as JSON
A_ORIGIN = "cambrian.dev/origin"  # provider:model that proposed it
KEY_ENV = {"gemini": "GEMINI_API_KEY", "openai": "OPENAI_API_KEY"}


@dataclass
class ProposalBatch:
    """What one wake-up produced: Hypothesis specs (wire form) with their annotations, plus notes."""

    items: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # rejected proposals and errors, for events
    tokens: int = 0
    dollars: float = 0.0


# ---------------------------------------------------------------------------------------------
# Hypothesis objects -> the agents' journal
# ---------------------------------------------------------------------------------------------


def _score(m: Mapping[str, Any]):
    from cambrian.agents.journal import Score

    return Score(mean=float(m["value"]), std=float(m.get("std") or 0.0), n=int(m.get("seeds") or 1))


def journal_view(objs: Iterable[Mapping[str, Any]], spec: api.EvolutionSpec, baseline: dict) -> list:
    """Agents' `Hypothesis` entries for Hypothesis objects, with the gain, noise floor and verdict the reconcile
    core judged (operator/reconcile/noise.py) and a failure the proposer can repair."""
    from cambrian.agents.journal import Failure
    from cambrian.agents import canonical
    from cambrian.agents.journal import Hypothesis
    from cambrian.trainer.config import parse_config

    try:
        base_cfg = parse_config(baseline)
    except Exception:  # noqa: BLE001 - a bad baseline is reported by the Hypothesis reconcile
        base_cfg = None
    label = spec.data.declared_label()
    out = []
    for obj in objs:
        meta, s, st = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
        ann = meta.get("annotations") or {}
        origin = s.get("origin") or {}
        component = s.get("component", "optimizer")
        delta = api.trainer_delta_json(component, s.get("delta"))
        fp = None
        if base_cfg is not None:
            try:
                fp = canonical.fingerprint(base_cfg, canonical.delta_from(delta), label)
            except (ConfigError, ValueError):
                fp = None
        try:
            extra = json.loads(ann.get(A_META, "{}"))
        except ValueError:
            extra = {}
        metric = st.get("offlineMetric") or spec.objective.offline.for_component(component).metric
        offline = {k: _score(v) for k, v in (st.get("proxyMetrics") or {}).items() if isinstance(v, Mapping) and "value" in v}
        gain, floor, verdict = st.get("gain"), st.get("noiseFloor"), st.get("verdict")
        phase = st.get("phase") or "Proposed"
        failure = None
        if phase == "Failed" and st.get("failureStage"):
            failure = Failure(phase="Training", stage=st["failureStage"], reason=st.get("reason") or "")
        online = {}
        if st.get("online"):
            online = {"decision": st["online"].get("decision"), "matured": st["online"].get("decision") is not None}
            effect = online_effect(st["online"], spec.objective.north_star[0].name)
            if effect is not None:  # what the surrogate learns from (agents/surrogate.py TARGET)
                online["effect"] = effect
        out.append(Hypothesis(
            id=meta["name"], generation=int(origin.get("wakeup") or 0), persona=origin.get("persona") or component_persona(component),
            component=component, category=origin.get("category") or "explore", explanation=s.get("explanation", ""),
            delta=delta, fingerprint=fp, origin=ann.get(A_ORIGIN, origin.get("kind", "")),
            meta=extra if isinstance(extra, dict) else {}, phase=phase, attempts=int(st.get("attempts") or 0),
            offline=offline, primary_metric=metric, gain=gain, noise_floor=floor, verdict=verdict,
            reason=st.get("reason") or "", online=online, failure=failure, parent=origin.get("repairOf"),
            created_at=_epoch(meta.get("creationTimestamp")),
        ))
    return out


def online_effect(result: Mapping[str, Any], north_star: str) -> float | None:
    """The relative north-star effect a concluded rollout measured for this hypothesis's own arm (the only
    arm when the status predates `arm`)."""
    effects = [e for e in result.get("effects") or [] if e.get("metric") == north_star and e.get("relative")]
    mine = [e for e in effects if e.get("arm") == result.get("arm")] if result.get("arm") else effects
    return float(mine[0]["estimate"]) if len(mine) == 1 else None


def _epoch(ts: Any) -> float:
    from datetime import datetime

    if not ts:
        return 0.0
    return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()


class _JournalView:
    """The read side of `agents.journal.Journal` that proposers use, over a list of entries."""

    def __init__(self, hypotheses: list):
        self.hypotheses = hypotheses


# ---------------------------------------------------------------------------------------------
# The proposer
# ---------------------------------------------------------------------------------------------


def provider_settings(agent: api.Agent, env: Mapping[str, str] | None = None):
    """ProviderSettings for the Evolution's agent; the key is read from the operator's environment."""
    from cambrian.agents.settings import ProviderSettings

    env = os.environ if env is None else env
    key_env = None
    if agent.provider in KEY_ENV:
        ref = agent.api_key_secret_ref
        # A per-Secret variable wins (CAMBRIAN_KEY_<SECRET>_<KEY>), else the chart's GEMINI/OPENAI_API_KEY.
        if ref is not None:
            specific = "CAMBRIAN_KEY_" + "_".join(x.upper().replace("-", "_").replace(".", "_") for x in (ref.name, ref.key))
            key_env = specific if env.get(specific) else KEY_ENV[agent.provider]
        else:
            key_env = KEY_ENV[agent.provider]
        if not env.get(key_env):
            raise ConfigError(f"spec.agent.provider is {agent.provider} but the operator has no {key_env}",
                              hint="mount the Secret named in spec.agent.apiKeySecretRef as that variable (chart values)")
    return ProviderSettings(kind=agent.provider, model=agent.model, base_url=agent.base_url, api_key_env=key_env)


def hypothesis_spec(evolution: str, wakeup: int, persona: str, prop: Mapping[str, Any],
                    repair_of: str | None = None) -> dict[str, Any]:
    """A proposal -> HypothesisSpec wire form. Raises ConfigError (naming the field) when invalid."""
    delta = prop.get("delta")
    if not isinstance(delta, dict):
        raise ConfigError("the proposal has no delta object")
    component = delta.get("component")
    body: dict[str, Any] = {"patch": delta.get("patch") or None, "also": delta.get("also") or None}
    if delta.get("code"):
        body["code"] = delta["code"]
    body = {k: v for k, v in body.items() if v}
    category = prop.get("category") if prop.get("category") in ("explore", "exploit", "innovate") else "explore"
    spec = {
        "evolutionRef": {"name": evolution},
        "component": component,
        "explanation": (str(prop.get("explanation") or "") or f"{persona} proposal")[:8192],
        "predictedEffect": {"description": str(prop.get("predicted_effect") or "")[:4096]} if prop.get("predicted_effect") else {},
        "delta": body,
        "origin": {"kind": "persona", "persona": persona, "category": category, "wakeup": wakeup,
                   **({"repairOf": repair_of} if repair_of else {})},
    }
    return api.parse_spec("Hypothesis", spec).wire()


class ProposalRecord(Protocol):
    """Where a platform keeps a wake-up's answer between asking the proposer and creating its Hypotheses
    (durable: a ConfigMap in a cluster, a file locally), under the wake-up's name prefix."""

    def load(self, prefix: str) -> dict[str, Any] | None: ...

    def save(self, prefix: str, record: dict[str, Any]) -> None: ...

    def drop(self, prefix: str) -> None: ...


def propose_wakeup(action: ProposeHypotheses, existing: list[Mapping[str, Any]], proposer: Callable,
                   record: ProposalRecord, create: Callable[[str, dict, dict[str, str], dict[str, str]], bool],
                   charge: Callable[[int, int, float], None]) -> tuple[str, bool] | None:
    """One wake-up, shared by both platforms: ask the proposer, keep its answer durably, then create the
    Hypothesis objects `{prefix}-{i}` (`create(name, spec, labels, annotations)`) that do not exist yet, and
    drop the record. A replay after a restart creates what the recorded answer still lacks (a kill between
    two creates loses nothing) and asks nobody again (an LLM answer is paid for once). `create` returns
    whether the object exists afterwards (False: admission refused it). The wake-up's LLM spend rides on its
    first Hypothesis; when none carries it, `charge(wakeup, tokens, dollars)` books it on the Evolution
    (views.A_UNATTRIBUTED). Returns the event message and whether it is a warning; None when the wake-up
    was complete already."""
    prefix = action.name_prefix
    have = {h["metadata"]["name"] for h in existing if h["metadata"]["name"].startswith(f"{prefix}-")}
    saved = record.load(prefix)
    if saved is None:
        # every Hypothesis was created before its record was dropped, or none was and the spend was booked
        if have or action.wakeup <= action.charged_through:
            log.info("wake-up %s of %s was already proposed; not asking again", action.wakeup, action.owner.name)
            return None
        saved = _ask(action, existing, proposer)
        record.save(prefix, saved)
    carried = False  # does the first Hypothesis, which carries the spend, exist?
    for i, (name, spec, labels, annotations) in enumerate(saved["objects"]):
        exists = name in have or create(name, spec, labels, annotations)
        if i == 0:
            carried = exists
    if not carried and (saved.get("tokens") or saved.get("dollars")):
        charge(action.wakeup, int(saved.get("tokens") or 0), float(saved.get("dollars") or 0.0))
    record.drop(prefix)
    return saved["message"], saved["warning"]


def _ask(action: ProposeHypotheses, existing: list[Mapping[str, Any]], proposer: Callable) -> dict[str, Any]:
    batch = proposer(action, existing)
    specs = batch.items if hasattr(batch, "items") else [(spec, {}) for spec in batch]
    objs = [[f"{action.name_prefix}-{i}", spec, {"cambrian.dev/wakeup": str(action.wakeup)}, dict(annotations or {})]
            for i, (spec, annotations) in enumerate(specs)]
    tokens, dollars = int(getattr(batch, "tokens", 0) or 0), float(getattr(batch, "dollars", 0.0) or 0.0)
    if objs and (tokens or dollars):  # the first Hypothesis carries the wake-up's spend (views.spend)
        objs[0][3].update({A_TOKENS: str(tokens), A_DOLLARS: f"{dollars:.6f}"})
    notes = list(getattr(batch, "notes", []))
    message = f"wake-up {action.wakeup}: {len(specs)} hypothesis(es)" + (f"; {'; '.join(notes)}"[:900] if notes else "")
    return {"objects": objs, "message": message, "warning": bool(notes) and not specs, "tokens": tokens,
            "dollars": dollars}


class ClusterProposer:
    """`proposer(action, existing) -> ProposalBatch` for KubernetesPlatform.propose."""

    def __init__(self, make: Callable[[Any, int], Any] | None = None, env: Mapping[str, str] | None = None):
        from cambrian.agents.proposers import make_proposer

        self._make = make or (lambda settings, seed: make_proposer(settings, seed=seed))
        self._env = env

    def __call__(self, action: ProposeHypotheses, existing: list[Mapping[str, Any]]) -> ProposalBatch:
        from cambrian.agents import canonical
        from cambrian.agents.budgets import cost_usd
        from cambrian.agents.personas import PERSONAS, reward_columns
        from cambrian.agents.proposers.base import ProposalRequest
        from cambrian.trainer.config import parse_config

        batch = ProposalBatch()
        spec = api.parse_spec("Evolution", action.evolution_spec)
        try:
            proposer = self._make(provider_settings(spec.agent, self._env), action.wakeup)
        except ConfigError as exc:
            batch.notes.append(f"no proposer: {exc}")
            return batch
        baseline = parse_config(action.baseline)
        schema = spec.data.declared()  # its proxies and columns, not the world's
        columns = tuple(reward_columns(schema))  # a reward may read only what the data declares
        journal = _JournalView(journal_view(existing, spec, action.baseline))
        label = spec.data.declared_label()
        unchanged = canonical.fingerprint(baseline, None, label)  # a proposal with this key replicates the champion
        taken = {h.fingerprint for h in journal.hypotheses if h.fingerprint} | {unchanged}
        used = spend(existing)  # the action's figure also counts what wake-ups without Hypotheses spent
        used = replace(used, tokens=max(used.tokens, action.tokens_spent), dollars=max(used.dollars, action.dollars_spent))
        budgets = spec.agent.budgets

        def spent() -> bool:
            return (budgets.tokens is not None and used.tokens + batch.tokens >= budgets.tokens) or (
                budgets.dollars is not None and used.dollars + batch.dollars >= budgets.dollars)

        def ask(persona, asked: dict[str, int], repair_of=None):
            request = ProposalRequest(persona, action.wakeup, asked, "", baseline, journal,  # type: ignore[arg-type]
                                      repair_of=repair_of, columns=columns, schema=schema)
            if getattr(proposer, "name", "") != "builtin":
                request.prompt = _prompt(persona, baseline, journal.hypotheses, asked, spec, schema, repair_of)
            result = proposer.propose(request)
            batch.tokens += int(result.input_tokens + result.output_tokens)
            if result.input_tokens or result.output_tokens:
                batch.dollars += cost_usd(result.model or proposer.model, result.input_tokens, result.output_tokens)
            return result

        def admit(persona, i: int, prop: Mapping[str, Any], repair_of: str | None = None) -> bool:
            who = f"repair of {repair_of}" if repair_of else persona.name
            delta = prop.get("delta") if isinstance(prop.get("delta"), dict) else {}
            if delta.get("component") not in persona.components:
                batch.notes.append(f"{who}: proposal {i} changes {delta.get('component')!r}, outside the persona")
                return False
            try:
                hs = hypothesis_spec(action.owner.name, action.wakeup, persona.name, prop, repair_of)
            except ConfigError as exc:
                batch.notes.append(f"{who}: proposal {i} rejected: {exc}")
                return False
            fp = _fingerprint(baseline, hs, label)
            if fp is not None and fp in taken:
                batch.notes.append(f"{who}: proposal {i} " + ("changes nothing (it gives the champion's own Φ)"
                                   if fp == unchanged else f"duplicates an earlier hypothesis ({fp})") + "; dropped")
                return False
            taken.add(fp)
            ann = {A_ORIGIN: f"{getattr(proposer, 'name', '?')}:{getattr(proposer, 'model', '?')}"}
            if prop.get("meta"):
                ann[A_META] = json.dumps(prop["meta"], sort_keys=True, default=float)
            batch.items.append((hs, ann))
            return True

        # Each persona is asked for what the core allocated it (reconcile/scheduling.py), best first.
        for name, asked in action.asks():
            total = sum(asked.values())
            if total <= 0:
                continue
            if spent():
                batch.notes.append(f"LLM budget spent before asking the {name} persona")
                break
            persona = declared_persona(name, spec, schema)
            result = ask(persona, asked)
            if result.error:
                batch.notes.append(f"{name}: unusable proposer output: {result.error}")
                continue
            accepted = 0
            for i, prop in enumerate(result.proposals):
                if accepted >= total:
                    batch.notes.append(f"{name}: proposal {i} is over the wake-up quota of {total}; dropped")
                    continue
                accepted += admit(persona, i, prop)
        batch.items = in_training_order(batch.items, action.order)
        # Self-repair: each failed hypothesis the core chose goes back to its persona once, with its error.
        by_id = {h.id: h for h in journal.hypotheses}
        for failed in action.repairs:
            entry = by_id.get(failed)
            if entry is None or entry.persona not in PERSONAS:
                continue
            if spent():
                batch.notes.append(f"LLM budget spent before repairing {failed}")
                break
            result = ask(declared_persona(entry.persona, spec, schema), {"exploit": 1}, repair_of=entry)
            if result.error or not result.proposals:
                batch.notes.append(f"repair of {failed}: {result.error or 'the proposer had no fix'}")
                continue
            admit(PERSONAS[entry.persona], 0, {**result.proposals[0], "category": "exploit"}, repair_of=failed)
        return batch  # propose_wakeup books batch.tokens and batch.dollars


def in_training_order(items: list, order: tuple[str, ...]) -> list:
    """The wake-up's Hypotheses arranged as the core's `order` says (one persona per slot; names follow this
    order, and so does training); a persona's own proposals keep the proposer's order. A persona that gave
    fewer proposals than its slots leaves them to the next; anything beyond the order comes last."""
    if not order:
        return items
    queues: dict[str, list] = {}
    for item in items:
        queues.setdefault(item[0]["origin"]["persona"], []).append(item)
    out = [queues[p].pop(0) for p in order if queues.get(p)]
    return out + [item for q in queues.values() for item in q]


def _fingerprint(baseline, hs: Mapping[str, Any], label: str | None) -> str | None:
    """The de-duplication key of a Hypothesis spec's Φ; `label`: the data's declared label."""
    from cambrian.agents import canonical

    delta = api.trainer_delta_json(hs["component"], hs["delta"])
    try:
        return canonical.fingerprint(baseline, canonical.delta_from(delta), label)
    except (ConfigError, ValueError):
        return None


def declared_persona(name: str, spec: api.EvolutionSpec, schema):
    """The persona as the data and the Evolution's objective define its metric, for every proposer (the prompt
    names it; the built-in's TPE and its order of untried entries read it)."""
    from cambrian.agents.personas import for_declaration, get_persona

    persona = get_persona(name)
    return for_declaration(persona, schema, spec.objective.offline.for_component(persona.components[0]).metric)


def _prompt(persona, baseline, hypotheses: list, quotas: dict[str, int], spec: api.EvolutionSpec, schema,
            repair_of=None) -> str:
    from cambrian.agents.journal import render_journal
    from cambrian.agents.prompts import build_prompt

    text = render_journal([h for h in hypotheses if h.persona == persona.name] or hypotheses, persona.metric,
                          persona.lower_is_better, 20_000, components=persona.components)
    return build_prompt(persona, persona.view(baseline), text, quotas, [m.name for m in spec.objective.north_star], None,
                        repair_of=repair_of, schema=schema)


# ---------------------------------------------------------------------------------------------
# The Online Agent (top K)
# ---------------------------------------------------------------------------------------------


def online_agent(spec: api.EvolutionSpec, env: Mapping[str, str] | None = None):
    from cambrian.agents.online import GeminiRanker, OnlineAgent

    ranker = None
    if spec.agent.provider == "gemini":
        try:
            settings = provider_settings(spec.agent, env)
            key = (os.environ if env is None else env).get(settings.api_key_env or "")
            from google import genai
            from google.genai import types

            client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=spec.agent.base_url))
            ranker = GeminiRanker(model=spec.agent.model or "gemini-2.5-pro", client=client)
        except (ConfigError, ValueError) as exc:
            log.warning("online agent: Gemini ranker unavailable (%s); using the built-in rule", exc)
    return OnlineAgent(spec.top_k, ranker=ranker, north_star=[m.name for m in spec.objective.north_star],
                       guardrails=[f"{g.metric} {g.direction}" for g in spec.guardrails],
                       direction=spec.objective.north_star[0].direction)


def select_top_k(spec: api.EvolutionSpec, baseline: dict, hypotheses: list[Mapping[str, Any]], agent: Any = None):
    """The Online Agent's Selection over the Evolution's Hypothesis objects (gains as the core judged them). It
    is shown only the scored hypotheses the core may roll out: its choice is never one the core refuses."""
    from cambrian.operator.reconcile.noise import may_roll_out

    entries = [h for h in journal_view(hypotheses, spec, baseline) if h.phase != "Scored" or may_roll_out(h.verdict)]
    return (agent or online_agent(spec)).select(entries)


# ---------------------------------------------------------------------------------------------
# Off the reconcile path: a slow or hung provider delays only its own Evolution
# ---------------------------------------------------------------------------------------------


class OffPathProposer:
    """`proposer(action, existing)` that asks an LLM provider outside the reconcile.

    The first call for a wake-up starts the provider in a worker thread and raises
    ActionRefused(permanent=False): the Evolution's step stops there without persisting the wake-up
    (its status says Ready=False, Blocked: waiting for the answer) and the reconcile returns at once,
    so other Evolutions and every Hypothesis go on. Each attempt has `timeout_s`; a timeout or an
    exception is retried after `backoff_s`, doubled each time, up to `attempts`. A later step of the
    same wake-up gets the answer (or, after the last attempt, an empty batch whose notes say why:
    they end up in the wake-up's event) exactly once. Usage is counted from the answer that came back;
    an attempt that timed out or raised reports none. A hung attempt's thread cannot be killed; it is
    abandoned (daemon) and its late answer ignored.
    The built-in proposer needs no network and runs inline (`inline`)."""

    def __init__(self, inner: Callable, timeout_s: float = 120.0, attempts: int = 3, backoff_s: float = 5.0,
                 inline: Callable[[ProposeHypotheses], bool] | None = None):
        import threading

        self.inner, self.timeout_s, self.attempts, self.backoff_s = inner, timeout_s, max(1, attempts), backoff_s
        self.inline = inline or (lambda action: (action.evolution_spec.get("agent") or {}).get("provider", "builtin") == "builtin")
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, int], dict[str, Any]] = {}

    def __call__(self, action: ProposeHypotheses, existing: list[Mapping[str, Any]]) -> ProposalBatch:
        if self.inline(action):
            return self.inner(action, existing)
        import threading

        from cambrian.operator.platform.base import ActionRefused

        key = (action.owner.uid or action.owner.name, action.wakeup)
        with self._lock:
            call = self._calls.get(key)
            if call is None:
                call = self._calls[key] = {"done": threading.Event(), "result": None}
                threading.Thread(target=self._run, args=(action, list(existing), call), daemon=True,
                                 name=f"proposer-{action.owner.name}-{action.wakeup}").start()
        if not call["done"].is_set():
            provider = (action.evolution_spec.get("agent") or {}).get("provider", "?")
            raise ActionRefused(f"wake-up {action.wakeup}",
                                f"waiting for the {provider} proposer's answer (up to {self.attempts} attempt(s) "
                                f"of {self.timeout_s:g} s each)", False)
        with self._lock:
            self._calls.pop(key, None)
        return call["result"]

    def _run(self, action: ProposeHypotheses, existing: list, call: dict) -> None:
        import threading
        import time

        notes: list[str] = []
        result: ProposalBatch | None = None
        for attempt in range(1, self.attempts + 1):
            box: dict[str, Any] = {}

            def ask() -> None:
                try:
                    box["result"] = self.inner(action, existing)
                except Exception as exc:  # noqa: BLE001 - any provider failure is retried
                    box["error"] = f"{type(exc).__name__}: {exc}"

            worker = threading.Thread(target=ask, daemon=True)
            worker.start()
            worker.join(self.timeout_s)
            if "result" in box:
                result = box["result"]
                break
            notes.append(f"attempt {attempt}: " + (box.get("error") or f"no answer within {self.timeout_s:g} s")[:300])
            log.warning("wake-up %s of %s: proposer %s", action.wakeup, action.owner.name, notes[-1])
            if attempt < self.attempts:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        if result is None:
            result = ProposalBatch(notes=[f"the proposer gave no answer after {self.attempts} attempt(s)"])
        result.notes[:0] = notes
        call["result"] = result
        call["done"].set()


# ---------------------------------------------------------------------------------------------
# A wake-up in a child process: the proposers' libraries (optuna, numpy, the LLM clients) never load
# into the operator, and an attempt that overruns its time is killed, not abandoned
# ---------------------------------------------------------------------------------------------


def action_wire(action: ProposeHypotheses) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(action)


def action_from_wire(d: Mapping[str, Any]) -> ProposeHypotheses:
    from cambrian.operator.reconcile.actions import Owner

    return ProposeHypotheses(owner=Owner(**d["owner"]), wakeup=int(d["wakeup"]), name_prefix=d["name_prefix"],
                             quotas=tuple((str(p), int(n)) for p, n in d["quotas"]), personas=tuple(d["personas"]),
                             evolution_spec=dict(d.get("evolution_spec") or {}), baseline=dict(d.get("baseline") or {}),
                             repairs=tuple(d.get("repairs") or ()),
                             allocation=tuple((str(p), tuple((str(c), int(n)) for c, n in q))
                                              for p, q in d.get("allocation") or ()),
                             order=tuple(str(p) for p in d.get("order") or ()),
                             tokens_spent=int(d.get("tokens_spent") or 0),
                             dollars_spent=float(d.get("dollars_spent") or 0.0),
                             charged_through=int(d.get("charged_through") or 0))


def batch_wire(batch: ProposalBatch) -> dict[str, Any]:
    return {"items": [[spec, ann] for spec, ann in batch.items], "notes": batch.notes, "tokens": batch.tokens,
            "dollars": batch.dollars}


def batch_from_wire(d: Mapping[str, Any]) -> ProposalBatch:
    return ProposalBatch(items=[(dict(spec), dict(ann)) for spec, ann in d.get("items") or []],
                         notes=[str(n) for n in d.get("notes") or []], tokens=int(d.get("tokens") or 0),
                         dollars=float(d.get("dollars") or 0.0))


class ChildProposer:
    """`proposer(action, existing)` that runs ClusterProposer in a child python process (this module's
    `__main__`): the operator process never imports the proposers' libraries (optuna and numpy for the
    built-in one, the LLM clients), which a wake-up once a day would otherwise keep in its memory for
    good; `timeout_s` ends a hung attempt by killing the child. The child inherits the environment (the
    API keys) and answers one JSON object on stdout; its failures come back as exceptions."""

    def __init__(self, timeout_s: float | None = None, python: str | None = None):
        import sys

        self.timeout_s, self.python = timeout_s, python or sys.executable

    def __call__(self, action: ProposeHypotheses, existing: list[Mapping[str, Any]]) -> ProposalBatch:
        import subprocess

        payload = json.dumps({"action": action_wire(action), "existing": list(existing)}, default=str)
        try:
            out = subprocess.run([self.python, "-m", "cambrian.operator.proposing"], input=payload, text=True,
                                 capture_output=True, timeout=self.timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"the proposer process gave no answer within {self.timeout_s:g} s") from exc
        if out.returncode != 0:
            raise RuntimeError(f"the proposer process exited {out.returncode}: {out.stderr.strip()[-500:]}")
        return batch_from_wire(json.loads(out.stdout.strip().splitlines()[-1]))


def _child_main() -> None:
    """`python -m cambrian.operator.proposing`: one wake-up, JSON in on stdin, the ProposalBatch out on stdout."""
    import sys

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    request = json.loads(sys.stdin.read())
    batch = ClusterProposer()(action_from_wire(request["action"]), request["existing"])
    sys.stdout.write(json.dumps(batch_wire(batch), default=float) + "\n")


if __name__ == "__main__":
    _child_main()
