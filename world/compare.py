"""The policy comparison of the reference table (recsys-and-stats.md 1.6), measured on this world."""

from __future__ import annotations

from .params import WorldParams
from .policies import oracle_policy, parse_policy
from .sim import World, concat_logs

DEFAULT_POLICIES = ("random", "ctr_greedy", "watch_time", "satisfaction_aware:0.5",
                    "satisfaction_aware:1", "satisfaction_aware:2")


def compare_policies(params: WorldParams, seed: int, days: int, policies=DEFAULT_POLICIES) -> list[dict]:
    """One row per oracle policy, each run on a fresh copy of the same world (common random numbers)."""
    parsed = [(spec, *parse_policy(spec)) for spec in policies]
    rows = []
    for spec, name, lam in parsed:
        world = World(params, seed)
        log = concat_logs(world.run(oracle_policy(world, name, lam), days))
        im, ud = log.impressions, log.user_days
        first_im, first_ud = im[im["day"] == 0], ud[ud["day"] == 0]
        late = ud[ud["day"] >= days - min(10, max(days // 3, 1))]
        clicks = im[im["click"] == 1]
        active = ud[ud["active"] == 1]
        rows.append({
            "policy": spec,
            "day0_ctr": round(float(first_im["click"].mean()) if len(first_im) else 0.0, 4),
            "day0_minutes_per_dau": round(float(first_ud["minutes"].sum() / max(int(first_ud["active"].sum()), 1)), 3),
            "ctr": round(float(im["click"].mean()) if len(im) else 0.0, 4),
            "completion": round(float(clicks["completion"].mean()) if len(clicks) else 0.0, 4),
            "return_rate": round(float(active["returned_next_day"].mean()) if len(active) else 0.0, 4),
            "dau": round(float(ud["active"].mean()), 4),
            "dau_late": round(float(late["active"].mean()), 4),
            "minutes_per_user": round(float(ud["minutes"].sum() / params.n_users), 2),
            "satisfaction_end": round(float(log.truth[log.truth["day"] == days - 1]["satisfaction_end"].mean()), 4),
        })
    return rows
