"""Every Hypothesis phase transition through the pure core, with plain observations."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from cambrian.operator import api
from cambrian.operator.reconcile import hypothesis as H
from cambrian.operator.reconcile.actions import CreateTrainingJob, RecordJournal
from cambrian.operator.reconcile.common import Meta
from cambrian.operator.reconcile.observations import JobObservation, RolloutView

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
META = Meta("hyp-adam", "uid-1234", "ns", 1)


def evo_spec(**over) -> api.EvolutionSpec:
    data = {"objective": {"northStar": [{"name": "dau"}]}, "data": {"world": {"users": 100, "days": 3}}}
    data.update(over)
    return api.EvolutionSpec.model_validate(data)


# A champion measured over three seeds that the plain test candidates do not beat.
CHAMPION = {"val_loss": api.ProxyMetric(value=0.3, std=0.01, seeds=3),
            "top_watch_share": api.ProxyMetric(value=0.3, std=0.01, seeds=3)}


def ctx(**kw) -> H.EvolutionContext:
    spec = kw.pop("spec", evo_spec())
    kw.setdefault("reference", CHAMPION)
    return H.EvolutionContext(name="evo", uid="evo-uid", spec=spec, baseline=spec.baseline, **kw)


def hyp_spec(component="optimizer", patch=..., code=None) -> api.HypothesisSpec:
    delta = {"patch": patch if patch is not ... else {"lr": 0.01}}
    if code is not None:
        delta["code"] = code
    return api.HypothesisSpec.model_validate(
        {"evolutionRef": {"name": "evo"}, "component": component, "explanation": "faster", "delta": delta}
    )


def run(spec, status, job=None, rollout=None, c="default", now=T0, jobs=None):
    jobs = jobs if jobs is not None else ([job] if job else [])
    return H.reconcile(META, spec, status, ctx() if c == "default" else c, jobs, rollout, now)


def to_training(spec=None):
    spec = spec or hyp_spec()
    r = run(spec, api.HypothesisStatus())
    assert r.status.phase == "Training"
    return spec, r


def test_proposed_validated_training_in_one_pass():
    spec, r = to_training()
    jobs = [a for a in r.actions if isinstance(a, CreateTrainingJob)]
    assert len(jobs) == 1 and jobs[0].name == H.job_name(META, 1) == r.status.job_name
    assert jobs[0].delta == {"component": "optimizer", "patch": {"lr": 0.01}}
    assert jobs[0].training["gpu"] == {"resource": "nvidia.com/gpu", "count": 1}
    assert r.status.attempts == 1 and r.status.training_started_at == T0
    assert r.status.config_fingerprint and r.status.observed_generation == 1
    events = [a.event for a in r.actions if isinstance(a, RecordJournal)]
    assert events == ["Proposed", "Validated", "TrainingStarted"]
    assert {c.type: c.status for c in r.status.conditions} == {"Validated": "True", "Training": "True"}
    assert all(c.observed_generation == 1 for c in r.status.conditions)


def test_delta_that_breaks_the_config_is_rejected_with_the_field():
    r = run(hyp_spec(patch={"lr": -1}), api.HypothesisStatus())
    assert r.status.phase == "Rejected"
    assert "optimizer.lr" in r.status.reason
    assert not [a for a in r.actions if isinstance(a, CreateTrainingJob)]
    # terminal: nothing more happens
    again = run(hyp_spec(patch={"lr": -1}), r.status)
    assert again.actions == [] and again.status.phase == "Rejected"


@pytest.mark.parametrize("component,patch", [
    ("optimizer", {"lr": 0.003, "name": "Adam"}),  # the baseline's own settings
    ("reward", {"label": "(LABEL)"}),
    ("reward", {"label": "CAST(label AS DOUBLE)", "weight": "1"}),
])
def test_a_delta_that_changes_nothing_is_rejected_before_any_job(component, patch):
    # judged against the champion it would be the champion against itself: a "better" verdict on no change
    r = run(hyp_spec(component, patch), api.HypothesisStatus())
    assert r.status.phase == "Rejected" and "changes nothing" in r.status.reason
    assert not [a for a in r.actions if isinstance(a, CreateTrainingJob)]
    # what canonical_sql does not rewrite stays a change (a cast to FLOAT is float32; TRY_CAST is not CAST)
    for label in ("CAST(label AS FLOAT)", "TRY_CAST(label AS DOUBLE)", "1 - label"):
        assert run(hyp_spec("reward", {"label": label}), api.HypothesisStatus()).status.phase == "Training"


@pytest.mark.parametrize("component,delta,field", [
    # its seed pinned: each confirmation "seed" was the first run again (spread 0), so a lucky seed got confirmed
    ("optimizer", {"patch": {"lr": 0.01}, "also": {"training": {"seed": 77}}}, "also.training.seed"),
    ("training", {"patch": {"epochs": 5, "seed": 77}}, "patch.seed"),
    # its own held-out days: its val_loss measured on other rows than the champion's
    ("training", {"patch": {"validation_days": 2}}, "patch.validation_days"),
    ("architecture", {"patch": {"dropout": 0.1}, "also": {"training": {"validation_days": 2}}},
     "also.training.validation_days"),
])
def test_a_delta_that_sets_the_evaluations_seed_or_held_out_days_is_rejected(component, delta, field):
    spec = api.HypothesisSpec.model_validate({"evolutionRef": {"name": "evo"}, "component": component,
                                              "explanation": "x", "delta": delta})
    r = run(spec, api.HypothesisStatus())
    assert r.status.phase == "Rejected" and r.status.failure_stage == "static"
    assert field in r.status.reason and "defines the evaluation" in r.status.reason
    assert not [a for a in r.actions if isinstance(a, CreateTrainingJob)]


def test_a_reward_change_is_never_scored_by_val_loss():
    """val_loss is measured on the run's own label, so a reward of constant 0 would win: an Evolution whose reward
    persona would be scored by it is refused, and a reward Hypothesis under such an objective is Rejected."""
    loss = {"northStar": [{"name": "dau"}], "offline": {"reward": {"metric": "val_loss", "direction": "minimize"}}}
    with pytest.raises(ValueError, match="a reward change redefines the label val_loss is measured on"):
        evo_spec(objective=loss)
    quiet = evo_spec(objective=loss, agent={"personas": ["optimizer", "architecture"]})  # no reward persona: valid
    r = H.reconcile(META, hyp_spec("reward", {"label": "0.0"}), api.HypothesisStatus(), ctx(spec=quiet), [], None, T0)
    assert r.status.phase == "Rejected" and "cannot be scored by val_loss" in r.status.reason
    assert not [a for a in r.actions if isinstance(a, CreateTrainingJob)]
    r = H.reconcile(META, hyp_spec("optimizer", {"lr": 0.01}), api.HypothesisStatus(), ctx(spec=quiet), [], None, T0)
    assert r.status.phase == "Training"


def test_every_run_is_recorded_under_the_seed_it_trains():
    from cambrian.trainer.config import parse_config
    from cambrian.trainer.delta import apply_delta, parse_delta

    def trained(job):  # the seed `cambrian train` uses: the job's Φ with its delta applied
        return apply_delta(parse_config(job.baseline), parse_delta(job.delta)).training.seed

    spec = hyp_spec("training", {"epochs": 5})
    c = ctx(reference={"val_loss": api.ProxyMetric(value=0.3, std=0.004, seeds=3)})
    r = run(spec, api.HypothesisStatus(), c=c)
    (first,) = [a for a in r.actions if isinstance(a, CreateTrainingJob)]
    done = [JobObservation(first.name, "Succeeded", 0, metrics={"val_loss": 0.29}, bundle_uri="b")]
    r = run(spec, r.status, c=c, jobs=done)
    confirm = [a for a in r.actions if isinstance(a, CreateTrainingJob)]
    assert r.status.verdict == "promising" and len(confirm) == 2
    done += [JobObservation(a.name, "Succeeded", 0, metrics={"val_loss": 0.29 + 0.001 * i}) for i, a in
             enumerate(confirm)]
    r = run(spec, r.status, c=c, jobs=done)
    runs = {s.job: s.seed for s in r.status.seed_runs}
    assert runs == {a.name: trained(a) for a in [first, *confirm]} and len(set(runs.values())) == 3


def test_a_reward_that_writes_out_the_declared_label_changes_nothing():
    # MovieLens declares its label as ratings.rating >= 4: the champion's `label` spelt out is no new reward
    c = ctx(spec=evo_spec(data={"source": {"uri": "s3://lake/movielens"}, "declaration": "movielens-100k"},
                          objective={"northStar": [{"name": "dau"}],
                                     "offline": {"reward": {"metric": "rating_corr", "direction": "maximize"}}}))
    for label in ("CAST(rating >= 4 AS DOUBLE)", "4 <= rating"):
        r = H.reconcile(META, hyp_spec("reward", {"label": label}), api.HypothesisStatus(), c, [], None, T0)
        assert r.status.phase == "Rejected" and "changes nothing" in r.status.reason
    r = H.reconcile(META, hyp_spec("reward", {"label": "rating >= 5"}), api.HypothesisStatus(), c, [], None, T0)
    assert r.status.phase == "Training"


def test_plugin_code_fails_the_static_gate_before_any_job():
    code = "import socket\ndef build_optimizer(params, cfg):\n    return torch.optim.SGD(params, lr=cfg.lr)\n"
    r = run(hyp_spec(patch=None, code=code), api.HypothesisStatus())
    assert r.status.phase == "Failed" and r.status.failure_stage == "static" and "socket" in r.status.reason
    assert not [a for a in r.actions if isinstance(a, CreateTrainingJob)] and r.status.attempts == 0
    ok = "def build_optimizer(params, cfg):\n    return torch.optim.SGD(params, lr=cfg.lr)\n"
    assert run(hyp_spec(patch=None, code=ok), api.HypothesisStatus()).status.phase == "Training"


def test_missing_evolution_waits():
    r = run(hyp_spec(), api.HypothesisStatus(), c=None)
    assert r.status.phase == "Proposed" and r.requeue_after
    assert any(c.reason == "EvolutionNotFound" for c in r.status.conditions)


def test_budget_exhausted_holds_validated():
    r = run(hyp_spec(), api.HypothesisStatus(), c=ctx(budget_exhausted="gpuHours"))
    assert r.status.phase == "Validated" and r.status.attempts == 0
    assert not [a for a in r.actions if isinstance(a, CreateTrainingJob)]


def test_running_job_is_left_alone():
    spec, r = to_training()
    job = JobObservation(r.status.job_name, "Running")
    r2 = run(spec, r.status, job=job, now=T0 + timedelta(minutes=5))
    assert r2.actions == [] and r2.status.phase == "Training"


def test_succeeded_job_scores_with_the_component_metric():
    spec, r = to_training()
    metrics = {"val_loss": 0.41, "auc": 0.7, "return_corr": 0.1, "device": "cuda"}
    job = JobObservation(r.status.job_name, "Succeeded", 0, metrics=metrics, bundle_uri="pvc://b/x")
    r2 = run(spec, r.status, job=job)
    s = r2.status
    assert s.phase == "Scored" and s.offline_metric == "val_loss" and s.offline_score == 0.41
    assert s.proxy_metrics["val_loss"].seeds == 1 and s.proxy_metrics["val_loss"].stderr is None
    assert "device" not in s.proxy_metrics and s.bundle_uri == "pvc://b/x"
    assert s.verdict == "not_better" and s.gain == pytest.approx(-0.11)


def test_a_run_done_before_the_baseline_waits_for_its_noise_floor():
    spec, r = to_training()
    job = JobObservation(r.status.job_name, "Succeeded", 0, metrics={"val_loss": 0.2}, bundle_uri="pvc://b/x",
                         started_at=T0, finished_at=T0 + timedelta(hours=1))
    early = run(spec, r.status, job=job, c=ctx(reference={}))
    assert early.status.phase == "Training" and early.status.verdict is None and early.status.gpu_hours == 1.0
    again = run(spec, early.status, job=job, c=ctx(reference={}))
    assert again.status.phase == "Training" and again.status.gpu_hours == 1.0  # counted once
    judged = run(spec, again.status, job=job, c=ctx(reference={"auc": api.ProxyMetric(value=0.6, seeds=3)}))
    assert judged.status.phase == "Scored" and judged.status.verdict is None and judged.status.gpu_hours == 1.0
    assert "reported no val_loss" in judged.status.reason  # a champion without the metric: never rolled out


# ---- the noise floor: the gain against the champion's seeds, confirmation seeds --------------------------------

REFERENCE = {"val_loss": api.ProxyMetric(value=0.5, std=0.01, seeds=3)}  # the baseline over three seeds


def first_run(val_loss, **kw):
    spec, r = to_training()
    c = ctx(reference=REFERENCE, **kw)
    job = JobObservation(r.status.job_name, "Succeeded", 0, metrics={"val_loss": val_loss}, bundle_uri="pvc://b/h")
    return spec, c, H.reconcile(META, spec, r.status, c, [job], None, T0 + timedelta(minutes=5))


def test_a_gain_of_1e9_is_not_better_and_trains_nothing_more():
    _, _, r = first_run(0.5 - 1e-9)
    s = r.status
    assert s.phase == "Scored" and s.verdict == "not_better" and s.confirmations == 0
    assert s.gain == pytest.approx(1e-9) and s.noise_floor == pytest.approx(2 * (0.01**2 / 3 + 0.01**2) ** 0.5)
    assert "within the noise floor" in s.reason and not [a for a in r.actions if isinstance(a, CreateTrainingJob)]


def test_every_run_of_a_hypothesis_trains_the_champion_it_was_validated_against():
    # validated and first trained on champion A; B is launched before its confirmation seeds start: they train A
    # with its delta too, or the seeds of one hypothesis would be replicas of two models
    a = {"optimizer": {"name": "SGD"}}
    b = {"optimizer": {"name": "AdamW"}, "training": {"epochs": 9}}
    spec = hyp_spec()
    on = lambda champion: H.EvolutionContext(name="evo", uid="evo-uid", spec=evo_spec(), baseline=champion,  # noqa: E731
                                             reference=REFERENCE)
    r = H.reconcile(META, spec, api.HypothesisStatus(), on(a), [], None, T0)
    assert r.status.phase == "Training" and r.status.baseline == a
    (first,) = [x for x in r.actions if isinstance(x, CreateTrainingJob)]
    assert first.baseline == a
    job = JobObservation(r.status.job_name, "Succeeded", 0, metrics={"val_loss": 0.40}, bundle_uri="pvc://b/h")
    later = H.reconcile(META, spec, r.status, on(b), [job], None, T0 + timedelta(minutes=5))
    seeds = [x for x in later.actions if isinstance(x, CreateTrainingJob)]
    assert later.status.verdict == "promising" and len(seeds) == 2
    assert all({k: v for k, v in x.baseline.items() if k != "training"} == a for x in seeds)
    assert all(x.baseline["training"].get("epochs") is None for x in seeds)  # B's epochs are not in them
    assert later.status.config_fingerprint == r.status.config_fingerprint


def test_a_promising_run_is_confirmed_with_extra_seeds_before_it_is_better():
    spec, c, r = first_run(0.40)
    s = r.status
    assert s.phase == "Training" and s.verdict == "promising" and s.confirmations == 2
    confirm = [a for a in r.actions if isinstance(a, CreateTrainingJob)]
    assert [a.baseline["training"]["seed"] for a in confirm] == [1000, 1001]  # other seeds, same delta
    assert all(a.delta == {"component": "optimizer", "patch": {"lr": 0.01}} for a in confirm)
    assert [a.name for a in confirm] == [H.confirm_job_name(META, 1000), H.confirm_job_name(META, 1001)]
    # one still running: nothing is judged; a replay re-issues no new names
    done = JobObservation(confirm[0].name, "Succeeded", 0, metrics={"val_loss": 0.41})
    r2 = H.reconcile(META, spec, s, c, [done, JobObservation(confirm[1].name, "Running")], None, T0 + timedelta(hours=1))
    assert r2.status.phase == "Training" and [r.seed for r in r2.status.seed_runs] == [0, 1000]
    assert not [a for a in r2.actions if isinstance(a, CreateTrainingJob)]
    r3 = H.reconcile(META, spec, r2.status, c, [done, JobObservation(confirm[1].name, "Succeeded", 0,
                                                                      metrics={"val_loss": 0.39})], None, T0 + timedelta(hours=2))
    s3 = r3.status
    assert s3.phase == "Scored" and s3.verdict == "better" and s3.proxy_metrics["val_loss"].seeds == 3
    assert s3.offline_score == pytest.approx(0.40) and s3.bundle_uri == "pvc://b/h"  # the first seed's model
    from cambrian.operator.reconcile.views import spend

    assert spend([{"status": s3.wire()}]).evaluations == 3  # the attempt and both confirmation seeds


def test_a_promising_run_that_fails_to_confirm_is_not_better():
    spec, c, r = first_run(0.40)
    names = [a.name for a in r.actions if isinstance(a, CreateTrainingJob)]
    ok = JobObservation(names[0], "Succeeded", 0, metrics={"val_loss": 0.50})
    worse = H.reconcile(META, spec, r.status, c, [ok, JobObservation(names[1], "Succeeded", 0, metrics={"val_loss": 0.52})],
                        None, T0 + timedelta(hours=1))
    assert worse.status.phase == "Scored" and worse.status.verdict == "not_better"
    nan = JobObservation(names[1], "Failed", 4, "Error", "loss is NaN")
    retried = H.reconcile(META, spec, r.status, c, [ok, nan], None, T0 + timedelta(hours=1))
    again = [a.name for a in retried.actions if isinstance(a, CreateTrainingJob)]
    assert retried.status.phase == "Training" and again == [H.confirm_job_name(META, 1001, 2)]  # maxAttempts 2
    from cambrian.operator.reconcile.views import spend

    assert spend([{"status": retried.status.wire()}]).evaluations == 4  # attempt, two seeds, one retry
    nan2 = JobObservation(again[0], "Failed", 4, "Error", "loss is NaN")
    failed = H.reconcile(META, spec, retried.status, c, [ok, nan, nan2], None, T0 + timedelta(hours=2))
    assert failed.status.phase == "Failed" and "confirmation seed 1001" in failed.status.reason
    gate = H.reconcile(META, spec, r.status, c, [ok, JobObservation(names[1], "Failed", 3, "Error", "gate")], None,
                       T0 + timedelta(hours=1))
    assert gate.status.phase == "Failed"  # exit 3 is never retried


def test_a_promising_run_is_left_promising_when_the_budget_is_spent():
    _, _, r = first_run(0.40, budget_exhausted="evaluations")
    assert r.status.phase == "Scored" and r.status.verdict == "promising" and r.status.confirmations == 0
    assert "not confirmed: budget evaluations is spent" in r.status.reason


def peer(name, phase="Training", verdict=None, gain=None, floor=None, confirmations=0):
    from cambrian.operator.reconcile.observations import HypothesisView

    return HypothesisView(name, phase, "optimizer", verdict=verdict, gain=gain, noise_floor=floor,
                          confirmations=confirmations)


def left_after_first_run(n):
    """An Evolution whose evaluations budget has `n` runs left once this Hypothesis's first run started (the peers
    of these tests have started none; the baseline's seeds are not counted here)."""
    return evo_spec(agent={"budgets": {"evaluations": n + 1}})


def test_a_promising_run_is_confirmed_at_once_while_the_budget_pays_for_every_candidate():
    # 6 runs left: this one, a promising rival and a first run still training can all be confirmed (2 seeds each)
    peers = [peer("rival", verdict="promising", gain=0.5, floor=0.01), peer("training")]
    _, _, r = first_run(0.40, spec=left_after_first_run(6), peers=lambda: peers)
    assert r.status.confirmations == 2 and r.status.phase == "Training"


def test_a_promising_run_waits_for_the_first_runs_in_flight_when_the_budget_is_short():
    from cambrian.operator.reconcile import confirmation as CF

    peers = [peer("training"), peer("done", phase="Scored", verdict="not_better")]
    spec, c, r = first_run(0.40, spec=left_after_first_run(2), peers=lambda: peers)
    s = r.status
    assert s.phase == "Training" and s.verdict == "promising" and s.confirmations == 0
    assert not [a for a in r.actions if isinstance(a, CreateTrainingJob)] and r.requeue_after
    waiting = [x for x in s.conditions if x.type == "Training"][0]
    assert waiting.reason == CF.WAITING and "1 first run(s) still training" in waiting.message
    # the rival's first run turns out weaker: this one (about 6 floors) goes first
    weaker = [peer("training", verdict="promising", gain=0.02, floor=0.02), peers[1]]
    job = JobObservation(s.job_name, "Succeeded", 0, metrics={"val_loss": 0.40}, bundle_uri="pvc://b/h")
    short = left_after_first_run(2)
    go = H.reconcile(META, spec, s, ctx(reference=REFERENCE, spec=short, peers=lambda: weaker), [job], None,
                     T0 + timedelta(minutes=10))
    assert go.status.confirmations == 2 and len([a for a in go.actions if isinstance(a, CreateTrainingJob)]) == 2
    # ... and a stronger rival takes the last two runs: this one is scored, promising, never rolled out
    stronger = [peer("training", verdict="promising", gain=0.5, floor=0.01), peers[1]]
    lost = H.reconcile(META, spec, s, ctx(reference=REFERENCE, spec=short, peers=lambda: stronger), [job], None,
                       T0 + timedelta(minutes=10))
    assert lost.status.phase == "Scored" and lost.status.verdict == "promising" and lost.status.confirmations == 0
    assert "1 stronger promising run(s) first" in lost.status.reason


def test_a_promising_run_the_last_runs_cannot_confirm_is_scored_at_once():
    _, _, r = first_run(0.40, spec=left_after_first_run(1), peers=lambda: [])
    assert r.status.phase == "Scored" and r.status.verdict == "promising"
    assert "the 1 evaluation(s) left cannot pay for 2 confirmation seeds" in r.status.reason


def test_the_confirmation_turn_ranks_by_noise_floors_and_counts_what_was_started():
    from cambrian.operator.reconcile.confirmation import turn

    rivals = [peer("a", verdict="promising", gain=0.3, floor=0.1),  # 3 floors
              peer("b", verdict="promising", gain=0.9, floor=0.1),  # 9 floors
              peer("c", verdict="promising", gain=5.0, floor=0.1, confirmations=2)]  # confirming: already spent
    assert turn("me", 5.0, 2, None, rivals).go  # no evaluations budget: always
    assert turn("me", 5.0, 2, 6, rivals).go  # pays for me, a and b
    assert turn("me", 5.0, 2, 4, rivals).go and not turn("a", 3.0, 2, 4, rivals + [peer("me", verdict="promising",
                                                                                         gain=0.5, floor=0.1)]).go
    assert not turn("me", 5.0, 2, 3, rivals).go and turn("me", 5.0, 2, 3, rivals).final  # b is stronger
    assert turn("me", 10.0, 2, 3, rivals).go  # stronger than b: first


def test_reward_hypothesis_scored_on_top_watch_share_by_default():
    """The Evolution names no reward objective: a reward change is scored by the world's top_watch_share, not by
    the loss (not comparable across rewards) nor return_corr (the default before issue 18)."""
    spec, r = to_training(hyp_spec("reward", patch={"label": "CAST(click AS DOUBLE) * completion"}))
    job = JobObservation(r.status.job_name, "Succeeded", 0,
                         metrics={"val_loss": 0.3, "return_corr": 0.5, "top_watch_share": 0.2})
    st = run(spec, r.status, job=job).status
    assert (st.offline_metric, st.offline_score) == ("top_watch_share", 0.2)
    # a trainer that reports the former default only has not reported the objective: a failure, never a score
    spec, r = to_training(hyp_spec("reward", patch={"label": "CAST(click AS DOUBLE) * completion"}))
    job = JobObservation(r.status.job_name, "Succeeded", 0, metrics={"val_loss": 0.3, "return_corr": 0.2})
    st = run(spec, r.status, job=job).status
    assert st.phase == "Failed" and "reported no 'top_watch_share' metric" in st.reason and st.offline_score is None


def test_success_without_metric_fails():
    spec, r = to_training()
    r2 = run(spec, r.status, job=JobObservation(r.status.job_name, "Succeeded", 0, metrics=None))
    assert r2.status.phase == "Failed" and "val_loss" in r2.status.reason


def test_gate_failure_is_not_retried():
    spec, r = to_training()
    job = JobObservation(r.status.job_name, "Failed", 3, "Error", "NaN loss in backward", stage="forward_backward")
    r2 = run(spec, r.status, job=job)
    assert r2.status.phase == "Failed" and r2.status.failure_stage == "forward_backward"
    assert "NaN loss" in r2.status.reason
    assert not [a for a in r2.actions if isinstance(a, CreateTrainingJob)]


def test_infrastructure_failure_retries_then_fails():
    spec, r = to_training()
    oom = JobObservation(r.status.job_name, "Failed", 137, "OOMKilled")
    r2 = run(spec, r.status, job=oom, now=T0 + timedelta(hours=1))
    assert r2.status.phase == "Training" and r2.status.attempts == 2
    assert r2.kinds() == ["RecordJournal", "CreateTrainingJob"]
    new = [a for a in r2.actions if isinstance(a, CreateTrainingJob)][0]
    assert new.name == H.job_name(META, 2) != H.job_name(META, 1) and new.attempt == 2
    assert r2.status.training_started_at == T0 + timedelta(hours=1)
    oom2 = JobObservation(new.name, "Failed", 137, "OOMKilled")
    r3 = run(spec, r2.status, jobs=[oom, oom2])
    assert r3.status.phase == "Failed" and "after 2 attempts" in r3.status.reason and "OOMKilled" in r3.status.reason


def test_a_failed_run_is_not_retried_past_the_evaluations_budget():
    """A retry is a run like any other: with the budget's last run spent on the attempt that failed, the Hypothesis
    fails (stage budget) instead of starting one more run past the cap."""
    hyp = hyp_spec()
    r = run(hyp, api.HypothesisStatus(), c=ctx(spec=left_after_first_run(0)))
    assert r.status.phase == "Training"
    oom = JobObservation(r.status.job_name, "Failed", 137, "OOMKilled")
    r2 = run(hyp, r.status, jobs=[oom], c=ctx(spec=left_after_first_run(0)))
    assert r2.status.phase == "Failed" and r2.status.failure_stage == "budget"
    assert "not retried: the evaluations budget is spent" in r2.status.reason
    assert not [a for a in r2.actions if isinstance(a, CreateTrainingJob)]
    r3 = run(hyp, r.status, jobs=[oom], c=ctx(spec=left_after_first_run(1)))  # one run left: retried
    assert r3.status.phase == "Training" and r3.status.attempts == 2


def test_job_gone_is_recreated_with_the_same_name():
    spec, r = to_training()
    r2 = run(spec, r.status, job=None)
    assert [a.name for a in r2.actions if isinstance(a, CreateTrainingJob)] == [r.status.job_name]
    assert r2.status.attempts == 1


def test_a_later_attempt_than_the_status_knows_is_adopted():
    spec, r = to_training()
    first = JobObservation(H.job_name(META, 1), "Failed", 137, "OOMKilled")
    second = JobObservation(H.job_name(META, 2), "Running", started_at=T0 + timedelta(minutes=3))
    r2 = run(spec, r.status, jobs=[first, second], now=T0 + timedelta(minutes=9))
    assert r2.actions == [] and r2.status.attempts == 2 and r2.status.job_name == second.name
    assert r2.status.training_started_at == T0 + timedelta(minutes=3)


def scored():
    spec, r = to_training()
    job = JobObservation(r.status.job_name, "Succeeded", 0, metrics={"val_loss": 0.4}, bundle_uri="b")
    return spec, run(spec, r.status, job=job).status


def test_scored_goes_live_when_a_rollout_serves_it():
    spec, st = scored()
    assert run(spec, st, rollout=None).status.phase == "Scored"
    r = run(spec, st, rollout=RolloutView("ro-1", "Running", (META.name,)))
    assert r.status.phase == "Live" and r.status.rollout == "ro-1"


@pytest.mark.parametrize(
    "phase,winner,expected",
    [("Promoted", META.name, "Launched"), ("Promoted", "other", "Retired"), ("RolledBack", None, "Retired"),
     ("Inconclusive", None, "Retired")],
)
def test_live_concludes(phase, winner, expected):
    spec, st = scored()
    st = run(spec, st, rollout=RolloutView("ro-1", "Running", (META.name,))).status
    decision = {"Promoted": "promote", "RolledBack": "rollback", "Inconclusive": "inconclusive"}[phase]
    ro = RolloutView("ro-1", phase, (META.name,), decision, winner, "b", "why",
                     ({"arm": "treatment", "metric": "dau", "estimate": 0.1, "ciLow": 0.0, "ciHigh": 0.2},),
                     arms=((META.name, "treatment"),))
    r = run(spec, st, rollout=ro)
    assert r.status.phase == expected
    assert r.status.online.decision == decision and r.status.online.effects[0].ci_high == 0.2
    assert r.status.online.arm == "treatment"  # which of the effects is this hypothesis's own


def test_a_promoted_winner_waits_for_its_evolution_to_launch_it_or_to_send_it_back_to_the_review():
    spec, st = scored()
    st = run(spec, st, rollout=RolloutView("ro-1", "Running", (META.name,))).status
    ro = RolloutView("ro-1", "Promoted", (META.name,), "promote", META.name, "b", "dau +8%",
                     ({"arm": "treatment", "metric": "dau", "estimate": 0.08, "ciLow": 0.02, "ciHigh": 0.14},),
                     arms=((META.name, "treatment"),))
    waiting = run(spec, st, rollout=ro, c=ctx(decided=frozenset()))
    assert waiting.status.phase == "Live" and waiting.requeue_after
    assert next(c for c in waiting.status.conditions if c.type == "Live").reason == "AwaitingLaunch"
    launched = run(spec, waiting.status, rollout=ro, c=ctx(decided=frozenset({"ro-1"})))
    assert launched.status.phase == "Launched" and launched.status.online.decision == "promote"
    # another winner was launched first: it beat a model that is no longer production, so it is tested again
    back = run(spec, waiting.status, rollout=ro, c=ctx(decided=frozenset({"ro-1"}), superseded=frozenset({"ro-1"})))
    assert back.status.phase == "Scored" and "no longer the champion" in back.status.reason
    assert back.status.rollout is None and back.status.online is None and back.status.verdict == st.verdict
    assert [(a.warning, a.data["rollout"]) for a in back.actions
            if isinstance(a, RecordJournal) and a.event == "BackToReview"] == [(True, "ro-1")]
    # its second test starts like the first, and its outcome is final
    ro2 = RolloutView("ro-2", "Running", (META.name,))
    again = run(spec, back.status, rollout=ro2, c=ctx(decided=frozenset({"ro-1"}), superseded=frozenset({"ro-1"})))
    assert again.status.phase == "Live" and again.status.rollout == "ro-2"
    lost = RolloutView("ro-2", "RolledBack", (META.name,), "rollback", None, None, "dau -3%")
    c2 = ctx(decided=frozenset({"ro-1", "ro-2"}), superseded=frozenset({"ro-1"}))
    assert run(spec, again.status, rollout=lost, c=c2).status.phase == "Retired"


def test_a_rollout_its_evolution_ended_sends_its_hypothesis_back_and_other_endings_are_final():
    spec, st = scored()
    st = run(spec, st, rollout=RolloutView("ro-1", "Running", (META.name,))).status
    ended = RolloutView("ro-1", "RolledBack", (META.name,), "rollback", None, None,
                        "retired by its Evolution: its control is no longer the champion",
                        retired="its control is no longer the champion")
    waiting = run(spec, st, rollout=ended, c=ctx(decided=frozenset()))
    assert waiting.status.phase == "Live"
    assert next(c for c in waiting.status.conditions if c.type == "Live").reason == "AwaitingDecision"
    back = run(spec, waiting.status, rollout=ended, c=ctx(decided=frozenset({"ro-1"}), superseded=frozenset({"ro-1"})))
    assert back.status.phase == "Scored" and back.status.reason.startswith(
        "rollout ro-1 was ended by its Evolution before it decided (its control is no longer the champion)")
    assert [a.warning for a in back.actions if isinstance(a, RecordJournal) and a.event == "BackToReview"] == [False]
    # the same ending for any other reason (the online agent dropped it, a guardrail) is final
    final = run(spec, waiting.status, rollout=ended, c=ctx(decided=frozenset({"ro-1"})))
    assert final.status.phase == "Retired" and final.status.online.decision == "rollback"


def test_a_rollout_that_failed_before_it_decided_sends_its_hypothesis_back_to_the_review():
    # a Rollout Failed (its Prometheus refused the Evolution's PromQL, the platform refuses a child) decided nothing:
    # before, its hypothesis was Retired untested, with no online result
    spec, st = scored()
    st = run(spec, st, rollout=RolloutView("ro-1", "Running", (META.name,))).status
    failed = RolloutView("ro-1", "Failed", (META.name,), None, None, None, "InvalidSpec: bad_metric: parse error")
    back = run(spec, st, rollout=failed, c=ctx(decided=frozenset({"ro-1"}), superseded=frozenset({"ro-1"})))
    assert back.status.phase == "Scored" and back.status.undecided_tests == ["ro-1"]
    assert back.status.reason.startswith("rollout ro-1 failed before it decided (InvalidSpec: bad_metric: parse error)")


def test_a_hypothesis_keeps_its_undecided_tests_and_is_retired_undecided_after_max_tests():
    # each test that decided nothing is recorded on the Hypothesis itself (the review reads that, not the
    # Evolution's bounded list); after spec.experiment.maxTests of them it is Retired, not tested forever
    evo = evo_spec()
    evo = evo.model_copy(update={"experiment": evo.experiment.model_copy(update={"max_tests": 2})})
    spec, st = scored()
    for n, expected in ((1, "Scored"), (2, "Retired")):
        name = f"ro-{n}"
        st = run(spec, st, rollout=RolloutView(name, "Running", (META.name,)), c=ctx(spec=evo)).status
        assert st.phase == "Live"
        ended = RolloutView(name, "RolledBack", (META.name,), "rollback", None, None, "retired",
                            retired="the online agent ranked others above it")
        gone = frozenset({f"ro-{i}" for i in range(1, n + 1)})
        r = run(spec, st, rollout=ended, c=ctx(spec=evo, decided=gone, superseded=gone))
        st = r.status
        assert st.phase == expected and st.undecided_tests == [f"ro-{i}" for i in range(1, n + 1)]
        assert st.online is None
    live = next(c for c in st.conditions if c.type == "Live")
    assert live.reason == "Undecided" and "2 online test(s) decided nothing" in st.reason
    assert [a.event for a in r.actions if isinstance(a, RecordJournal)] == ["Retired"]


def test_a_rollout_that_concluded_before_its_hypothesis_saw_it_live_still_decides_it():
    # a guardrail at the first readout can end a Rollout before its Hypothesis's next reconcile: the decision
    # applies from Scored as from Live (before, the Hypothesis stayed Scored with no online result)
    spec, st = scored()
    stopped = RolloutView("ro-1", "RolledBack", (META.name,), "rollback", None, None, "hate rate +40%",
                          arms=((META.name, "treatment"),))
    waiting = run(spec, st, rollout=stopped, c=ctx(decided=frozenset()))
    assert waiting.status.phase == "Scored" and waiting.requeue_after
    done = run(spec, waiting.status, rollout=stopped, c=ctx(decided=frozenset({"ro-1"})))
    assert done.status.phase == "Retired" and done.status.online.decision == "rollback"
    assert done.status.rollout == "ro-1" and done.status.online.arm == "treatment"
    # one it already counted as undecided is not read again while it waits for its next test
    back = run(spec, st, rollout=stopped, c=ctx(decided=frozenset({"ro-1"}), superseded=frozenset({"ro-1"})))
    assert back.status.phase == "Scored" and back.status.undecided_tests == ["ro-1"]
    assert run(spec, back.status, rollout=stopped, c=ctx(decided=frozenset({"ro-1"}))).status == back.status


def test_a_rollout_marked_applied_decides_its_hypothesis_once_the_evolution_forgot_its_name():
    # the Evolution keeps a decision's name only until its Rollout carries the mark (actions.A_APPLIED)
    spec, st = scored()
    st = run(spec, st, rollout=RolloutView("ro-1", "Running", (META.name,))).status
    lost = RolloutView("ro-1", "RolledBack", (META.name,), "rollback", None, None, "dau -3%", applied="final")
    done = run(spec, st, rollout=lost, c=ctx(decided=frozenset()))
    assert done.status.phase == "Retired" and done.status.online.decision == "rollback"
    ended = replace(lost, retired="its control is no longer the champion", applied="superseded")
    back = run(spec, st, rollout=ended, c=ctx(decided=frozenset()))
    assert back.status.phase == "Scored" and back.status.undecided_tests == ["ro-1"]
    # not marked and not in the Evolution's list: its decision is still on its way
    waiting = run(spec, st, rollout=replace(lost, applied=None), c=ctx(decided=frozenset()))
    assert waiting.status.phase == "Live" and waiting.requeue_after


def test_live_rollout_deleted_retires():
    spec, st = scored()
    st = run(spec, st, rollout=RolloutView("ro-1", "Running", (META.name,))).status
    r = run(spec, st, rollout=None)
    assert r.status.phase == "Retired" and "deleted" in r.status.reason
