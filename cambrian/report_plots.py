"""The report's plots (matplotlib, Agg backend). Each function takes prepared data and writes one PNG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

PERSONA_COLORS = {"optimizer": "#1f77b4", "architecture": "#ff7f0e", "reward": "#2ca02c", "baseline": "#555555",
                  "human": "#9467bd"}
_EXTRA = ["#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
OUTCOME_MARKERS = {  # outcome -> (marker, label)
    "launched": ("*", "launched"), "live": ("D", "live (in a rollout)"), "promoted": ("*", "promoted online"),
    "rolled back": ("v", "rolled back online"), "inconclusive": ("d", "inconclusive online"),
    "retired": ("p", "retired after a rollout"), "superseded": ("p", "online test ended undecided (superseded)"),
    "better": ("P", "better (confirmed)"), "promising": ("^", "promising (1 seed)"),
    "not better": ("o", "not better"), "scored": ("o", "scored"), "failed": ("X", "failed"),
    "rejected": ("s", "rejected"), "proposed": ("h", "in progress (not scored yet)"),
    "training": ("h", "in progress (not scored yet)"), "validated": ("h", "in progress (not scored yet)"),
}
ARM_COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
DPI = 110


def persona_color(name: str) -> str:
    if name not in PERSONA_COLORS:
        PERSONA_COLORS[name] = _EXTRA[(len(PERSONA_COLORS) - 5) % len(_EXTRA)]
    return PERSONA_COLORS[name]


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _int_xticks(ax, values) -> None:
    vals = sorted(set(v for v in values if v is not None))
    if vals and len(vals) <= 25:
        ax.set_xticks(vals)


# ---------------------------------------------------------------------------------------------- offline
def offline_progress(curves: dict[str, dict[str, Any]], path: Path) -> None:
    n = len(curves)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.2), squeeze=False)
    for ax, (persona, d) in zip(axes[0], sorted(curves.items())):
        color = persona_color(persona)
        gens = [g for g, _ in d["curve"]]
        if d["baseline"] is not None:
            band = d["floor"] if d["floor"] is not None else 2 * (d["baseline_std"] or 0)
            ax.axhline(d["baseline"], color="#555", ls="--", lw=1, label="baseline")
            if band:
                ax.axhspan(d["baseline"] - band, d["baseline"] + band, color="#bbb", alpha=0.35,
                           label="baseline ± noise floor")
        for verdict in sorted({p[2] for p in d["points"]}):
            pts = [p for p in d["points"] if p[2] == verdict]
            marker = OUTCOME_MARKERS.get(verdict.replace("_", " "), ("o", verdict))[0]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=28, marker=marker, color=color, alpha=0.45,
                       edgecolor="none", label=f"candidate: {verdict.replace('_', ' ')}")
        xs = [g for g, v in d["curve"] if v is not None]
        ys = [v for _, v in d["curve"] if v is not None]
        if xs:
            ax.step(xs, ys, where="post", color=color, lw=2.2, label="best so far")
        direction = "lower is better" if d["lower"] else "higher is better"
        ax.set_title(f"{persona} persona", fontsize=11)
        ax.set_xlabel("generation (0 = baseline)")
        ax.set_ylabel(f"{d['metric']} ({direction})")
        _int_xticks(ax, gens)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="best")
    fig.suptitle("Best offline proxy metric found so far, per generation", fontsize=12)
    fig.tight_layout()
    _save(fig, path)


def lineage(hypotheses: list[Any], path: Path, online: dict[str, str] | None = None) -> None:
    """online: hypothesis id -> its outcome in a rollout (launched, rolled back, live ...), which wins over
    the journal phase."""
    from cambrian.report import outcome_of

    hs = sorted(hypotheses, key=lambda h: (h.generation, h.persona, h.id))
    pos: dict[str, tuple[float, float]] = {}
    per_gen: dict[int, int] = {}
    for h in hs:
        if h.id == "baseline":
            continue
        k = per_gen.get(h.generation, 0)
        per_gen[h.generation] = k + 1
        pos[h.id] = (h.generation, k)
    tallest = max(per_gen.values(), default=1)
    for hid, (g, k) in pos.items():  # centre each generation's column
        pos[hid] = (g, k - (per_gen[g] - 1) / 2)
    pos["baseline"] = (0 if not pos or min(g for g, _ in pos.values()) > 0 else -1, 0.0)
    gens = sorted({g for g, _ in pos.values()})
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(gens) + 3), max(4.0, 0.42 * tallest + 2)))
    by_id = {h.id: h for h in hs}
    bx, by = pos["baseline"]
    for h in hs:  # every delta is against the baseline
        if h.id != "baseline" and not h.parent:
            x, y = pos[h.id]
            ax.plot([bx, x], [by, y], color="#ccc", lw=0.6, zorder=1)
    for h in hs:  # repairs: failed parent -> child
        if h.parent and h.parent in pos and h.id in pos:
            (x0, y0), (x1, y1) = pos[h.parent], pos[h.id]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=2,
                        arrowprops=dict(arrowstyle="-|>", color="#444", lw=1.1,
                                        connectionstyle="arc3,rad=0.25" if x0 == x1 else "arc3,rad=0"))
    outcomes_seen, personas_seen = {}, {}
    label = len(pos) <= 60
    for hid, (x, y) in pos.items():
        if hid == "baseline":
            ax.scatter([x], [y], s=160, marker="o", color="white", edgecolor="#333", lw=1.5, zorder=3)
            ax.annotate("baseline", (x, y), xytext=(0, -14), textcoords="offset points", ha="center", fontsize=8)
            continue
        h = by_id[hid]
        outcome = (online or {}).get(hid) or outcome_of(h)
        marker, olabel = OUTCOME_MARKERS.get(outcome, ("o", outcome))
        c = persona_color(h.persona)
        ax.scatter([x], [y], s=110 if marker == "*" else 60, marker=marker, color=c, edgecolor="black", lw=0.5,
                   zorder=3)
        outcomes_seen[olabel] = marker
        personas_seen[h.persona] = c
        if label:
            ax.annotate(hid, (x, y), xytext=(7, -3), textcoords="offset points", fontsize=7, color="#333")
    ax.set_xticks(gens)
    ax.set_xticklabels(["baseline" if g < 0 else str(g) for g in gens])
    ax.set_xlim(min(gens) - 0.5, max(gens) + 0.9)
    ax.set_yticks([])
    ax.set_xlabel("generation")
    for s in ("top", "right", "left"):
        ax.spines[s].set_visible(False)
    handles = [Line2D([], [], ls="", marker="s", markersize=9, color=c, label=p)
               for p, c in sorted(personas_seen.items())]
    handles += [Line2D([], [], ls="", marker=m, markersize=8, color="#999", markeredgecolor="black", label=o)
                for o, m in outcomes_seen.items()]
    if any(h.parent for h in hs):
        handles += [Line2D([], [], color="#444", marker=">", label="repair of a failed hypothesis")]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0),
              title="colour: persona · shape: outcome", title_fontsize=8)
    ax.set_title("Hypothesis lineage by generation", fontsize=12)
    fig.tight_layout()
    _save(fig, path)


# ---------------------------------------------------------------------------------------------- online
def arm_colors(arms: list[str]) -> dict[str, str]:
    """The same colour for an arm in every online plot (control first: red)."""
    return {a: ARM_COLORS[i % len(ARM_COLORS)] for i, a in enumerate(arms)}


def _pct(relative: bool) -> tuple[float, str]:
    return (100.0, "%") if relative else (1.0, "")


def effects(name: str, north_star: str, relative: bool, series: dict[str, list], weights: list, readouts: list,
            path: Path, arm_order: list[str] | None = None, planned: dict[str, float] | None = None) -> None:
    scale, unit = _pct(relative)
    fig, (ax, axw) = plt.subplots(2, 1, figsize=(9.5, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    days = []
    order = arm_order or sorted({a for _, w in weights for a in w} | set(series))
    colors = arm_colors(order)
    offsets = {a: (i - (len(series) - 1) / 2) * 0.07 for i, a in enumerate(sorted(series))}  # arms side by side
    for arm, pts in sorted(series.items()):
        c = colors.get(arm, "#777")
        days += [p[0] for p in pts]
        d = [p[0] + offsets[arm] for p in pts]
        est = [p[1] * scale for p in pts]
        ax.plot(d, est, marker="o", color=c, lw=1.8, label=f"{arm}: estimate")
        ok = [(x, y, lo * scale, hi * scale) for x, (_, _, lo, hi), y in zip(d, pts, est)
              if lo is not None and hi is not None]
        if ok:
            ax.errorbar([o[0] for o in ok], [o[1] for o in ok],
                        yerr=[[o[1] - o[2] for o in ok], [o[3] - o[1] for o in ok]],
                        fmt="none", ecolor=c, capsize=4, lw=1.2, label=f"{arm}: always-valid 95% interval")
            if len(ok) > 1:
                ax.fill_between([o[0] for o in ok], [o[2] for o in ok], [o[3] for o in ok], color=c, alpha=0.15)
    for arm in series:  # the look at which an arm was rolled back
        first = next((e.get("day") for e in readouts
                      if (e.get("arms") or {}).get(arm, {}).get("outcome") == "rollback"), None)
        hit = [p for p in series[arm] if p[0] == first]
        if hit:
            ax.scatter([first + offsets[arm]], [hit[0][1] * scale], marker="X", s=120, color=colors.get(arm, "#777"),
                       edgecolor="black", zorder=4, label=f"{arm}: rolled back")
    ax.axhline(0, color="black", lw=0.8)
    for arm, value in sorted((planned or {}).items()):   # what the design was sized for
        ax.axhline(value * scale, color=colors.get(arm, "#777"), ls="--", lw=1, label=f"{arm}: planned effect")
    days += [e.get("day") for e in readouts if e.get("day") is not None]
    for e in readouts:
        if e.get("outcome") in ("promote", "rollback", "inconclusive"):
            ax.axvline(e.get("day"), color="#777", ls=":", lw=1)
            ax.annotate(e["outcome"], (e.get("day"), ax.get_ylim()[1]), fontsize=8, color="#555", ha="right",
                        va="top", rotation=90)
    what = f"relative lift of {north_star} over control" if relative else f"difference in {north_star} vs control"
    ax.set_ylabel(f"{what} ({unit or 'metric units'})")
    ax.set_title(f"Rollout {name}: treatment effect at each look", fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if weights:
        arms = list(dict.fromkeys(a for _, w in weights for a in w))
        steps = [(d if d is not None else (min(days) if days else 0), w) for d, w in weights]
        end = max([s[0] for s in steps] + days) + 1
        for arm in arms:
            xs = [s[0] for s in steps] + [end]
            ys = [s[1].get(arm, 0) for s in steps]
            ys.append(ys[-1])
            axw.step(xs, ys, where="post", color=colors.get(arm, "#777"), lw=1.6, label=arm)
        axw.set_ylim(-5, 105)
        axw.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        axw.text(0.5, 0.5, "no weight changes recorded", ha="center", va="center", transform=axw.transAxes)
    axw.set_ylabel("traffic weight (%)")
    axw.set_xlabel("simulated day")
    axw.grid(alpha=0.3)
    _int_xticks(axw, days + [s[0] for s in weights if s[0] is not None])
    fig.tight_layout()
    _save(fig, path)


def guardrails(name: str, series: dict[tuple[str, str], list[dict[str, Any]]], history: bool, path: Path,
               arm_colors: dict[str, str] | None = None) -> None:
    metrics = sorted({m for m, _ in series})
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8.5, 3.0 * len(metrics) + 0.6), squeeze=False)
    status_color = {"pass": "#2ca02c", "fail": "#d62728", "pending": "#ff7f0e"}
    for ax, metric in zip(axes[:, 0], metrics):
        arms = sorted(a for m, a in series if m == metric)
        bound = None
        for i, arm in enumerate(arms):
            pts = [p for p in series[(metric, arm)] if p.get("estimate") is not None]
            if not pts:
                continue
            off = (i - (len(arms) - 1) / 2) * 0.08  # side by side when several arms share a day
            xs = [p["day"] + off for p in pts]
            c = (arm_colors or {}).get(arm, ARM_COLORS[(i + 1) % len(ARM_COLORS)])
            ax.plot(xs, [p["estimate"] * 100 for p in pts], color=c, lw=1.2, alpha=0.7)
            for x, p in zip(xs, pts):
                lo, hi = p.get("lower"), p.get("upper")
                if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
                    ax.vlines(x, lo * 100, hi * 100, color=c, lw=2, alpha=0.6)
                ax.scatter([x], [p["estimate"] * 100], color=status_color.get(p.get("status"), "#777"), zorder=3,
                           edgecolor=c, lw=1.5, s=40)
            ax.plot([], [], color=c, lw=2, label=f"{arm}: effect and interval")
            bound = pts[-1].get("bound", bound)
        if bound is not None:
            ax.axhline(bound * 100, color="#d62728", ls="--", lw=1,
                       label=f"non-inferiority bound ({bound * 100:+.3g}%)")
        ax.axhline(0, color="black", lw=0.6)
        seen = {p.get("status") for a in arms for p in series[(metric, a)]}
        for s, c in status_color.items():
            if s in seen:
                ax.scatter([], [], color=c, s=30, label=f"status at that look: {s}")
        all_days = [p["day"] for a in arms for p in series[(metric, a)]]
        if all_days:
            ax.set_xlim(min(all_days) - 0.6, max(all_days) + 0.6)
        ax.set_ylabel(f"change in {metric}\nvs control (%)")
        ax.set_title(f"guardrail {metric}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
        _int_xticks(ax, [p["day"] for a in arms for p in series[(metric, a)]])
    axes[-1, 0].set_xlabel("simulated day" + ("" if history else " (final look only)"))
    fig.suptitle(f"Rollout {name}: guardrails (treatment minus control, relative)", fontsize=12)
    fig.tight_layout()
    _save(fig, path)


def proxy_vs_online(points: list[dict[str, Any]], path: Path) -> None:
    from scipy.stats import spearmanr

    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    relative = all(p["relative"] for p in points)
    scale, unit = _pct(relative)
    for persona in sorted({p["persona"] for p in points}):
        pts = [p for p in points if p["persona"] == persona]
        c = persona_color(persona)
        ys = [p["online"] * scale for p in pts]
        lo = [max(0.0, (p["online"] - p["lo"]) * scale) if p["lo"] is not None else 0 for p in pts]
        hi = [max(0.0, (p["hi"] - p["online"]) * scale) if p["hi"] is not None else 0 for p in pts]
        ax.errorbar([p["offline"] for p in pts], ys, yerr=[lo, hi], fmt="o", color=c, ecolor=c, capsize=3,
                    label=f"{persona} persona")
        for p, y in zip(pts, ys):
            ax.annotate(f"{p['id']} ({p['outcome']})", (p["offline"], y), xytext=(6, 4), textcoords="offset points",
                        fontsize=7.5)
    ax.axhline(0, color="black", lw=0.7)
    ax.axvline(1 if all(p["offline_units"] == "floor" for p in points) else 0, color="#999", ls="--", lw=0.8,
               label="gain = 1 noise floor (the bar for \"better\")")
    xs = [p["offline"] for p in points]
    ys = [p["online"] for p in points]
    if len(points) >= 3 and len(set(xs)) > 1 and len(set(ys)) > 1:
        rho, pval = spearmanr(xs, ys)
        ax.text(0.02, 0.97, f"Spearman ρ = {rho:.2f} (p = {pval:.2g}, n = {len(points)})", transform=ax.transAxes,
                va="top", fontsize=9, bbox=dict(facecolor="white", alpha=0.8, edgecolor="#ccc"))
    else:
        ax.text(0.02, 0.97, f"n = {len(points)}: too few points for a rank correlation", transform=ax.transAxes,
                va="top", fontsize=9, color="#555")
    north = sorted({p["north_star"] for p in points})
    ax.set_xlabel("offline gain over baseline (in noise floors of its proxy metric)")
    ax.set_ylabel(f"online effect on {', '.join(north)} ({unit or 'metric units'}, 95% CI)")
    ax.set_title("Does the offline proxy predict the online effect?", fontsize=12)
    lo_x, hi_x = ax.get_xlim()
    ax.set_xlim(min(lo_x, -0.5), max(hi_x, 1.5))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    _save(fig, path)
