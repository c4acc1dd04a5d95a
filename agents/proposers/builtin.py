"""The built-in proposer for runs without an LLM key: a catalogue of known-good changes in all three
components, plus Optuna TPE for their numeric settings.

- explore: untried catalogue entries that move to another region (optimizer classes, widths ...);
- innovate: untried structural/semantic entries (DCN, code plugins, return-aware rewards ...);
- exploit: Optuna TPE over the numeric space of the best-scoring family so far, its history rebuilt
  from the journal on every call (so it survives restarts and needs no state of its own); a family with no
  history starts at its catalogue defaults (the prior's guess), not at a uniform draw.
Every proposal carries `meta = {entry, params}` so the journal can rebuild the Optuna history.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from cambrian.errors import ConfigError
from cambrian.agents import canonical
from cambrian.agents.journal import Hypothesis
from cambrian.agents.proposers.base import CATEGORIES, ProposalRequest, ProposerResult
from cambrian.trainer.config import RewardConfig


@dataclass(frozen=True)
class Dist:
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def optuna(self):
        import optuna

        if self.integer:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)


@dataclass(frozen=True)
class Entry:
    key: str
    persona: str
    component: str
    category: str  # explore | innovate (every entry with a space can also be exploited)
    patch: dict[str, Any]  # strings may contain {param} placeholders; bare "$param" values are replaced
    defaults: dict[str, float] = field(default_factory=dict)
    space: dict[str, Dist] = field(default_factory=dict)
    explanation: str = ""
    effect: str = ""
    code: str | None = None
    reads: tuple[str, ...] = ()  # the columns a reward's SQL reads (checked against its parse by the tests)
    no_op: dict[str, float] | None = None  # settings that repeat the declared label (a champion on it learns nothing new)
    targets: tuple[str, ...] = ()  # the offline metrics it is meant to raise: tried first when one is the objective

    def render(self, params: dict[str, float], label: str = "label") -> dict[str, Any]:
        """The delta at these settings; `{label}` is the champion's reward label (SQL), by default the declared
        label's column."""
        values = {**self.defaults, **params}

        def fill(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: fill(x) for k, x in v.items()}
            if isinstance(v, list):
                return [fill(x) for x in v]
            if isinstance(v, str) and v.startswith("$") and v[1:] in values:
                return values[v[1:]]
            if isinstance(v, str) and "{" in v:  # {a} is a parameter, {a_c} its complement 1 - a
                nums = {k: _sql_num(x) for k, x in values.items()}
                nums.update({f"{k}_c": _sql_num(1.0 - float(x)) for k, x in values.items()})
                return v.format(**nums, label=label)
            return v

        delta: dict[str, Any] = {"component": self.component, "patch": fill(self.patch)}
        if self.code:
            delta["code"] = self.code
        return delta


def _sql_num(x: float) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


LAYERNORM_MLP = '''\
class Model(nn.Module):
    """Field embeddings, concatenated, then an MLP with LayerNorm and GELU after every hidden layer."""

    def __init__(self, spec, cfg):
        super().__init__()
        d = cfg.embedding_dim
        self.fields = spec.fields  # user, item and the declared categorical features
        self.tables = nn.ModuleList(nn.Embedding(spec.size(f), d) for f in self.fields)
        for table in self.tables:
            nn.init.normal_(table.weight, std=cfg.embedding_init_std)
        self.dense = nn.Linear(len(spec.dense), d) if spec.dense else None
        dims = [spec.n_fields * d] + list(cfg.hidden)
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.GELU()]
        layers.append(nn.Linear(dims[-1], 1))
        self.head = nn.Sequential(*layers)

    def forward(self, batch):
        parts = [table(batch[f]) for f, table in zip(self.fields, self.tables)]
        if self.dense is not None:
            parts.append(self.dense(batch["dense"]))
        return self.head(torch.cat(parts, dim=1)).squeeze(-1)
'''

_CLICK = "CAST(click AS DOUBLE)"
_COMPLETION = "LEAST(GREATEST(completion, 0.0), 1.0)"
_RETURNED = "CAST(returned_next_day AS DOUBLE)"
_LIKE = 'CAST("like" AS DOUBLE)'

CATALOGUE: list[Entry] = [
    # ---- optimizer persona (val_loss)
    Entry("adamw", "optimizer", "optimizer", "explore", {"name": "AdamW", "lr": "$lr", "weight_decay": "$wd"},
          {"lr": 3e-3, "wd": 1e-4}, {"lr": Dist(3e-4, 3e-2, log=True), "wd": Dist(1e-6, 1e-2, log=True)},
          "AdamW decouples weight decay from the adaptive step, regularising embeddings without distorting updates.",
          "val_loss -0.5%"),
    Entry("adagrad", "optimizer", "optimizer", "explore", {"name": "Adagrad", "lr": "$lr"},
          {"lr": 0.05}, {"lr": Dist(5e-3, 0.3, log=True)},
          "Adagrad's per-coordinate step sizes suit sparse id embeddings that are updated rarely.", "val_loss -1%"),
    Entry("rmsprop", "optimizer", "optimizer", "explore", {"name": "RMSprop", "lr": "$lr", "params": {"alpha": 0.95}},
          {"lr": 1e-3}, {"lr": Dist(1e-4, 1e-2, log=True)},
          "RMSprop with a slower decay (the paper's discovery #1) smooths noisy gradients of rare items.",
          "val_loss -0.5%"),
    Entry("adam_lr", "optimizer", "optimizer", "explore", {"lr": "$lr"},
          {"lr": 1e-2}, {"lr": Dist(3e-4, 3e-2, log=True)},
          "A larger Adam step may converge further within the fixed number of epochs.", "val_loss -0.3%"),
    Entry("sgd_nesterov", "optimizer", "optimizer", "explore",
          {"name": "SGD", "lr": "$lr", "params": {"momentum": 0.9, "nesterov": True}},
          {"lr": 0.05}, {"lr": Dist(5e-3, 0.5, log=True)},
          "Nesterov momentum SGD generalises well when tuned, at a cost in convergence speed.", "val_loss ±0.5%"),
    Entry("more_epochs", "optimizer", "training", "innovate", {"epochs": "$epochs"},
          {"epochs": 8}, {"epochs": Dist(2, 12, integer=True)},
          "Training longer over the same logs lets embeddings of rare users and items converge.", "val_loss -1%"),
    Entry("small_batch", "optimizer", "training", "innovate", {"batch_size": "$bs"},
          {"bs": 256}, {"bs": Dist(64, 2048, log=True, integer=True)},
          "Smaller batches take more steps per epoch and add gradient noise that can help generalisation.",
          "val_loss -0.5%"),
    # ---- architecture persona (val_loss)
    Entry("wider", "architecture", "architecture", "explore", {"hidden": ["$h1", "$h2"]},
          {"h1": 128, "h2": 64}, {"h1": Dist(32, 512, log=True, integer=True), "h2": Dist(16, 256, log=True, integer=True)},
          "A wider tower has capacity for more user-item interactions.", "val_loss -0.3%"),
    Entry("embed32", "architecture", "architecture", "explore", {"embedding_dim": "$d"},
          {"d": 32}, {"d": Dist(8, 64, log=True, integer=True)},
          "Larger embeddings separate more topics per user and item.", "val_loss -0.3%"),
    Entry("dropout", "architecture", "architecture", "explore", {"dropout": "$p"},
          {"p": 0.1}, {"p": Dist(0.0, 0.5)},
          "Dropout regularises the tower against memorising the training days.", "val_loss -0.2%"),
    Entry("gelu", "architecture", "architecture", "explore", {"activation": "gelu"}, explanation=
          "GELU's smooth gate (the paper's discovery #4) often trains more stably than ReLU.", effect="val_loss -0.2%"),
    Entry("dcn", "architecture", "architecture", "innovate", {"name": "dcn", "cross_layers": "$c"},
          {"c": 2}, {"c": Dist(1, 4, integer=True)},
          "Explicit cross layers model user-topic x item-topic interactions that an MLP learns slowly.",
          "val_loss -0.5%"),
    Entry("deepfm", "architecture", "architecture", "innovate", {"name": "deepfm"}, explanation=
          "A factorisation-machine term adds pairwise feature interactions beside the deep tower.",
          effect="val_loss -0.5%"),
    Entry("layernorm_plugin", "architecture", "architecture", "innovate", {"params": {"plugin": "layernorm_mlp"}},
          explanation="LayerNorm in the sub-tower (the paper's discovery #4) stabilises activations across users "
          "with very different activity levels.", effect="val_loss -0.3%", code=LAYERNORM_MLP),
    # ---- reward persona (long_watch_corr primary, return_corr secondary)
    Entry("watch_weighted", "reward", "reward", "explore",
          {"label": _CLICK, "weight": "1.0 + LEAST(watch_seconds, 600.0) / {scale}"},
          {"scale": 60.0}, {"scale": Dist(10.0, 600.0, log=True)},
          "Weighting clicks by watch time makes the model favour items people actually watch.",
          "long_watch_corr +0.05", reads=("click", "watch_seconds")),
    Entry("completion", "reward", "reward", "explore", {"label": _COMPLETION},
          explanation="Completion rewards items that are watched to the end, not thumbnails that get clicked.",
          effect="long_watch_corr +0.05", reads=("completion",)),
    Entry("long_watch", "reward", "reward", "explore", {"label": "CAST(watch_seconds >= {t} AS DOUBLE)"},
          {"t": 60.0}, {"t": Dist(10.0, 300.0, log=True)},
          "A long-watch label targets the satisfaction surrogate directly.", "long_watch_corr +0.1", reads=("watch_seconds",),
          targets=("long_watch_corr",)),  # its label at the default t is long_watch_corr's own signal (60 s)
    Entry("click_completion", "reward", "reward", "innovate", {"label": f"{_CLICK} * {_COMPLETION}"},
          explanation="Multiplying click by completion discounts clickbait (clicked, then abandoned).",
          effect="long_watch_corr +0.03", reads=("click", "completion")),
    Entry("return_aware", "reward", "reward", "innovate",
          {"label": f"{_CLICK} * ({{a}} + {{a_c}} * {_RETURNED})"},
          {"a": 0.5}, {"a": Dist(0.0, 1.0)},
          "Clicks by users who come back the next day are evidence of satisfaction; down-weighting the others "
          "aligns the label with retention.", "long_watch_corr +0.02", reads=("click", "returned_next_day")),
    Entry("like_minus_hate", "reward", "reward", "innovate", {"label": f"{_CLICK} * (1.0 + \"like\" - hate) / 2.0"},
          explanation="Explicit feedback separates satisfying clicks (like) from regretted ones (hate).",
          effect="long_watch_corr +0.03", reads=("click", "hate", "like")),
    Entry("return_completion", "reward", "reward", "innovate",
          {"label": f"{_CLICK} * {_COMPLETION} * ({{a}} + {{a_c}} * {_RETURNED})"},
          {"a": 0.5}, {"a": Dist(0.0, 1.0)},
          "Multi-objective synthesis (the paper's discovery #5): completion times a retention factor.",
          "long_watch_corr +0.03", reads=("click", "completion", "returned_next_day")),
    # rewards that keep the champion's label and add what pleased users: tried first when likes are the objective
    # (like_corr), after the rest otherwise
    Entry("like_weighted", "reward", "reward", "explore", {"weight": f"1.0 + {{w}} * {_LIKE}"},
          {"w": 2.0}, {"w": Dist(0.5, 10.0, log=True)},
          "Weighting the champion's own label by likes makes the rows users were pleased by count more, without "
          "changing what the model learns to predict.", "like_corr +0.02", reads=("like",), targets=("like_corr",)),
    Entry("label_and_like", "reward", "reward", "innovate", {"label": f"{{a}} * ({{label}}) + {{a_c}} * {_LIKE}"},
          {"a": 0.5}, {"a": Dist(0.1, 0.9)},
          "Blending the champion's label with likes teaches the model what pleases users, not only what they watch "
          "or click.", "like_corr +0.05", reads=("label", "like"), targets=("like_corr",)),
]  # fmt: skip

# The prior: within each persona and category, the order in which untried entries are proposed.
PRIORITY = [
    "adam_lr", "adagrad", "adamw", "rmsprop", "sgd_nesterov", "more_epochs", "small_batch",
    "embed32", "wider", "gelu", "dropout", "dcn", "deepfm", "layernorm_plugin",
    "completion", "watch_weighted", "long_watch", "return_aware", "return_completion", "click_completion",
    "like_minus_hate", "label_and_like", "like_weighted",
]  # fmt: skip
CATALOGUE.sort(key=lambda e: PRIORITY.index(e.key))
ENTRIES = {e.key: e for e in CATALOGUE}


def _ident(name: str) -> str:
    """A declared column as a quoted SQL identifier (a column may be named like a keyword: the world's `like`), its
    braces doubled for Entry.render's placeholders."""
    return '"' + name.replace('"', '""').replace("{", "{{").replace("}", "}}") + '"'


def _lit(x: float) -> str:
    return repr(float(x))


def _grows_with(sql: str, ref: str, schema: Any) -> bool:
    """Is a declared expression (a label's, a proxy's signal) a non-decreasing function of the column `ref` alone
    (trainer/expressions.rises_with, parsed by sqlglot): then more of the column is better for the objective."""
    from cambrian.trainer.expressions import rises_with

    return rises_with(sql, ref, flag=schema.column(ref)[1] == "bool")


def declared_rewards(schema: Any) -> list[Entry]:
    """Reward entries derived from a data declaration (trainer/schema.py DataSchema) other than the world's, whose
    outcomes the hand-written catalogue above knows (its entries and their order stay the world's). The outcomes are
    the columns the declaration's objective rises with (_grows_with), so more of them is better: the label's column
    (a label without an expression, or one like `rating >= 4`), then each signal that a proxy's signal rises with
    (`rating`, `COALESCE(returned, 0)`); a signal read otherwise (`hate = 0`) or by no proxy may be a bad outcome
    and gives nothing. For each that a reward can read (int, float or bool), by what the declaration says of its
    range:
    - a range (the label's [min, max], other than [0, 1]): the outcome min-max scaled to [0, 1] as a graded label,
      a threshold label (its threshold tuned inside the range), the declared label weighted by the grade, and
      (innovate) weighted by how far the grade lies from the middle of the range;
    - 0/1 (bool, or the label's range [0, 1]): the outcome as the label (unless it is the declared label already),
      and the declared label weighted by it;
    - no range: any positive value as the label, and the declared label weighted by the log of the value.
    Each entry's `reads` is the one column its SQL reads; keys (`graded:rating`) name the column, so the journal's
    meta finds the entry again."""
    from cambrian.trainer.expressions import threshold_of
    from cambrian.trainer.schema import WORLD, row_columns

    if schema is None or schema == WORLD:
        return []
    names = {ref: name for name, ref in row_columns(schema).items()}
    label = schema.label
    out: list[Entry] = []
    labelled = [label.column] if label and (label.expr is None or _grows_with(label.expr, label.column, schema)) else []
    measured = [s for s in schema.signals if any(_grows_with(p.signal, s, schema) for p in schema.proxies)]
    for ref in dict.fromkeys((*labelled, *measured)):
        name, kind = names.get(ref), schema.column(ref)[1]
        if name is None or kind not in ("int", "float", "bool"):
            continue
        is_label = label is not None and ref == label.column
        if is_label and label.min < label.max:
            bounds: tuple[float, float] | None = (float(label.min), float(label.max))
        elif kind == "bool":
            bounds = (0.0, 1.0)
        else:
            bounds = None
        proxies = [p.name for p in schema.proxies if _grows_with(p.signal, ref, schema)]
        effect = f"{', '.join(proxies)} higher" if proxies else f"rankings that follow {ref} more closely"
        declared = f"the declared label ({label.expr or label.column})" if label else "the declared label"
        col, reads = _ident(name), (name,)
        if bounds is None:
            out += [
                Entry(f"positive:{name}", "reward", "reward", "explore", {"label": f"CAST({col} > 0 AS DOUBLE)"},
                      explanation=f"Any positive {ref} as the label: the rows with that outcome are the successes "
                      f"(its range is not declared, so no finer grade).", effect=effect, reads=reads),
                Entry(f"log_weight:{name}", "reward", "reward", "explore",
                      {"weight": f"1.0 + {{w}} * LN(1.0 + GREATEST({col}, 0.0))"}, {"w": 1.0},
                      {"w": Dist(0.1, 10.0, log=True)},
                      f"Weighting {declared} by 1 + w * ln(1 + {ref}) makes rows with more of that outcome count "
                      f"more, damped so a few large values do not dominate.", effect, reads=reads),
            ]
            continue
        lo, hi = bounds
        if (lo, hi) == (0.0, 1.0):
            if not (is_label and label.expr is None):  # the declared label already is this outcome
                out.append(Entry(f"signal_label:{name}", "reward", "reward", "explore",
                                 {"label": f"CAST({col} AS DOUBLE)"},
                                 explanation=f"Learning {ref} itself (0 or 1) as the label targets that outcome "
                                 f"directly instead of {declared}.", effect=effect, reads=reads))
            out.append(Entry(f"signal_weight:{name}", "reward", "reward", "explore",
                             {"weight": f"1.0 + {{w}} * CAST({col} AS DOUBLE)"}, {"w": 1.0},
                             {"w": Dist(0.1, 10.0, log=True)},
                             f"Weighting {declared} by 1 + w * {ref} makes the rows with that outcome count more.",
                             effect, reads=reads))
            continue
        span = hi - lo
        grade = f"(LEAST(GREATEST({col}, {_lit(lo)}), {_lit(hi)}) - {_lit(lo)}) / {_lit(span)}"
        where = f"its declared range [{lo:g}, {hi:g}]"
        # the declared label's own cut (`rating >= 4`): that threshold would repeat it, so it is never proposed
        own = threshold_of(label.expr, ref, kind == "int") if is_label and label.expr else None
        if kind == "int":
            low, high = math.floor(lo) + 1, math.ceil(hi)
            cut = Dist(low, high, integer=True) if low < high else None
            middle = min(max(math.ceil((lo + hi) / 2), low), high)
            if middle == own:
                middle = own - 1 if own - 1 >= low else own + 1
        else:
            cut, middle = Dist(lo + span / 10, hi - span / 10), lo + span / 2
            middle = middle if middle != own else lo + span * 0.4
        out.append(Entry(f"graded:{name}", "reward", "reward", "explore", {"label": grade},
                         explanation=f"A graded label: {ref} scaled from {where} to [0, 1] keeps how good each row "
                         f"was, which {declared} reduces to yes or no.", effect=effect, reads=reads))
        if cut is not None:
            out.append(Entry(f"threshold:{name}", "reward", "reward", "explore",
                             {"label": f"CAST({col} >= {{t}} AS DOUBLE)"}, {"t": middle}, {"t": cut},
                             f"A threshold label: {ref} >= t, with t tuned inside {where}; the declared cut need "
                             f"not be the one that ranks best.", effect, reads=reads,
                             no_op={"t": own} if own is not None else None))
        out.append(Entry(f"weighted:{name}", "reward", "reward", "explore",
                         {"weight": f"1.0 + {{w}} * {grade}"}, {"w": 1.0}, {"w": Dist(0.1, 10.0, log=True)},
                         f"Weighting {declared} by 1 + w * the grade of {ref} in {where} makes the best rows "
                         f"count most.", effect, reads=reads))
        out.append(Entry(f"confidence:{name}", "reward", "reward", "innovate",
                         {"weight": f"1.0 + {{w}} * ABS(2.0 * {grade} - 1.0)"}, {"w": 1.0},
                         {"w": Dist(0.1, 10.0, log=True)},
                         f"Rows at either end of {ref}'s {where.removeprefix('its ')} are clear judgements and the "
                         f"middle is lukewarm: weighting {declared} by the distance from the middle trusts the "
                         f"clear ones more.", effect, reads=reads))
    return out


def _objective_first(entries: list[Entry], metric: str) -> list[Entry]:
    """The entries meant to raise the objective's metric first, each group in its prior order: an Evolution that
    scores rewards by likes tries the rewards that read likes before the catalogue's watch-time ones."""
    return sorted(entries, key=lambda e: metric not in e.targets)


def _available_architectures() -> set[str]:
    """The names the trainer registers (from its config module: proposing never imports torch)."""
    from cambrian.trainer.config import ARCHITECTURE_NAMES

    return set(ARCHITECTURE_NAMES)


class BuiltinProposer:
    name = "builtin"
    model = "builtin"

    def __init__(self, seed: int = 0, catalogue: list[Entry] | None = None, plugins: bool = True,
                 shuffle: bool = False):
        self.seed = seed
        self.shuffle = shuffle
        self.catalogue = list(catalogue or CATALOGUE)
        archs = _available_architectures()
        self.catalogue = [
            e for e in self.catalogue if e.component != "architecture" or e.patch.get("name") in (None, *archs)
        ]
        if not plugins:
            self.catalogue = [e for e in self.catalogue if not e.code]

    # ------------------------------------------------------------------ helpers
    def _declared(self, request: ProposalRequest) -> list[Entry]:
        """The reward entries the request's declaration offers (declared_rewards: none on the world's)."""
        return declared_rewards(request.schema) if request.persona.name == "reward" else []

    def _entries(self, request: ProposalRequest) -> dict[str, Entry]:
        """Every entry a journal's meta may name: the catalogue's and the declaration's."""
        return {**ENTRIES, **{e.key: e for e in self._declared(request)}}

    def _usable(self, request: ProposalRequest) -> list[Entry]:
        """The persona's entries that the data can train, the catalogue's first: a reward reading a column the
        declaration lacks (the world's watch_seconds on MovieLens) would only fail its gate."""
        allowed = set(request.columns)
        mine = [e for e in (*self.catalogue, *self._declared(request)) if e.persona == request.persona.name]
        return _objective_first([e for e in mine if not allowed or set(e.reads) <= allowed], request.persona.metric)

    def _fingerprints(self, request: ProposalRequest) -> set[str]:
        """Keys not to propose: every earlier hypothesis's and the baseline's own (a change that changes nothing)."""
        return {h.fingerprint for h in request.journal.hypotheses if h.fingerprint} | {
            canonical.fingerprint(request.baseline, None, _label(request))}

    def _fp(self, request: ProposalRequest, delta: dict) -> str | None:
        try:
            return canonical.fingerprint(request.baseline, canonical.delta_from(delta), _label(request))
        except (ConfigError, ValueError):
            return None

    def _proposal(self, request: ProposalRequest, entry: Entry, params: dict, category: str,
                  note: str = "") -> dict[str, Any]:
        return {
            "category": category,
            "explanation": entry.explanation + (f" {note}" if note else ""),
            "predicted_effect": entry.effect,
            "delta": entry.render(params, request.baseline.reward.label),
            "meta": {"entry": entry.key, "params": {**entry.defaults, **params}},
        }

    @staticmethod
    def _repeats_declared_label(request: ProposalRequest, entry: Entry, params: dict) -> bool:
        """Settings at the entry's no-op point while the champion learns the declared label: the same labels
        under another spelling. De-duplication refuses most such spellings too (canonical_sql reads the declared
        label), but not every one (`rating > 3` on integer ratings); this keeps Optuna's trials off it."""
        if not entry.no_op or request.baseline.reward.label != RewardConfig().label:
            return False
        values = {**entry.defaults, **params}
        return all(k in values and float(values[k]) == float(v) for k, v in entry.no_op.items())

    def _history(self, request: ProposalRequest, entry: Entry) -> list[Hypothesis]:
        return [h for h in request.journal.hypotheses if h.meta.get("entry") == entry.key]

    def _best_family(self, request: ProposalRequest) -> Entry | None:
        p = request.persona
        entries = self._entries(request)
        scored = [
            h
            for h in request.journal.hypotheses
            if h.persona == p.name and p.metric in h.offline and entries.get(h.meta.get("entry", ""), None)
        ]
        scored = [h for h in scored if entries[h.meta["entry"]].space]
        if scored:
            best = sorted(scored, key=lambda h: h.offline[p.metric].mean * (1 if p.lower_is_better else -1))[0]
            return entries[best.meta["entry"]]
        spaced = [e for e in self._usable(request) if e.space]
        return spaced[0] if spaced else None

    def _tpe(self, request: ProposalRequest, entry: Entry, taken: set[str], tries: int = 12) -> dict | None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        p = request.persona
        if not self._history(request, entry):
            # Nothing of this family was measured: TPE's first trials would be uniform draws, so its first
            # trial is the catalogue's default settings, the prior's best guess (like Optuna's enqueue_trial).
            prop = self._proposal(request, entry, {}, "exploit", "(the family's default settings: nothing measured yet)")
            fp = self._fp(request, prop["delta"])
            if fp and fp not in taken:
                taken.add(fp)
                return prop
        dists = {k: d.optuna() for k, d in entry.space.items()}
        study = optuna.create_study(
            direction="minimize" if p.lower_is_better else "maximize",
            sampler=optuna.samplers.TPESampler(seed=self.seed * 1000 + request.generation, n_startup_trials=3),
        )
        for h in self._history(request, entry):
            params = {k: v for k, v in h.meta.get("params", {}).items() if k in dists}
            if set(params) != set(dists) or not all(dists[k]._contains(dists[k].to_internal_repr(v)) for k, v in params.items()):
                continue
            if p.metric in h.offline:
                trial = optuna.trial.create_trial(params=params, distributions=dists, value=h.offline[p.metric].mean)
            else:
                trial = optuna.trial.create_trial(params=params, distributions=dists, state=optuna.trial.TrialState.FAIL)
            study.add_trial(trial)
        for _ in range(tries):
            trial = study.ask(dists)
            params = dict(trial.params)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # keep asking distinct points
            if self._repeats_declared_label(request, entry, params):
                continue
            prop = self._proposal(request, entry, params, "exploit", "(numeric settings tuned by Optuna TPE)")
            fp = self._fp(request, prop["delta"])
            if fp and fp not in taken:
                taken.add(fp)
                return prop
        return None

    # ------------------------------------------------------------------ the interface
    def propose(self, request: ProposalRequest) -> ProposerResult:
        result = ProposerResult(model=self.model)
        taken = self._fingerprints(request)
        if request.repair_of is not None:
            prop = self._repair(request, taken)
            result.proposals = [prop] if prop else []
            return result
        mine = self._usable(request)
        # catalogue order is the prior (most often helpful first); `shuffle` trades it for variety
        pools = {c: [e for e in mine if e.category == c] for c in ("explore", "innovate")}
        if self.shuffle:
            rng = random.Random(f"{self.seed}:{request.persona.name}:{request.generation}")
            for pool in pools.values():
                rng.shuffle(pool)
        wanted = [(c, n) for c in CATEGORIES for n in range(request.quotas.get(c, 0))]
        for category, _ in wanted:
            prop = None
            if category in pools:
                prop = self._untried(request, pools[category], category, taken)
                if prop is None:  # this category's catalogue is used up: exploit instead
                    category = "exploit"
            if prop is None:
                family = self._best_family(request)
                prop = self._tpe(request, family, taken) if family else None
            if prop is None:  # exploit found nothing new: any untried entry at all
                prop = self._untried(request, pools.get("explore", []) + pools.get("innovate", []), "explore", taken)
            if prop is not None:
                result.proposals.append(prop)
        return result

    def _untried(self, request: ProposalRequest, pool: list[Entry], category: str, taken: set[str]) -> dict | None:
        for entry in pool:
            prop = self._proposal(request, entry, {}, category)
            fp = self._fp(request, prop["delta"])
            if fp and fp not in taken:
                taken.add(fp)
                return prop
        return None

    def _repair(self, request: ProposalRequest, taken: set[str]) -> dict | None:
        """Retry the failed family with settings moved halfway back towards its defaults/safer side."""
        parent = request.repair_of
        entry = self._entries(request).get(parent.meta.get("entry", "")) if parent else None
        if entry is None or not entry.space:
            return None
        params = dict(parent.meta.get("params", {}))
        for k, d in entry.space.items():
            v = float(params.get(k, entry.defaults.get(k, d.low)))
            v = (v * d.low) ** 0.5 if d.log else (v + d.low) / 2  # a smaller step/size is the safer side
            params[k] = int(round(v)) if d.integer else v
        prop = self._proposal(request, entry, params, "exploit", f"(repair of {parent.id}: smaller settings)")
        fp = self._fp(request, prop["delta"])
        if fp and fp not in taken:
            return prop
        return None


def _label(request: ProposalRequest) -> str | None:
    """The data's declared label, by which de-duplication reads reward SQL (as the operator's journal does)."""
    from cambrian.trainer.schema import WORLD

    return canonical.declared_label(request.schema if request.schema is not None else WORLD)
