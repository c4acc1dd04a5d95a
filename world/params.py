"""Parameters of the simulated world ("north-star sim", reference notes section 1.6).

Defaults are the tested prototype values; the extensions (candidates, likes, hates, skips, thumbnail
proxy, bait susceptibility, extra sessions, interest drift) have defaults chosen so that the proxies
land in realistic ranges (CTR 5-15 %, completion 40-60 %, next-day return 0.5-0.8).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cambrian.errors import ConfigError


class WorldParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # catalogue
    n_items: int = Field(500, ge=2, le=1_000_000, description="catalogue size")
    n_topics: int = Field(8, ge=1, le=256, description="topic dimension K")
    topic_conc: float = Field(0.3, gt=0, description="Dirichlet concentration of item topic mixes")
    q_a: float = Field(2.0, gt=0, description="quality ~ Beta(q_a, q_b)")
    q_b: float = Field(2.0, gt=0)
    bait_a: float = Field(1.2, gt=0, description="bait ~ clip(Beta(bait_a, bait_b) + corr*(1/2 - q))")
    bait_b: float = Field(3.0, gt=0)
    bait_quality_corr: float = Field(0.5, ge=0, le=2)
    len_mu: float = Field(0.0, description="length in minutes ~ LogNormal(len_mu, len_sigma)")
    len_sigma: float = Field(0.5, ge=0, le=3)
    thumb_noise: float = Field(0.15, ge=0, description="thumb_intensity = bait + N(0, thumb_noise)")

    # users
    n_users: int = Field(2000, ge=1, le=10_000_000)
    interest_conc: float = Field(0.5, gt=0, description="Dirichlet concentration of user interests")
    sat0_sd: float = Field(0.3, ge=0, description="initial latent satisfaction ~ N(0, sat0_sd)")
    budget_shape: float = Field(4.0, gt=0, description="session budget (minutes) ~ Gamma(shape, scale)")
    budget_scale: float = Field(5.0, gt=0)
    bait_sus_sd: float = Field(0.0, ge=0, le=2, description="bait susceptibility ~ LogNormal(-sd^2/2, sd)")
    extra_sessions: float = Field(0.3, ge=0, le=20, description="sessions per active day = 1 + Poisson(this)")
    # habits: heavy and light users (persistent per user)
    habit_sd: float = Field(0.0, ge=0, le=5, description="per-user offset of the return logit ~ N(0, habit_sd)")
    budget_user_sd: float = Field(0.0, ge=0, le=3, description="per-user budget multiplier ~ LogNormal(-sd^2/2, sd)")
    # day of week (day 0 is a Monday): the same calendar for every user
    dow_return: tuple[float, float, float, float, float, float, float] = Field(
        (0.0,) * 7, description="return-logit offset of each weekday, Monday first")
    dow_budget: tuple[float, float, float, float, float, float, float] = Field(
        (1.0,) * 7, description="session-budget multiplier of each weekday, Monday first")

    # retrieval and choice
    n_candidates: int = Field(100, ge=1, description="items the retrieval stage proposes per request")
    slate: int = Field(6, ge=1, le=64, description="slate size k")
    th_aff: float = Field(4.0, description="click logit weight of cos(user, item)")
    th_bait: float = Field(3.0, description="click logit weight of bait")
    th_satiation: float = Field(1.5, ge=0, description="click logit weight of topic fatigue")
    th_pos: float = Field(0.3, ge=0, description="click logit penalty per rank")
    null_logit: float = Field(2.0, description="logit of the no-click option")
    th_novelty: float = Field(0.0, ge=0, description="click logit weight of topic novelty: 1 - cos(item topics, "
                              "the user's recent exposure); a changed ranking is fresh for a few days")
    novelty_rate: float = Field(0.3, gt=0, le=1, description="daily rate at which exposure memory follows what was shown")

    # consumption
    w0: float = 0.0
    w_aff: float = 2.0
    w_q: float = 3.0
    w_bait: float = 3.0
    completion_noise: float = Field(0.5, ge=0, description="sd of the logit noise on completion")
    skip_threshold: float = Field(0.2, ge=0, le=1, description="a click with completion below this is a skip")
    like_a: float = Field(-3.0, description="like ~ Bernoulli(sigmoid(like_a + like_b*quality)) on click")
    like_b: float = 3.0
    hate_c: float = Field(-4.5, description="hate ~ Bernoulli(sigmoid(hate_c + hate_d*bait)) on click")
    hate_d: float = 4.0

    # satisfaction
    eta_s: float = Field(0.03, ge=0)
    rho_w: float = 0.5
    lam_bait: float = 0.6
    eta_noclick: float = Field(0.005, ge=0)
    sat_decay: float = Field(0.9, ge=0, le=1, description="s <- sat_decay * s each night")
    eta_u: float = Field(0.0, ge=0, le=1, description="interest drift toward (good) / away from (bad) clicks")

    # session
    browse_cost: float = Field(0.3, gt=0, description="minutes a slate costs even without a click")
    extend: float = Field(0.5, ge=0, lt=2, description="good content extends the budget by extend*watch*(q-1/2)")
    hook: float = Field(0.0, ge=0, le=1, description="bait is binge-watched: its minutes are charged to the session "
                        "budget at (1 - hook*bait), so a baity ranking keeps users longer today")
    h0: float = -3.5
    h_sat: float = 1.0
    h_nc: float = 0.6
    max_steps_per_day: int = Field(2000, ge=1, le=32000)

    # satiation (topic fatigue)
    sat_inc: float = Field(1.0, ge=0)
    sat_session_decay: float = Field(0.8, ge=0, le=1)
    sat_daily_decay: float = Field(0.3, ge=0, le=1)

    # retention
    r0: float = 0.8
    r_sat: float = 1.0
    r_watch: float = 0.3

    @model_validator(mode="after")
    def _weekdays(self) -> "WorldParams":
        if any(m <= 0 for m in self.dow_budget):
            raise ValueError("dow_budget multipliers must be > 0")
        return self

    @model_validator(mode="after")
    def _sizes(self) -> "WorldParams":
        if self.n_candidates > self.n_items:
            raise ValueError(f"n_candidates ({self.n_candidates}) must be <= n_items ({self.n_items})")
        if self.slate > self.n_candidates:
            raise ValueError(f"slate ({self.slate}) must be <= n_candidates ({self.n_candidates})")
        return self

    @classmethod
    def build(cls, preset: str | None = None, **values: Any) -> "WorldParams":
        """Validate preset + overrides, turning pydantic's error into a ConfigError that names the field.

        Without a preset the fields' own defaults apply (the `easy` world), so any world.json written
        before presets existed, which lists every field, loads unchanged."""
        base = preset_values(preset) if preset else {}
        try:
            return cls(**{**base, **values})
        except ValidationError as exc:
            raise ConfigError(f"invalid world parameters: {_describe(exc)}") from None


# The calibrated world (issue 18). Why each value, in short:
# * sessions end mostly when the user's time budget is spent (low leave hazard, cheap browsing), so a
#   better ranking changes *how* the minutes are spent far more than *how many* there are, as for a
#   mature product; budgets and return propensity are personal habits (CUPED has something to use);
# * bait pays now (it attracts clicks and is watched about as long as anything else) and costs later
#   through satisfaction, which moves return slowly (sat_decay 0.93: a memory of about two weeks);
# * weekends bring more users and longer sessions; a changed ranking is novel for a few days.
CALIBRATED: dict[str, Any] = {
    "len_sigma": 0.25,
    "th_aff": 3.5, "th_bait": 1.0, "th_satiation": 1.0, "null_logit": 1.2,
    "w_aff": 1.0, "w_q": 1.5, "w_bait": 0.4,
    "eta_s": 0.0015, "rho_w": 0.5, "lam_bait": 0.8, "eta_noclick": 0.0005, "sat_decay": 0.93,
    "browse_cost": 0.03, "extend": 0.05, "h0": -7.0, "h_sat": 0.3, "h_nc": 0.1,
    "budget_shape": 3.0, "budget_scale": 5.0, "budget_user_sd": 0.6,
    "r0": 0.9, "r_sat": 1.0, "r_watch": 0.15, "habit_sd": 1.2,
    "dow_return": (0.0, -0.05, -0.05, 0.0, 0.1, 0.35, 0.3), "dow_budget": (0.95, 0.93, 0.93, 0.97, 1.03, 1.15, 1.12),
    "th_novelty": 1.5, "novelty_rate": 0.3,
}
# The hooked world (issue 18's deceptive trap): the calibrated world where bait is binge-watched (its minutes are
# charged to the session budget at 1 - 0.4*bait, so a baity ranking keeps users longer *today*), while
# satisfaction falls a third faster per click (eta_s) and now also shortens sessions (h_sat): the cost shows over
# weeks, in return and late minutes. Its product ranks by watch time (bench/fidelity.WORLDS), against which
# learning clicks is the trap: CTR and the first days' minutes up, active days and later minutes down.
HOOKED: dict[str, Any] = {**CALIBRATED, "hook": 0.4, "eta_s": 0.002, "h_sat": 1.0}
# The wary world: the hooked world where whether a user comes back follows satisfaction twice as closely (r_sat).
# In the hooked world three weeks of minutes still reward a ranking that leans on bait (binge-watching outweighs the
# users it loses), so a trained model's 21-day effect is largely its luck with bait; here the users that bait costs
# are lost within those weeks, while bait still pays in the first days: the trap stays deceptive and harms within
# the test. (The watch-time proxies rank the 21-day effects poorly here, likes better but short of the target:
# bench/README.md, fidelity on wary.)
WARY: dict[str, Any] = {**HOOKED, "r_sat": 2.0}
PRESETS: dict[str, dict[str, Any]] = {"easy": {}, "calibrated": CALIBRATED, "hooked": HOOKED, "wary": WARY}
DEFAULT_PRESET = "calibrated"


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown world preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "params"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
