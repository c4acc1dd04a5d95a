import json

import pytest

from cambrian.errors import ConfigError
from cambrian.agents import canonical
from cambrian.agents.budgets import cost_usd, price_of
from cambrian.agents.journal import Hypothesis, Journal, Score
from cambrian.agents.noise import NoiseSettings, judge
from cambrian.agents.personas import ARCHITECTURE, OPTIMIZER, REWARD
from cambrian.agents.prompts import build_prompt
from cambrian.agents.proposers.base import ProposalParseError, ProposalRequest, parse_response_text
from cambrian.agents.proposers.builtin import CATALOGUE, BuiltinProposer, _objective_first
from cambrian.agents.settings import parse_evolve_config
from cambrian.trainer.config import ModelConfig
from cambrian.trainer.delta import parse_delta


# ---------------------------------------------------------------- parsing LLM output
def test_parse_patch_json_and_fences():
    body = {"proposals": [{"category": "explore", "explanation": "x",
                           "delta": {"component": "optimizer", "patch_json": '{"lr": 0.01}', "code": ""}}],
            "queries": [{"question": "q", "sql": "SELECT 1"}, {"bad": 1}]}
    props, queries = parse_response_text("```json\n" + json.dumps(body) + "\n```")
    assert props[0]["delta"] == {"component": "optimizer", "patch": {"lr": 0.01}}
    assert queries == [{"question": "q", "sql": "SELECT 1"}]


@pytest.mark.parametrize("text,msg", [("", "empty"), ("{not json", "malformed JSON"), ('{"x": 1}', "proposals"),
                                      ('{"proposals": [1]}', r"proposals\[0\]")])
def test_parse_errors_name_the_cause(text, msg):
    with pytest.raises(ProposalParseError, match=msg):
        parse_response_text(text)


def test_bad_patch_json_is_marked_not_raised():
    props, _ = parse_response_text(json.dumps({"proposals": [{"delta": {"component": "reward", "patch_json": "{x"}}]}))
    assert "__invalid_patch_json__" in props[0]["delta"]["patch"]


# ---------------------------------------------------------------- canonical de-duplication key
def test_also_json_becomes_the_deltas_also_and_a_bad_one_is_named_by_the_delta_check():
    from cambrian.trainer.delta import Delta

    ok = {"component": "optimizer", "patch_json": '{"name": "AdamW"}', "also_json": '{"training": {"grad_clip": 1}}'}
    bad = {"component": "optimizer", "patch_json": '{"name": "AdamW"}', "also_json": "{oops"}
    empty = {"component": "optimizer", "patch_json": '{"name": "AdamW"}', "also_json": ""}
    props, _ = parse_response_text(json.dumps({"proposals": [{"delta": d} for d in (ok, bad, empty)]}))
    assert props[0]["delta"]["also"] == {"training": {"grad_clip": 1}}
    assert Delta.model_validate(props[0]["delta"]).patches() == {"optimizer": {"name": "AdamW"},
                                                                 "training": {"grad_clip": 1}}
    with pytest.raises(ValueError, match="also"):
        Delta.model_validate(props[1]["delta"])
    assert "also" not in props[2]["delta"]


def test_fingerprint_is_exact_and_seed_free():
    base = ModelConfig()
    a = parse_delta({"component": "optimizer", "patch": {"name": "AdamW", "lr": 0.003}})
    b = parse_delta({"component": "optimizer", "patch": {"lr": 0.003, "name": "AdamW", "weight_decay": 0.0}})
    assert canonical.fingerprint(base, a) == canonical.fingerprint(base, b)
    assert canonical.fingerprint(canonical.with_seed(base, 5), a) == canonical.fingerprint(base, a)
    c = parse_delta({"component": "optimizer", "patch": {"name": "AdamW", "lr": 0.0031}})
    assert canonical.fingerprint(base, c) != canonical.fingerprint(base, a)
    restated = parse_delta({"component": "optimizer", "patch": {"lr": base.optimizer.lr}})
    assert canonical.fingerprint(base, restated) == canonical.fingerprint(base, None)


# ---------------------------------------------------------------- budgets and prices
def test_prices():
    assert cost_usd("gemini-2.5-pro", 1_000_000, 1_000_000) == pytest.approx(11.25)
    assert price_of("gemini-2.5-pro-002") == price_of("gemini-2.5-pro")
    assert price_of("some-unknown-model")[1] >= max(p[1] for p in [price_of("gpt-4o"), price_of("gemini-2.5-pro")])


# ---------------------------------------------------------------- noise floor
def test_judge_against_noise_floor():
    s = NoiseSettings(z=2.0, min_floor=0.0)
    base = Score.of([0.500, 0.502, 0.498])  # std 0.002
    small = judge("val_loss", Score.of([0.499]), base, True, s)
    assert small.verdict == "not_better" and "within the noise floor" in small.reason
    big = judge("val_loss", Score.of([0.490]), base, True, s)
    assert big.verdict == "promising" and big.gain == pytest.approx(0.01)
    confirmed = judge("val_loss", Score.of([0.490, 0.491, 0.489]), base, True, s)
    assert confirmed.verdict == "better" and confirmed.floor < big.floor
    worse = judge("return_corr", Score.of([0.0]), Score.of([0.1, 0.1, 0.1]), False, NoiseSettings(min_floor=0.01))
    assert worse.verdict == "not_better" and "worse" in worse.reason


# ---------------------------------------------------------------- settings
def test_settings_env_overrides_and_errors(tmp_path):
    cfg = parse_evolve_config({"data_dir": str(tmp_path), "budgets": {"max_evaluations": 10}},
                              env={"CAMBRIAN_EVOLVE_GENERATIONS": "7", "CAMBRIAN_EVOLVE_BUDGETS__MAX_DOLLARS": "2.5",
                                   "CAMBRIAN_EVOLVE_PROVIDER__KIND": "gemini", "OTHER": "x"})
    assert cfg.generations == 7 and cfg.budgets.max_dollars == 2.5 and cfg.budgets.max_evaluations == 10
    assert cfg.provider.kind == "gemini"
    with pytest.raises(ConfigError, match="workers"):
        parse_evolve_config({"data_dir": str(tmp_path), "workers": 0}, env={})
    with pytest.raises(ConfigError, match="personas"):
        parse_evolve_config({"data_dir": str(tmp_path), "personas": ["magician"]}, env={})
    with pytest.raises(ConfigError, match="data_dir"):
        parse_evolve_config({}, env={})


# ---------------------------------------------------------------- prompts
def test_prompt_shows_only_the_persona_component_and_quotas():
    base = ModelConfig()
    text = build_prompt(OPTIMIZER, OPTIMIZER.view(base), "JOURNAL-HERE", {"explore": 2, "exploit": 1, "innovate": 3},
                        ["return_rate"], 0.0012)
    assert "exactly 2 exploration, 1\n    exploitation and 3 innovation" in text
    assert '"optimizer"' in text and '"training"' in text and '"reward"' not in text
    assert "JOURNAL-HERE" in text and "0.0012" in text and "Metric#1 return_rate" in text
    assert "SQL_QUERY_OUTPUT" not in text
    r = build_prompt(REWARD, REWARD.view(base), "J", {"explore": 1}, [], None, sql_output="Q: SQL-RESULT")
    assert "{SQL_QUERY_OUTPUT}" in r and "SQL-RESULT" in r and "returned_next_day" in r
    assert "val_loss" not in r.split("CONTEXT")[0]  # the reward persona is never scored by loss
    a = build_prompt(ARCHITECTURE, ARCHITECTURE.view(base), "J", {"innovate": 1}, [], None)
    assert '"architecture"' in a and '"optimizer"' not in a


def test_the_reward_prompt_names_the_proxies_and_columns_of_the_datas_declaration():
    from cambrian.agents.personas import for_declaration
    from cambrian.trainer.schema import MOVIELENS_100K, WORLD

    assert for_declaration(REWARD, WORLD, "long_watch_corr") == REWARD  # the world's prompt is unchanged
    assert for_declaration(REWARD, WORLD) == REWARD
    # judged by another declared proxy (the demo's top_watch_share): the prompt asks for that one
    judged = for_declaration(REWARD, WORLD, "top_watch_share")
    assert judged.metric == "top_watch_share" and not judged.lower_is_better
    assert "long_watch_corr" in judged.secondary_metrics and "top_watch_share" not in judged.secondary_metrics
    assert "top_watch_share (each user's share of impressions.watch_seconds in the user's top 6% of rows" in \
        judged.metric_text
    assert for_declaration(REWARD, WORLD, "return_corr").metric == "return_corr"
    persona = for_declaration(REWARD, MOVIELENS_100K, "rating_corr")
    assert persona.metric == "rating_corr" and persona.secondary_metrics == ("auc",) and not persona.lower_is_better
    text = build_prompt(persona, persona.view(ModelConfig()), "J", {"explore": 1}, [], None, schema=MOVIELENS_100K)
    task = text.split("CONTEXT")[0]
    assert "rating_corr (rank correlation of the score with ratings.rating)" in task and "ratings.rating >= 4" in task
    assert "long_watch_corr" not in task and "return_corr" not in task and "returned_next_day" not in task
    assert "Columns: user_id, movie_id, rating, timestamp, gender" in task and "tables ratings, movies, users" in task
    # the few-shot example reads the data's own columns (the world's reads click and completion)
    example = text.split("EXAMPLE PROPOSAL")[1]
    assert "click" not in example and "completion" not in example and "rating" in example, example
    assert json.loads(json.loads(example)["proposals"][0]["delta"]["patch_json"]) == {
        "label": '(LEAST(GREATEST("rating", 1.0), 5.0) - 1.0) / 4.0'}
    world = build_prompt(REWARD, REWARD.view(ModelConfig()), "J", {"explore": 1}, [], None, schema=WORLD)
    assert world == build_prompt(REWARD, REWARD.view(ModelConfig()), "J", {"explore": 1}, [], None)
    assert "CAST(click AS DOUBLE) * LEAST(completion, 1.0)" in world.split("EXAMPLE PROPOSAL")[1]


# ---------------------------------------------------------------- the built-in proposer
def _request(journal, persona, gen=1, quotas=None, repair_of=None):
    return ProposalRequest(persona, gen, quotas or {"explore": 1, "exploit": 1, "innovate": 1}, "", ModelConfig(),
                           journal, repair_of=repair_of)


def test_catalogue_entries_are_valid_deltas():
    base = ModelConfig()
    for e in CATALOGUE:
        cfg = canonical.applied(base, parse_delta(e.render({})))
        assert cfg.fingerprint() != base.fingerprint(), e.key


def test_builtin_fills_quotas_without_repeats(tmp_path):
    j = Journal(tmp_path)
    prop = BuiltinProposer(seed=1)
    seen = set()
    for gen in range(1, 4):
        res = prop.propose(_request(j, REWARD, gen))
        assert len(res.proposals) == 3 and res.error is None
        for i, p in enumerate(res.proposals):
            fp = canonical.fingerprint(ModelConfig(), parse_delta(p["delta"]))
            assert fp not in seen
            seen.add(fp)
            h = Hypothesis(id=f"g{gen:03d}-{i:02d}", generation=gen, persona="reward", component="reward",
                           category=p["category"], delta=p["delta"], fingerprint=fp, meta=p["meta"])
            j.add(h)
    cats = [h.category for h in j.hypotheses]
    assert "explore" in cats and "innovate" in cats and "exploit" in cats


def test_builtin_exploit_uses_tpe_around_the_best_family(tmp_path):
    j = Journal(tmp_path)
    prop = BuiltinProposer(seed=0)
    base = ModelConfig()
    # a journal in which AdamW scored best
    for i, (entry, lr, loss) in enumerate([("adamw", 0.003, 0.40), ("adagrad", 0.05, 0.45), ("adamw", 0.01, 0.42)]):
        e = next(x for x in CATALOGUE if x.key == entry)
        params = {**e.defaults, "lr": lr}
        d = e.render(params)
        j.add(Hypothesis(id=f"g001-{i:02d}", generation=1, persona="optimizer", component="optimizer",
                         category="explore", delta=d, fingerprint=canonical.fingerprint(base, parse_delta(d)),
                         meta={"entry": entry, "params": params}, offline={"val_loss": Score.of([loss])}))
    res = prop.propose(_request(j, OPTIMIZER, 2, {"exploit": 2}))
    assert len(res.proposals) == 2
    for p in res.proposals:
        assert p["category"] == "exploit" and p["meta"]["entry"] == "adamw"
        assert p["delta"]["patch"]["name"] == "AdamW"
        assert 3e-4 <= p["delta"]["patch"]["lr"] <= 3e-2


def test_builtin_exploit_of_an_unmeasured_family_starts_at_its_defaults(tmp_path):
    """Nothing of the persona was measured: the exploit proposal is its first tunable family at the catalogue's
    defaults (the prior), not a uniform TPE draw; once that point is taken, TPE samples the family's space."""
    j = Journal(tmp_path)
    res = BuiltinProposer(seed=3).propose(_request(j, REWARD, 1, {"exploit": 1}))
    (p,) = res.proposals
    # the persona's first tunable family in its prior order, the entries meant to raise its metric first
    family = next(e for e in _objective_first(CATALOGUE, REWARD.metric) if e.persona == "reward" and e.space)
    assert family.key == "long_watch"  # REWARD's metric is long_watch_corr, which long_watch targets
    assert p["category"] == "exploit" and p["meta"] == {"entry": family.key, "params": family.defaults}
    assert p["delta"] == family.render({})
    j.add(Hypothesis(id="g001-00", generation=1, persona="reward", component="reward", category="exploit",
                     delta=p["delta"], fingerprint=canonical.fingerprint(ModelConfig(), parse_delta(p["delta"])),
                     meta=p["meta"], phase="Training"))
    (q,) = BuiltinProposer(seed=3).propose(_request(j, REWARD, 2, {"exploit": 1})).proposals
    assert q["meta"]["entry"] == family.key and q["meta"]["params"] != family.defaults


def test_the_reward_that_learns_the_objectives_own_signal_is_proposed_first_only_under_that_objective(tmp_path):
    """long_watch_corr is the rank correlation with `watch_seconds >= :long_watch_seconds`; the catalogue's long-watch
    label at its default threshold is that signal itself, so it is declared to target the metric and is the reward
    persona's first proposal when rewards are judged by it (before, it came third, after completion and the
    watch-weighted click, and a 10-evaluation search never trained it). Judged by another metric, the prior order
    is unchanged."""
    from cambrian.agents.personas import for_declaration, reward_columns
    from cambrian.agents.proposers.builtin import ENTRIES
    from cambrian.trainer.config import RewardConfig
    from cambrian.trainer.expressions import canonical_sql
    from cambrian.trainer.schema import WORLD

    proxy = next(p for p in WORLD.proxies if p.name == "long_watch_corr")
    signal = proxy.signal.replace("impressions.", "").replace(":long_watch_seconds",
                                                                 repr(RewardConfig().long_watch_seconds))
    entry = ENTRIES["long_watch"]
    assert canonical_sql(entry.render({})["patch"]["label"]) == canonical_sql(signal)
    assert [e.key for e in CATALOGUE if "long_watch_corr" in e.targets] == ["long_watch"]

    def first_rewards(metric):
        persona = for_declaration(REWARD, WORLD, metric)
        req = ProposalRequest(persona, 1, {"explore": 2, "exploit": 1}, "", ModelConfig(),
                              Journal(tmp_path / metric), columns=tuple(reward_columns(WORLD)), schema=WORLD)
        return [(p["category"], p["meta"]["entry"]) for p in BuiltinProposer(seed=1).propose(req).proposals]

    assert first_rewards("long_watch_corr") == [("explore", "long_watch"), ("explore", "completion"),
                                                ("exploit", "long_watch")]
    for other in ("top_watch_share", "return_corr"):
        assert first_rewards(other) == [("explore", "completion"), ("explore", "watch_weighted"),
                                        ("exploit", "watch_weighted")], other


def test_builtin_repair_moves_to_safer_settings(tmp_path):
    j = Journal(tmp_path)
    e = next(x for x in CATALOGUE if x.key == "adagrad")
    parent = Hypothesis(id="g001-01", generation=1, persona="optimizer", component="optimizer", category="explore",
                        delta=e.render({"lr": 0.3}), meta={"entry": "adagrad", "params": {"lr": 0.3}}, phase="Failed")
    res = BuiltinProposer().propose(_request(j, OPTIMIZER, 1, {"exploit": 1}, repair_of=parent))
    assert len(res.proposals) == 1 and res.proposals[0]["delta"]["patch"]["lr"] < 0.3


def test_builtin_rewards_read_only_the_columns_the_data_declares(tmp_path):
    """On data without the world's columns (MovieLens declares ratings, not watch time) the built-in proposer
    offers no catalogue reward that would fail its gate, only those its declaration derives (declared_rewards,
    tests/agents/test_declared_rewards.py); on data that has only some, only the rewards those allow."""
    import sqlglot
    from sqlglot import exp

    from cambrian.agents.personas import reward_columns
    from cambrian.trainer.schema import BUILT_IN

    for e in CATALOGUE:  # each entry's declared columns are what its SQL reads (the operator loads no sqlglot)
        sql = [v for v in e.render({})["patch"].values() if isinstance(v, str)] if e.component == "reward" else []
        parsed = {c.name for t in sql for c in sqlglot.parse_one(t, read="duckdb").find_all(exp.Column)}
        assert set(e.reads) == parsed, e.key

    def proposed(columns, schema=None):
        req = ProposalRequest(REWARD, 1, {"explore": 3, "exploit": 1, "innovate": 3}, "", ModelConfig(),
                              Journal(tmp_path / f"{len(columns)}-{schema is None}"), columns=tuple(columns),
                              schema=schema)
        return [p["meta"]["entry"] for p in BuiltinProposer(seed=1).propose(req).proposals]

    world = proposed(reward_columns(BUILT_IN["world"]))
    assert len(world) == 7 and "watch_weighted" in world
    assert proposed(reward_columns(BUILT_IN["world"]), BUILT_IN["world"]) == world
    movielens = BUILT_IN["movielens-100k"]
    assert proposed(reward_columns(movielens)) == []  # columns without their declaration: nothing to derive from
    derived = proposed(reward_columns(movielens), movielens)
    # four entries, then Optuna on the threshold family: cuts 2, 3 (its default) and 5; 4 is the declared label
    # (rating >= 4) again, so the seventh quota finds nothing new
    assert len(derived) == 6 and not set(derived) & {e.key for e in CATALOGUE}
    assert derived.count("threshold:rating") == 3
    assert all(k.endswith(":rating") for k in derived)
    some = proposed(["click", "completion", "label"])
    assert some and set(some) <= {"completion", "click_completion"}
    assert all(set(e.reads) <= {"click", "completion"} for e in CATALOGUE if e.key in some)
