"""`cambrian bench run fidelity`: do the trainer's offline proxies predict the online effect?

For each candidate change (a Delta on Φ0 in one of the four components: optimizer, architecture,
reward, training; including a clickbait reward and changes that should be neutral online):
* offline: train Φ0 and the candidate with the real trainer (gate, fit, evaluate) on the same logs of
  the calibrated world (or another of WORLDS: `--world hooked`, whose Φ0 learns watch time); offline signals
  are differences to Φ0: val_loss gain (Φ0 − candidate), long_watch_corr gain, return_corr gain, AUC gain,
  top_watch_share gain (the share of each user's held-out watch seconds in the rows the model ranks in that
  user's top 6%, what its own slates would have collected), like_corr gain (the scores' rank correlation with
  likes: the logs' trace of satisfaction), top_completion_share and top_like_share gains (the top 6%'s share of
  the watched fraction of each video and of the likes);
* online: serve each model to *all* users of a fresh copy of the world continuing from the end of the
  logs (`World.load`), for `online_days` days. Every copy has the same users and the same keyed random
  draws (common random numbers), so the difference between two copies is the models' effect alone:
  per user, minutes over the online days (0 on days away) under the candidate minus under Φ0; the
  effect is the mean difference / Φ0's mean, its standard error the paired per-user one;
* headline: Spearman rank correlation between each offline signal and the measured online effect on
  the north star (watch minutes per user); the clickbait trap's short-term and late effects are listed.

The effect is measured in the simulator with the hidden truth at hand, not by the online loop's
statistics: this benchmark asks what the proxies *could* know, not how fast a test finds out.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import stats

NORTH_STAR = "minutes"
SIGNALS = ("val_loss_gain", "long_watch_corr_gain", "return_corr_gain", "auc_gain", "top_watch_share_gain",
           "like_corr_gain", "top_completion_share_gain", "top_like_share_gain")
TRAP = "reward:clickbait"
RAW_METRICS = ("val_loss", "auc", "long_watch_corr", "return_corr", "top_watch_share", "like_corr", "top_completion_share",
               "top_like_share")  # kept per model as reported


@dataclass(frozen=True)
class Size:
    users: int
    log_days: int
    online_days: int
    epochs: int
    max_train_examples: int


QUICK = Size(users=200, log_days=4, online_days=5, epochs=1, max_train_examples=50_000)
FULL = Size(users=1000, log_days=8, online_days=21, epochs=2, max_train_examples=200_000)

WATCH_LABEL = "LEAST(watch_seconds / 300.0, 1.0)"
THUMB_CLICKS = "1.0 + 6.0 * click * GREATEST(thumb_intensity, 0.0)"  # clicks on eye-catching thumbnails weighed up

# name -> (component, delta). Φ0 trains clicks with Adam, an MLP, `epochs` epochs.
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "optimizer:lr_x3": ("optimizer", {"optimizer": {"lr": 0.009}}),
    "optimizer:lr_div3": ("optimizer", {"optimizer": {"lr": 0.001}}),
    "optimizer:adamw_wd": ("optimizer", {"optimizer": {"name": "AdamW", "weight_decay": 0.01}}),
    "optimizer:sgd_momentum": ("optimizer", {"optimizer": {"name": "SGD", "lr": 0.05, "params": {"momentum": 0.9}}}),
    "architecture:deepfm": ("architecture", {"architecture": {"name": "deepfm"}}),
    "architecture:dcn": ("architecture", {"architecture": {"name": "dcn"}}),
    "architecture:wide_emb32": ("architecture", {"architecture": {"embedding_dim": 32, "hidden": [128, 64]}}),
    "architecture:dropout": ("architecture", {"architecture": {"dropout": 0.3}}),
    "reward:watch_time": ("reward", {"reward": {"label": WATCH_LABEL}}),
    "reward:completed_click": ("reward", {"reward": {"label": "CASE WHEN click = 1 THEN completion ELSE 0.0 END"}}),
    "reward:no_hate": ("reward", {"reward": {"label": "CAST(click = 1 AND hate = 0 AS DOUBLE)"}}),
    "reward:like": ("reward", {"reward": {"label": "CAST(\"like\" AS DOUBLE)"}}),  # LIKE is an SQL keyword
    "reward:return_weighted": ("reward", {"reward": {"weight": "1.0 + 2.0 * click * returned_next_day"}}),
    # The trap: weigh clicks on eye-catching thumbnails (the observable trace of bait) up.
    TRAP: ("reward", {"reward": {"weight": THUMB_CLICKS}}),
    "training:more_epochs": ("training", {"training": {"epochs_factor": 3}}),
    "training:fewer_epochs": ("training", {"training": {"epochs_factor": 0.5}}),
    "training:seed": ("training", {"training": {"seed": 1}}),
    "training:batch_256": ("training", {"training": {"batch_size": 256}}),
    "training:recent_half": ("training", {"training": {"examples_factor": 0.5}}),
}


# The hooked world's product already ranks by watch time (Φ0's label), as a mature video service does; the
# reward changes are moves away from it, the trap the obvious one: learn what users click, eye-catching
# thumbnails weighed up. The other components' changes are the calibrated world's.
HOOKED_CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    **{k: v for k, v in CANDIDATES.items() if not k.startswith("reward:")},
    "reward:clicks": ("reward", {"reward": {"label": "label"}}),
    "reward:completed_click": CANDIDATES["reward:completed_click"],
    "reward:no_hate": CANDIDATES["reward:no_hate"],
    "reward:like": CANDIDATES["reward:like"],
    "reward:return_weighted": CANDIDATES["reward:return_weighted"],
    TRAP: ("reward", {"reward": {"label": "label", "weight": THUMB_CLICKS}}),
}


# The wary world's users leave when unsatisfied, so the changes worth trying on a watch-time product are the ones
# that weigh satisfaction in: six rewards on Φ0's watch label that use the logs' likes, hates and thumbnails. Some
# help online and some hurt (bench/README.md, fidelity on the wary world): the benchmark asks the proxies to tell.
WARY_CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    **HOOKED_CANDIDATES,
    "reward:watch_weighted_by_like": ("reward", {"reward": {"label": WATCH_LABEL, "weight": "1.0 + 2.0 * \"like\""}}),
    "reward:watch_unless_hated": ("reward", {"reward": {"label": f"{WATCH_LABEL} * (1 - hate)"}}),
    "reward:watch_and_like": ("reward", {"reward": {"label": f"0.5 * {WATCH_LABEL} + 0.5 * \"like\""}}),
    "reward:watch_eye_catching_down": ("reward", {"reward": {
        "label": WATCH_LABEL, "weight": "1.0 / (1.0 + 3.0 * click * GREATEST(thumb_intensity, 0.0))"}}),
    "reward:watch_weighted_by_hate": ("reward", {"reward": {"label": WATCH_LABEL, "weight": "1.0 + 4.0 * hate"}}),
    "reward:like_weighted_by_click": ("reward", {"reward": {"label": "CAST(\"like\" AS DOUBLE)", "weight": "1.0 + click"}}),
}


@dataclass(frozen=True)
class BenchWorld:
    """A world preset and the Φ0 its product runs (components beyond the size's training); the candidates are
    deltas on that Φ0, each component's patch merged into Φ0's as a Hypothesis' patch is."""

    preset: str
    base: dict[str, dict[str, Any]]
    candidates: dict[str, tuple[str, dict[str, Any]]]
    offline: dict[str, dict[str, str]] = field(default_factory=dict)  # the Evolution's objective.offline, if not the default


WATCH_TIME_PRODUCT = {"reward": {"label": WATCH_LABEL}}  # Φ0 of the worlds whose product ranks by watch time
WORLDS = {
    "calibrated": BenchWorld("calibrated", {}, CANDIDATES),
    "hooked": BenchWorld("hooked", WATCH_TIME_PRODUCT, HOOKED_CANDIDATES),
    # the hooked product and satisfaction-aware changes; its team scores reward changes by likes (like_corr): on
    # this world like_corr ranks the reward candidates' online effects best and gates the trap (bench/README.md)
    "wary": BenchWorld("wary", WATCH_TIME_PRODUCT, WARY_CANDIDATES,
                       {"reward": {"metric": "like_corr", "direction": "maximize"}}),
}
DEFAULT_WORLD = "calibrated"


def bench_world(name: str) -> BenchWorld:
    from cambrian.errors import ConfigError

    if name not in WORLDS:
        raise ConfigError(f"unknown benchmark world {name!r}; choose one of {', '.join(WORLDS)}")
    return WORLDS[name]


def candidate_config(size: Size, delta: dict[str, Any], base: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Φ0 (or Φ0 + delta) as a config mapping; training factors scale Φ0's epochs and examples."""
    from cambrian.trainer.delta import merge_patch

    training = {"epochs": size.epochs, "max_train_examples": size.max_train_examples, "cpu_threads": 1}
    others = lambda phi: {k: v for k, v in (phi or {}).items() if k != "training"}
    out = merge_patch(others(base), others(delta))  # a Hypothesis' patch on Φ0 (RFC 7386)
    extra = dict(delta.get("training", {}))
    if "epochs_factor" in extra:
        training["epochs"] = max(1, round(size.epochs * extra.pop("epochs_factor")))
    if "examples_factor" in extra:
        training["max_train_examples"] = max(100, int(size.max_train_examples * extra.pop("examples_factor")))
    out["training"] = {**training, **extra}
    return out


def train_model(config: dict[str, Any], data_dir: Path) -> tuple[dict[str, float], Callable]:
    """Gate, fit and evaluate in this process; returns the offline metrics and a score function."""
    import torch

    from cambrian.trainer.config import parse_config
    from cambrian.trainer.data import load_dataset
    from cambrian.trainer.fit import fit, pick_device, predict
    from cambrian.trainer.train import evaluate, run_gate

    # The candidates are the benchmark's own (no plugin code), so they train in this process.
    cfg = parse_config(config, "candidate")
    run_gate(cfg, data_dir)
    data = load_dataset(data_dir, cfg)
    device = pick_device(cfg.training.device)
    model, _ = fit(cfg, data, device)
    metrics = evaluate(cfg, predict(model, data.val, device), data.val)
    model = model.to("cpu").eval()
    catalogue = data.catalogue

    def score(user_ids: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        feats = catalogue.features(np.repeat(user_ids, candidates.shape[1]), candidates.reshape(-1))
        with torch.inference_mode():
            out = model({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feats.items()})
        return out.float().numpy().reshape(candidates.shape)

    return metrics, score


def serve_online(data_dir: Path, score: Callable, days: int) -> dict[str, np.ndarray]:
    """All users under one model for `days` days from the end of the logs: per user x day arrays, with the
    hates (the demo's guardrail) and the hidden bait of what was shown (how far a ranking leans on clickbait)."""
    from cambrian.world.sim import ScorePolicy, World

    world = World.load(data_dir)
    n, bait = world.n_users, world.catalogue.bait
    minutes, active, clicks, impressions, hates, bait_shown = (np.zeros((n, days)) for _ in range(6))
    for d, log in enumerate(world.run(ScorePolicy(score), days)):
        ud = log.user_days
        ids = ud["user_id"].to_numpy()
        minutes[ids, d] = ud["minutes"].to_numpy()
        active[ids, d] = ud["active"].to_numpy()
        clicks[ids, d] = ud["clicks"].to_numpy()
        impressions[ids, d] = ud["impressions"].to_numpy()
        im = log.impressions
        users = im["user_id"].to_numpy()
        np.add.at(hates[:, d], users, im["hate"].to_numpy())
        np.add.at(bait_shown[:, d], users, bait[im["item_id"].to_numpy()])
    return {"minutes": minutes, "active": active, "clicks": clicks, "impressions": impressions, "hates": hates,
            "bait": bait_shown}


def paired_effect(arm: np.ndarray, base: np.ndarray) -> tuple[float, float]:
    """Relative effect of per-user totals (same users in both) and its paired standard error."""
    diff = arm - base
    mean_base = float(base.mean())
    if mean_base == 0 or diff.size < 2:
        return 0.0, math.inf
    return float(diff.mean() / mean_base), float(diff.std(ddof=1) / math.sqrt(diff.size) / abs(mean_base))


def online_effects(arm: dict[str, np.ndarray], base: dict[str, np.ndarray]) -> dict[str, float]:
    days = base["minutes"].shape[1]
    early, late = slice(0, min(3, days)), slice(days - max(days // 3, 1), days)
    out: dict[str, float] = {}
    for name, window in (("", slice(None)), ("_early", early), ("_late", late)):
        eff, se = paired_effect(arm["minutes"][:, window].sum(1), base["minutes"][:, window].sum(1))
        out[f"minutes{name}"], out[f"minutes{name}_se"] = eff, se
        eff, se = paired_effect(arm["active"][:, window].sum(1), base["active"][:, window].sum(1))
        out[f"active_days{name}"], out[f"active_days{name}_se"] = eff, se
    ctr = lambda a, w: a["clicks"][:, w].sum() / max(a["impressions"][:, w].sum(), 1)
    out["ctr"] = float(ctr(arm, slice(None)) / ctr(base, slice(None)) - 1)
    out["ctr_early"] = float(ctr(arm, early) / ctr(base, early) - 1)
    if "hates" in arm and "hates" in base:
        per_impression = lambda a, k: a[k].sum() / max(a["impressions"].sum(), 1)
        if per_impression(base, "hates") > 0:
            out["hate_rate"] = float(per_impression(arm, "hates") / per_impression(base, "hates") - 1)
        out["bait_shown"] = float(per_impression(arm, "bait"))  # the arm's own level, not an effect
        out["bait_shown_reference"] = float(per_impression(base, "bait"))
    return out


def offline_signals(metrics: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """Each signal's gain over Φ0 (val_loss: Φ0's minus the candidate's, lower being better)."""
    def gain(m: str) -> float:
        return base[m] - metrics[m] if m == "val_loss" else metrics[m] - base[m]

    return {s: gain(s.removesuffix("_gain")) for s in SIGNALS}


def floors(component: str, metrics: dict[str, float], base_runs: list[dict[str, float]],
           offline: dict[str, dict[str, str]] | None = None) -> float:
    """The candidate's gain on its component's offline objective (the world's Evolution's: `offline` over the
    defaults, as BenchWorld.offline) in noise floors, as the loop judges a first seed (stats/noise.judge) against
    Φ0 over its seeds."""
    from cambrian.operator.api import Noise, OfflineObjective
    from cambrian.stats.noise import Score, judge, mean_std

    objective = OfflineObjective.model_validate(offline or {}).for_component(component)
    base = Score(*mean_std(r[objective.metric] for r in base_runs))
    j = judge(objective.metric, Score(float(metrics[objective.metric])), base, objective.direction == "minimize", Noise())
    return j.gain / j.floor if j.floor else 0.0


def surrogate_inputs(rows: list[dict[str, Any]]) -> np.ndarray:
    """The online agent's surrogate features of each candidate (agents/surrogate.py); a proxy a stored run did
    not record (like_corr before 6 Dec 2026) is no evidence (NaN), as in a journal from before it existed."""
    from cambrian.agents.surrogate import PROXIES, feature_vector

    return np.stack([feature_vector(r["component"], r["offline"]["floors"],
                                    {m: r["offline"].get(m, math.nan) for m in PROXIES}) for r in rows])


def surrogate_loo(rows: list[dict[str, Any]], target: str = NORTH_STAR) -> np.ndarray:
    """Leave-one-out predictions of the online agent's surrogate (agents/surrogate.py: its features and its
    model): each candidate predicted from all the others, as if every other rollout had
    concluded."""
    from cambrian.agents.surrogate import Surrogate

    x = surrogate_inputs(rows)
    y = np.array([r["online"][target] for r in rows])
    out = np.zeros(len(rows))
    for i in range(len(rows)):
        keep = np.arange(len(rows)) != i
        out[i] = Surrogate().fit(x[keep], y[keep]).predict(x[i:i + 1])[0].mean
    return out


def surrogate_after(rows: list[dict[str, Any]], k: int = 8, draws: int = 200, target: str = NORTH_STAR,
                    seed: int = 0) -> dict[str, float] | None:
    """The surrogate as the issue's target asks for it, once k rollouts have concluded: each candidate predicted
    from k others drawn at random, Spearman over all candidates; mean and 10th/90th percentiles over draws."""
    from cambrian.agents.surrogate import Surrogate

    if len(rows) <= k + 1:
        return None
    x = surrogate_inputs(rows)
    y = np.array([r["online"][target] for r in rows])
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(draws):
        pred = [Surrogate().fit(x[d], y[d]).predict(x[i:i + 1])[0].mean
                for i in range(len(y)) for d in [rng.choice(np.delete(np.arange(len(y)), i), k, replace=False)]]
        rhos.append(float(stats.spearmanr(pred, y).statistic))
    return {"k": k, "mean": round(float(np.mean(rhos)), 4), "p10": round(float(np.percentile(rhos, 10)), 4),
            "p90": round(float(np.percentile(rhos, 90)), 4)}


def recorded_signals(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Each offline signal over the candidates, those that every row recorded (a stored run from before a proxy
    existed has no reading of it)."""
    return {s: np.array([r["offline"][s] for r in rows]) for s in (*SIGNALS, "floors")
            if all(s in r["offline"] for r in rows)}


def surrogate_ranks_the_rest(rows: list[dict[str, Any]], k: int = 8, draws: int = 200, target: str = NORTH_STAR,
                             seed: int = 0) -> dict[str, Any] | None:
    """The surrogate as the online agent uses it once k rollouts have concluded: one fit on k candidates drawn at
    random ranks all the others (Spearman over those), mean and 10th/90th percentiles over draws; beside it each
    raw offline signal's Spearman on the same held-out candidates. (`surrogate_after` predicts every candidate
    from its own draw of k, so the fits' different intercepts also enter its ranking.)"""
    from cambrian.agents.surrogate import Surrogate

    if len(rows) < k + 3:
        return None
    x = surrogate_inputs(rows)
    y = np.array([r["online"][target] for r in rows])
    raw = recorded_signals(rows)
    rng = np.random.default_rng(seed)
    rhos: dict[str, list[float]] = {"surrogate": [], **{s: [] for s in raw}}

    def rho(a: np.ndarray, b: np.ndarray) -> float:
        return float(stats.spearmanr(a, b).statistic) if np.ptp(a) > 0 and np.ptp(b) > 0 else 0.0

    for _ in range(draws):
        fit = rng.choice(len(y), k, replace=False)
        rest = np.setdiff1d(np.arange(len(y)), fit)
        pred = np.array([p.mean for p in Surrogate().fit(x[fit], y[fit]).predict(x[rest])])
        rhos["surrogate"].append(rho(pred, y[rest]))
        for s, v in raw.items():
            rhos[s].append(rho(v[rest], y[rest]))
    summary = {s: round(float(np.mean(v)), 4) for s, v in rhos.items()}
    return {"k": k, "draws": draws, "mean": summary.pop("surrogate"),
            "p10": round(float(np.percentile(rhos["surrogate"], 10)), 4),
            "p90": round(float(np.percentile(rhos["surrogate"], 90)), 4), "raw_signals_same_sets": summary}


def rank_correlations(rows: list[dict[str, Any]], target: str = NORTH_STAR) -> dict[str, float | None]:
    """Spearman between each offline signal (and the surrogate's leave-one-out prediction) and the
    online effect over the candidates."""
    y = np.array([r["online"][target] for r in rows])
    out: dict[str, float | None] = {}
    columns = recorded_signals(rows)
    if len(rows) >= 4:
        columns["surrogate_loo"] = surrogate_loo(rows, target)
    for s, x in columns.items():
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
            out[s] = None
        else:
            out[s] = round(float(stats.spearmanr(x[ok], y[ok]).statistic), 4)
    return out


def run(quick: bool = False, progress: Callable[[str], None] | None = None, size: Size | None = None,
        candidates: dict[str, tuple[str, dict[str, Any]]] | None = None, seed: int = 0,
        seeds: tuple[int, ...] | None = None, world: str = DEFAULT_WORLD, replay: Path | None = None) -> dict:
    """`seed`: the world's seed (0 is the reported run); `seeds`: run each of these worlds and report them
    together (`summarise`): one world's 19 candidates are too few to tell a surrogate from its luck; `world`: the
    preset and its Φ0 (WORLDS); `replay`: a stored result to re-read offline with this code (`reread`)."""
    if replay is not None:
        return reread(stored_result(replay), progress)
    bench_world(world)
    if seeds:
        return summarise([run_seed(quick, progress, size, candidates, s, world) for s in seeds], quick, world)
    return run_seed(quick, progress, size, candidates, seed, world)


def command(quick: bool, world: str, seeds: tuple[int, ...] = ()) -> str:
    return ("cambrian bench run fidelity" + (" --quick" if quick else "") +
            (f" --world {world}" if world != DEFAULT_WORLD else "") + (f" --seeds {','.join(map(str, seeds))}" if seeds else ""))


def summarise(per_seed: list[dict[str, Any]], quick: bool, world: str = DEFAULT_WORLD) -> dict[str, Any]:
    """Several world seeds' results side by side; headline: the mean over seeds of the surrogate's Spearman when
    one fit on 8 concluded rollouts ranks the other candidates (the issue's target, >= 0.7)."""
    rows = []
    for r in per_seed:
        rest = r["surrogate_ranks_the_rest_after_8"] or {}
        rows.append({"seed": r["world"]["seed"], "rest": rest.get("mean"), "rest_p10": rest.get("p10"),
                     "rest_p90": rest.get("p90"), "after8": (r["surrogate_after_8_rollouts"] or {}).get("mean"),
                     "raw_same_sets": rest.get("raw_signals_same_sets"), "rank_correlation": r["rank_correlation"],
                     "median_abs_effect": r["median_abs_effect"], "max_abs_effect": r["max_abs_effect"],
                     "clickbait_trap": r["clickbait_trap"], "seconds": r["seconds"]})
    rests = [x["rest"] for x in rows if x["rest"] is not None]
    raw = {s: round(float(np.mean(v)), 4) for s in (*SIGNALS, "floors")
           if (v := [x["raw_same_sets"][s] for x in rows if s in (x["raw_same_sets"] or {})])} if rests else {}
    seeds = [x["seed"] for x in rows]
    return {
        "name": "fidelity",
        "command": command(quick, world, tuple(seeds)),
        "quick": quick,
        "world": world,
        "ratio": round(float(np.mean(rests)), 4) if rests else float("nan"),
        "ratio_meaning": (f"mean over {len(rows)} world seeds of the surrogate's Spearman when one fit on 8 concluded "
                          "rollouts ranks the other candidates (200 draws each; target >= 0.7)"),
        "seeds_at_or_above_0.7": sum(x >= 0.7 for x in rests),
        "raw_same_sets_mean": raw,
        "summary": rows,
        "seeds": per_seed,
    }


def run_seed(quick: bool = False, progress: Callable[[str], None] | None = None, size: Size | None = None,
             candidates: dict[str, tuple[str, dict[str, Any]]] | None = None, seed: int = 0,
             world: str = DEFAULT_WORLD) -> dict:
    """One world's candidates, offline and online."""
    from cambrian.bench.throughput import load_now

    say = progress or (lambda msg: None)
    size = size or (QUICK if quick else FULL)
    setup = bench_world(world)
    candidates = setup.candidates if candidates is None else candidates
    t0, load_start = time.perf_counter(), load_now()
    with tempfile.TemporaryDirectory(prefix="cambrian-bench-fidelity-") as tmp:
        data = Path(tmp) / "world"
        offline = _offline(data, size, setup, seed, candidates)
        base_online = serve_online(data, offline.base_score, size.online_days)
        say(f"baseline: {offline.base_runs[0]}")
        rows = []
        for name, (component, delta) in candidates.items():
            if name not in offline.rows:
                continue
            c0 = time.perf_counter()
            online = online_effects(serve_online(data, offline.scores.pop(name), size.online_days), base_online)
            rows.append({"name": name, "component": component, "delta": delta, "offline": offline.rows[name],
                         "online": {k: round(v, 6) for k, v in online.items()},
                         "seconds": round(offline.seconds[name] + time.perf_counter() - c0, 1)})
            say(f"{name}: minutes {online['minutes']:+.4f} ± {online['minutes_se']:.4f}")
    return _seed_result(rows, offline.failed, quick, world, size, seed, offline, load_start,
                        time.perf_counter() - t0)


@dataclass
class _Offline:
    """Φ0 over its noise-floor seeds and every candidate, trained on one generated world and scored offline."""

    summary: dict[str, Any]  # the generated world's
    base_runs: list[dict[str, float]]  # Φ0 over the baseline seeds, the first one served
    base_score: Callable
    rows: dict[str, dict[str, float]]  # candidate -> its offline readings, as recorded
    scores: dict[str, Callable]
    seconds: dict[str, float]
    failed: dict[str, str]


def _offline(data: Path, size: Size, setup: BenchWorld, seed: int,
             candidates: dict[str, tuple[str, dict[str, Any]]]) -> _Offline:
    from cambrian.operator.api import Noise
    from cambrian.operator.reconcile.noise import base_seed
    from cambrian.stats.noise import baseline_seeds
    from cambrian.world.generate import generate

    config = lambda delta: candidate_config(size, delta, setup.base)
    summary = generate(data, n_users=size.users, days=size.log_days, seed=seed, preset=setup.preset, force=True)
    base_metrics, base_score = train_model(config({}), data)
    # the loop's noise floor: Φ0 over the Evolution's default baseline seeds (the first one is served)
    base_runs = [base_metrics] + [train_model(config({"training": {"seed": s}}), data)[0]
                                  for s in baseline_seeds(base_seed(config({})), Noise().baseline_seeds)[1:]]
    out = _Offline(summary, base_runs, base_score, {}, {}, {}, {})
    for name, (component, delta) in candidates.items():
        c0 = time.perf_counter()
        try:
            metrics, out.scores[name] = train_model(config(delta), data)
        except Exception as exc:  # a candidate that fails the gate or training is reported, not fatal
            out.failed[name] = f"{type(exc).__name__}: {exc}"
            continue
        out.rows[name] = {**{k: round(v, 6) for k, v in offline_signals(metrics, base_metrics).items()},
                          "floors": round(floors(component, metrics, base_runs, setup.offline), 4),
                          **{k: round(float(metrics[k]), 6) for k in RAW_METRICS}}
        out.seconds[name] = time.perf_counter() - c0
    return out


def _seed_result(rows: list[dict[str, Any]], failed: dict[str, str], quick: bool, world: str, size: Size, seed: int,
                 offline: _Offline, load_start, seconds: float) -> dict:
    from cambrian.bench.throughput import load_now

    setup = bench_world(world)
    corr = rank_correlations(rows)
    effects = np.array([abs(r["online"]["minutes"]) for r in rows])
    trap = next((r for r in rows if r["name"] == TRAP), None)
    best = max((v for k, v in corr.items() if v is not None and k != "surrogate_loo"), default=float("nan"))
    return {
        "name": "fidelity",
        "command": command(quick, world),
        "quick": quick,
        "ratio": float(best),
        "ratio_meaning": ("best Spearman rank correlation, over the offline signals (the gain in noise floors on the component's "
                          "offline objective; val_loss, long_watch_corr, "
                          "return_corr, AUC, top_watch_share, like_corr, top_completion_share, top_like_share gains over Φ0), with the candidate's measured online effect on watch "
                          "minutes per user (common random numbers; 1 = the proxy orders changes exactly as online)"),
        "rank_correlation": corr,
        "rank_correlation_late": rank_correlations(rows, "minutes_late"),
        "surrogate_after_8_rollouts": surrogate_after(rows) if rows else None,
        "surrogate_ranks_the_rest_after_8": surrogate_ranks_the_rest(rows) if rows else None,
        "north_star": "watch minutes per user over the online days (days away count as 0)",
        "median_abs_effect": float(np.median(effects)) if effects.size else None,
        "max_abs_effect": float(effects.max()) if effects.size else None,
        "clickbait_trap": None if trap is None else {k: trap["online"][k] for k in (
            "ctr_early", "minutes_early", "minutes_early_se", "minutes_late", "minutes_late_se", "active_days_late",
            "active_days_late_se")},
        "candidates": rows,
        "failed": failed,
        "world": {"name": world, "preset": setup.preset, "seed": seed, "users": size.users, "log_days": size.log_days,
                  "online_days": size.online_days, **{k: offline.summary["overall"][k] for k in ("impressions", "ctr",
                                                                                                  "dau_frac")}},
        "baseline": {"epochs": size.epochs, "max_train_examples": size.max_train_examples, **setup.base,
                     **{k: round(float(offline.base_runs[0][k]), 6) for k in RAW_METRICS}},
        # Φ0 over the baseline seeds (the first is the one served): the noise floors, so floors can be re-read
        "baseline_seeds": [{k: round(float(r[k]), 6) for k in RAW_METRICS} for r in offline.base_runs],
        "load_average_start": load_start,
        "load_average_end": load_now(),
        "seconds": round(seconds, 1),
    }


def stored_result(path: Path) -> dict[str, Any]:
    """A stored fidelity result, checked for what `replay` reads; anything else is one clear error."""
    import json

    from cambrian.errors import ConfigError

    try:
        stored = json.loads(Path(path).read_text())
        for one in _per_seed(stored):  # read what reread() reads
            bench_world(_world_name(one["world"])), one["world"]["seed"], one["baseline"]["epochs"], one["quick"]
            [(r["name"], r["component"], r["delta"], r["offline"], r["online"]) for r in one["candidates"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--replay {path}: not a stored fidelity result ({type(exc).__name__}: {exc})") from None
    return stored


def _world_name(world: dict[str, Any]) -> str:
    """A stored run's benchmark world; runs from before worlds had names (4 Dec 2026) all ran the default one."""
    return world.get("name", DEFAULT_WORLD)


def _per_seed(stored: dict[str, Any]) -> list[dict[str, Any]]:
    """A stored result's world seeds: a summary of several (`summarise`) or one seed's result."""
    return stored["seeds"] if "seeds" in stored else [stored]


def _tolerance(reading: str) -> float:
    """How far a re-read value may lie from a stored one by the stored rounding alone (floors to 4 decimals)."""
    return 2e-4 if reading == "floors" else 2e-6


def reread(stored: dict[str, Any], progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """A stored run (one world seed's or several's) re-read offline with this code: each world generated again,
    Φ0, its noise-floor seeds and every candidate trained again and scored by this code's declaration, the
    surrogate and the rank correlations recomputed; the online effects are the stored ones (the expensive half,
    which a new offline reading does not change). Training is deterministic on one machine, not bit-exact across
    CPUs, so every offline reading the stored run had is compared with the new one: `replay.mismatches` lists any
    that differ (a trainer that changed since, or another machine's float kernels)."""
    from cambrian.bench.throughput import load_now

    say = progress or (lambda msg: None)
    results = []
    for stored_seed in _per_seed(stored):
        t0, load_start = time.perf_counter(), load_now()
        w, b = stored_seed["world"], stored_seed["baseline"]
        size = Size(w["users"], w["log_days"], w["online_days"], b["epochs"], b["max_train_examples"])
        name = _world_name(w)
        setup = bench_world(name)
        candidates = {r["name"]: (r["component"], r["delta"]) for r in stored_seed["candidates"]}
        with tempfile.TemporaryDirectory(prefix="cambrian-bench-fidelity-") as tmp:
            offline = _offline(Path(tmp) / "world", size, setup, w["seed"], candidates)
        rows, mismatches = [], []
        for r in stored_seed["candidates"]:
            new = offline.rows.get(r["name"])
            if new is None:
                mismatches.append(f"{r['name']}: {offline.failed.get(r['name'], 'not trained')}")
                continue
            mismatches += [f"{r['name']}: {k} {v} stored, {new[k]} now" for k, v in r["offline"].items()
                           if k in new and abs(new[k] - v) > _tolerance(k)]
            rows.append({**r, "offline": new})
        say(f"world seed {w['seed']}: {len(rows)} candidates re-read, {len(mismatches)} mismatches")
        result = _seed_result(rows, offline.failed, stored_seed["quick"], name, size, w["seed"], offline,
                              load_start, time.perf_counter() - t0)
        result["replay"] = {"of": stored_seed.get("command"), "commit": stored.get("commit"), "mismatches": mismatches,
                            "surrogate_ranks_the_rest_after_8_stored":
                                (stored_seed.get("surrogate_ranks_the_rest_after_8") or {}).get("mean")}
        results.append(result)
    if "seeds" not in stored:
        return results[0]
    out = summarise(results, results[0]["quick"], results[0]["world"]["name"])
    out["replay"] = {"of": stored.get("command"), "commit": stored.get("commit"),
                     "ratio_stored": stored.get("ratio"), "mismatches": sum(len(r["replay"]["mismatches"]) for r in results)}
    return out


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run(quick=True, progress=print), indent=2))
