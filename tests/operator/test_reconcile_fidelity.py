"""Multi-fidelity through the pure core (spec.fidelity): a first look at every candidate, judged against the champion
at the same fidelity; only a promoted one trains in full and is confirmed. Re-entrant from status."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from cambrian.errors import ConfigError
from cambrian.operator import api
from cambrian.operator.reconcile import evolution as E
from cambrian.operator.reconcile import fidelity as F
from cambrian.operator.reconcile import hypothesis as H
from cambrian.operator.reconcile import noise as N
from cambrian.operator.reconcile.actions import CreateTrainingJob
from cambrian.operator.reconcile.common import Meta
from cambrian.operator.reconcile.observations import HypothesisView, JobObservation, RolloutView, Spend
from cambrian.operator.reconcile.views import spend
from cambrian.trainer.config import parse_config
from cambrian.trainer.fidelity import at_fidelity

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
HYP = Meta("hyp-lr", "uid-h", "ns", 1)
EVO = Meta("evo", "uid-e", "ns", 1)
FIDELITY = {"firstLook": {"epochFraction": 0.25, "sampleFraction": 0.5}, "promote": {"minGainFloors": -1}}
# the champion at first-look fidelity over three seeds: a shorter training scores worse than the full one (0.5)
LOOK_REF = {"val_loss": api.ProxyMetric(value=0.6, std=0.01, seeds=3)}
FULL_REF = {"val_loss": api.ProxyMetric(value=0.5, std=0.01, seeds=3)}
ONE_SEED_FLOOR = 2 * (0.01**2 / 3 + 0.01**2) ** 0.5  # z=2, the reference's spread for the one-seed look


def evo_spec(fidelity=FIDELITY, **over) -> api.EvolutionSpec:
    data = {"objective": {"northStar": [{"name": "dau"}]}, "data": {"world": {"users": 100, "days": 3}},
            "baseline": {"training": {"epochs": 4, "max_train_examples": 10000}}}
    if fidelity is not None:
        data["fidelity"] = fidelity
    data.update(over)
    return api.EvolutionSpec.model_validate(data)


def ctx(spec=None, **kw) -> H.EvolutionContext:
    spec = spec or evo_spec()
    kw.setdefault("reference", FULL_REF)
    kw.setdefault("first_look_reference", LOOK_REF)
    return H.EvolutionContext(name="evo", uid="evo-uid", spec=spec, baseline=spec.baseline, **kw)


HSPEC = api.HypothesisSpec.model_validate({"evolutionRef": {"name": "evo"}, "component": "optimizer",
                                           "explanation": "faster", "delta": {"patch": {"lr": 0.01}}})


def step(status, jobs=(), c=None, now=T0):
    return H.reconcile(HYP, HSPEC, status, c or ctx(), list(jobs), None, now)


def creates(r) -> list[CreateTrainingJob]:
    return [a for a in r.actions if isinstance(a, CreateTrainingJob)]


def looked(val_loss, c=None):
    """A hypothesis whose first look finished with `val_loss`, reconciled once more."""
    r = step(api.HypothesisStatus(), c=c)
    (look,) = creates(r)
    done = JobObservation(look.name, "Succeeded", 0, metrics={"val_loss": val_loss, "device": "cpu"},
                          started_at=T0, finished_at=T0 + timedelta(minutes=6))
    return r, done, step(r.status, [done], c=c, now=T0 + timedelta(minutes=10))


def test_the_trainer_scales_the_candidates_own_phi_after_its_delta():
    phi = parse_config({"training": {"epochs": 8, "max_train_examples": 10000}})
    low = at_fidelity(phi, {"epochFraction": 0.25, "sampleFraction": 0.1})
    assert (low.training.epochs, low.training.max_train_examples) == (2, 1000)
    assert low.optimizer == phi.optimizer and at_fidelity(phi, None) == phi
    tiny = at_fidelity(parse_config({"training": {"epochs": 1, "max_train_examples": 150}}),
                       {"epochFraction": 0.1, "sampleFraction": 0.01})
    assert (tiny.training.epochs, tiny.training.max_train_examples) == (1, 100)  # never below the trainer's bounds
    # a fraction of what the full run trains on: the data's training rows when fewer than the cap, or all of them
    assert at_fidelity(phi, {"sampleFraction": 0.1}, lambda: 3000).training.max_train_examples == 300
    uncapped = parse_config({"training": {"max_train_examples": None}})
    assert at_fidelity(uncapped, {"sampleFraction": 0.5}, lambda: 5000).training.max_train_examples == 2500
    assert at_fidelity(uncapped, {"sampleFraction": 0.5}).training.max_train_examples is None  # rows unknown

    def never() -> int:
        raise AssertionError("the data is read only when a sample is taken")

    assert at_fidelity(phi, {"epochFraction": 0.5, "sampleFraction": 1}, never).training.max_train_examples == 10000
    for bad in ({"epochFraction": 0}, {"sampleFraction": 1.5}, {"epochs": 2}, {"epochFraction": True}, [0.5]):
        with pytest.raises(ConfigError):
            at_fidelity(phi, bad)  # type: ignore[arg-type]


def test_the_cli_applies_the_fidelity_after_the_delta(tmp_path):
    from cambrian.trainer.cli import _resolve

    (tmp_path / "c.json").write_text(json.dumps({"training": {"epochs": 4, "max_train_examples": 8000}}))
    (tmp_path / "d.json").write_text(json.dumps({"component": "training", "patch": {"epochs": 8}}))
    (tmp_path / "f.json").write_text(json.dumps({"epochFraction": 0.5, "sampleFraction": 0.25}))
    cfg = _resolve(tmp_path / "c.json", tmp_path / "d.json", tmp_path / "f.json")
    assert (cfg.training.epochs, cfg.training.max_train_examples) == (4, 2000)


def test_every_candidate_starts_with_a_first_look_not_a_full_run():
    r = step(api.HypothesisStatus())
    (look,) = creates(r)
    assert r.status.phase == "Training" and r.status.attempts == 0
    assert look.name == F.look_job_name(HYP, 1) and look.fidelity == {"epochFraction": 0.25, "sampleFraction": 0.5}
    assert look.delta == {"component": "optimizer", "patch": {"lr": 0.01}} and look.baseline == evo_spec().baseline
    fl = r.status.first_look
    assert fl.job == look.name and fl.runs == 1 and fl.decision is None and fl.seed == 0
    assert spend([{"status": r.status.wire()}]).evaluations == 1


def test_a_first_look_that_would_be_the_full_training_is_skipped():
    """Every row and a quarter of one epoch (rounded up to one) is the full run of a one-epoch Φ: training it as
    a first look would only train the candidate twice, so it trains in full at once. The same fidelity still
    gives a first look to a candidate whose delta trains for four epochs."""
    from cambrian.operator.reconcile.actions import RecordJournal

    all_rows = {**FIDELITY, "firstLook": {"epochFraction": 0.25, "sampleFraction": 1.0}}
    one_epoch = evo_spec(fidelity=all_rows, baseline={"training": {"epochs": 1}})
    r = step(api.HypothesisStatus(), c=ctx(one_epoch))
    (job,) = creates(r)
    assert job.name == H.job_name(HYP, 1) and job.fidelity is None and r.status.first_look is None
    assert r.status.phase == "Training" and r.status.attempts == 1
    assert [a.event for a in r.actions if isinstance(a, RecordJournal)].count("FirstLookSkipped") == 1
    longer = api.HypothesisSpec.model_validate({**HSPEC.model_dump(by_alias=True, exclude_none=True),
                                                "component": "training", "delta": {"patch": {"epochs": 4}}})
    r4 = H.reconcile(HYP, longer, api.HypothesisStatus(), ctx(one_epoch), [], None, T0)
    (look,) = creates(r4)
    assert look.fidelity == {"epochFraction": 0.25, "sampleFraction": 1.0} and r4.status.first_look is not None
    # several epochs on every row: a first look (one epoch of four)
    (look,) = creates(step(api.HypothesisStatus(), c=ctx(evo_spec(fidelity=all_rows))))
    assert look.name == F.look_job_name(HYP, 1)
    # a delta that no longer applies (the champion changed) is not judged here: its first look's run says why
    from cambrian.trainer.delta import parse_delta

    bad = parse_delta({"component": "optimizer", "patch": {"lr": -1}})
    assert F.is_full_training({"training": {"epochs": 1}}, bad, all_rows["firstLook"]) is False
    assert F.is_full_training({"training": {"epochs": 1}}, parse_delta({"component": "optimizer", "patch": {"lr": 0.01}}),
                              all_rows["firstLook"]) is True


def test_a_first_look_below_the_rule_stops_without_a_full_run():
    # 0.6 + 1.5 floors: worse than the champion at the same fidelity by more than one floor
    _, _, r = looked(0.6 + 1.5 * ONE_SEED_FLOOR)
    s = r.status
    assert s.phase == "Scored" and s.verdict == "not_better" and s.attempts == 0 and not creates(r)
    assert s.first_look.decision == "stopped" and "stopped" in s.first_look.reason and s.reason == s.first_look.reason
    assert s.first_look.gain == pytest.approx(-1.5 * ONE_SEED_FLOOR) and s.first_look.noise_floor == pytest.approx(ONE_SEED_FLOOR)
    assert s.gain == s.first_look.gain and s.noise_floor == s.first_look.noise_floor
    assert not s.seed_runs and not s.proxy_metrics and s.offline_score is None  # no full-fidelity score to rank by
    assert s.first_look.metrics == {"val_loss": pytest.approx(0.6 + 1.5 * ONE_SEED_FLOOR)}  # "device" dropped
    assert s.gpu_hours == pytest.approx(0.1)
    assert {c.type: c.reason for c in s.conditions}["Ready"] == "StoppedEarly"
    assert spend([{"status": s.wire()}]).evaluations == 1
    assert step(s).actions == []  # terminal


def test_a_first_look_above_the_rule_trains_in_full_then_confirms():
    # worse than the champion at first-look fidelity, but within one floor: promoted (the default rule, -1 floors)
    _, done, r = looked(0.6 + 0.5 * ONE_SEED_FLOOR)
    s = r.status
    (full,) = creates(r)
    assert s.phase == "Training" and s.first_look.decision == "promoted" and s.attempts == 1
    assert full.name == H.job_name(HYP, 1) == s.job_name and full.fidelity is None  # the full run, as without fidelity
    # the full run is promising against the FULL reference, then confirmed with its extra seeds
    first = JobObservation(full.name, "Succeeded", 0, metrics={"val_loss": 0.40}, bundle_uri="pvc://b/h")
    r2 = step(s, [done, first])
    confirm = creates(r2)
    assert r2.status.verdict == "promising" and [a.name for a in confirm] == [H.confirm_job_name(HYP, 1000),
                                                                              H.confirm_job_name(HYP, 1001)]
    assert all(a.fidelity is None for a in confirm)
    seeds = [JobObservation(a.name, "Succeeded", 0, metrics={"val_loss": v}) for a, v in zip(confirm, (0.41, 0.39))]
    r3 = step(r2.status, [done, first, *seeds])
    s3 = r3.status
    assert s3.phase == "Scored" and s3.verdict == "better" and [x.seed for x in s3.seed_runs] == [0, 1000, 1001]
    assert s3.first_look.decision == "promoted" and s3.first_look.metrics["val_loss"] > 0.6  # kept, not mixed in
    assert s3.proxy_metrics["val_loss"].seeds == 3 and s3.offline_score == pytest.approx(0.40)
    assert spend([{"status": s3.wire()}]).evaluations == 4  # first look, full run, two confirmation seeds


def test_a_stricter_rule_stops_what_the_default_promotes():
    strict = evo_spec(fidelity={**FIDELITY, "promote": {"minGainFloors": 1}})
    _, _, r = looked(0.6 - 0.5 * ONE_SEED_FLOOR, c=ctx(strict))
    assert r.status.first_look.decision == "stopped" and r.status.phase == "Scored"
    _, _, r = looked(0.6 - 1.5 * ONE_SEED_FLOOR, c=ctx(strict))
    assert r.status.first_look.decision == "promoted" and r.status.attempts == 1


def test_a_first_look_waits_for_the_champions_first_look_seeds():
    c = ctx(first_look_reference={})
    r, done, waiting = looked(0.55, c=c)
    assert waiting.status.phase == "Training" and waiting.status.first_look.decision is None and not creates(waiting)
    assert waiting.status.first_look.metrics and waiting.status.gpu_hours == pytest.approx(0.1)
    again = step(waiting.status, [done], c=c)
    assert again.status.gpu_hours == pytest.approx(0.1)  # counted once
    judged = step(again.status, [done])
    assert judged.status.first_look.decision == "promoted"
    # the reference failed: the loop without multi-fidelity (trained in full), said why
    failed = step(waiting.status, [done], c=ctx(first_look_reference={}, first_look_unavailable="run x failed: OOM"))
    assert failed.status.first_look.decision == "promoted" and "run x failed" in failed.status.first_look.reason
    assert [a.name for a in creates(failed)] == [H.job_name(HYP, 1)]


def test_a_promoted_look_waits_for_the_budget_before_its_full_run():
    assert not creates(step(api.HypothesisStatus(), c=ctx(budget_exhausted="evaluations")))  # no first look either
    r, done, _ = looked(0.55)
    held = step(r.status, [done], c=ctx(budget_exhausted="evaluations"))
    assert held.status.first_look.decision == "promoted" and held.status.attempts == 0 and not creates(held)
    assert held.status.phase == "Training"
    go = step(held.status, [done])
    assert [a.name for a in creates(go)] == [H.job_name(HYP, 1)] and go.status.attempts == 1


def test_first_look_failures_retry_like_attempts_and_gate_failures_fail():
    r = step(api.HypothesisStatus())
    (look,) = creates(r)
    oom = JobObservation(look.name, "Failed", 137, "OOMKilled", "killed")
    retried = step(r.status, [oom])
    assert [a.name for a in creates(retried)] == [F.look_job_name(HYP, 2)] and retried.status.first_look.runs == 2
    assert spend([{"status": retried.status.wire()}]).evaluations == 2
    again = step(retried.status, [oom, JobObservation(F.look_job_name(HYP, 2), "Failed", 137, "OOMKilled")])
    assert again.status.phase == "Failed" and "after 2 runs" in again.status.reason  # maxAttempts 2
    gate = step(r.status, [JobObservation(look.name, "Failed", 3, "Error", "gate: NaN", stage="forward_backward")])
    assert gate.status.phase == "Failed" and gate.status.failure_stage == "forward_backward" and not creates(gate)


def test_replays_from_a_lost_status_write_create_the_same_runs():
    """The status write after an apply can be lost: the next reconcile starts from the older status and must
    name the same runs (the platform treats 'exists' as success), never a second first look or full run."""
    fresh = api.HypothesisStatus()
    a, b = step(fresh), step(fresh)
    assert [x.name for x in creates(a)] == [x.name for x in creates(b)]
    # the look's job visible, its status write lost: adopt it, nothing new
    running = step(a.status, [JobObservation(creates(a)[0].name, "Running")])
    assert not creates(running) and running.status.first_look.runs == 1
    # a promotion replayed from before it was saved names the same full run
    _, done, p1 = looked(0.55)
    p2 = step(a.status, [done], now=T0 + timedelta(hours=1))
    assert [x.name for x in creates(p1)] == [x.name for x in creates(p2)] == [H.job_name(HYP, 1)]
    # the full run already visible when the promoted status is replayed: it is judged, not re-created
    full = JobObservation(H.job_name(HYP, 1), "Running")
    assert not creates(step(p1.status, [done, full]))
    # the same objects read back from the stored (wire) status: same decision
    back = api.parse_status("Hypothesis", p1.status.wire())
    assert back.first_look == p1.status.first_look


def test_a_look_at_other_fractions_than_the_reference_is_not_judged_against_it():
    r, done, _ = looked(0.9)
    changed = ctx(evo_spec(fidelity={**FIDELITY, "firstLook": {"epochFraction": 0.5, "sampleFraction": 0.5}}))
    moved = step(r.status, [done], c=changed)
    assert moved.status.first_look.decision == "promoted" and "changed" in moved.status.first_look.reason


def test_without_fidelity_nothing_changes():
    r = step(api.HypothesisStatus(), c=ctx(evo_spec(fidelity=None)))
    (job,) = creates(r)
    assert job.name == H.job_name(HYP, 1) and job.fidelity is None and r.status.first_look is None
    # fidelity removed while a first look trained: it goes on to full training instead of waiting forever
    look = step(api.HypothesisStatus())
    done = JobObservation(creates(look)[0].name, "Succeeded", 0, metrics={"val_loss": 0.9})
    off = step(look.status, [done], c=ctx(evo_spec(fidelity=None)))
    assert off.status.first_look.decision == "promoted" and creates(off)[0].name == H.job_name(HYP, 1)


# ------------------------------------------------------------------------------- the Evolution's reference


def ref_names(sp, st):
    """The champion's first-look reference runs the Evolution asks the platform for (as operator/loop.py does)."""
    return F.reference_job_names(EVO, sp, st, E.effective_baseline(sp, st))


def evo_run(sp, st, jobs=(), hyps=(), ros=(), now=T0):
    return E.reconcile(EVO, sp, st, list(hyps), list(ros), list(jobs), Spend(), now)


def test_the_champions_first_look_seeds_are_measured_once_per_champion_and_reused():
    sp = evo_spec(noise={"baselineSeeds": 3})
    r = evo_run(sp, api.EvolutionStatus())
    jobs = creates(r)
    base = [j for j in jobs if j.fidelity is None]
    looks = [j for j in jobs if j.fidelity is not None]
    assert [j.name for j in base] == N.baseline_job_names(EVO, sp)  # in parallel with the baseline's own seeds
    assert [j.name for j in looks] == ref_names(sp, r.status)
    assert [j.baseline["training"]["seed"] for j in looks] == [0, 1, 2] and all(j.delta is None for j in looks)
    assert all(j.fidelity == {"epochFraction": 0.25, "sampleFraction": 0.5} for j in looks)
    assert F.evaluations(sp, r.status) == 3
    # replayed before anything ran: the same names again
    assert [j.name for j in creates(evo_run(sp, api.EvolutionStatus()))] == [j.name for j in jobs]
    done = [JobObservation(j.name, "Succeeded", 0, metrics={"val_loss": 0.5 + 0.01 * i}, bundle_uri=f"pvc://x/b{i}")
            for i, j in enumerate(base)]
    done += [JobObservation(j.name, "Succeeded", 0, metrics={"val_loss": 0.6 + 0.01 * i}, bundle_uri=f"pvc://x/l{i}")
             for i, j in enumerate(looks)]
    r2 = evo_run(sp, r.status, done)
    ref = r2.status.first_look_reference
    assert ref.champion == "baseline" and ref.metrics["val_loss"].value == pytest.approx(0.61)
    assert ref.metrics["val_loss"].seeds == 3 and [x.seed for x in ref.runs] == [0, 1, 2]
    assert {c.type: c.status for c in r2.status.conditions}[F.READY] == "True"
    assert F.reference_for(sp, r2.status) == (ref.metrics, None)
    # measured: no job of it is asked for again, none is created, however often it reconciles
    assert ref_names(sp, r2.status) == []
    r3 = evo_run(sp, r2.status, [], now=T0 + timedelta(minutes=1))
    assert not [j for j in creates(r3) if j.fidelity is not None] and r3.status.first_look_reference == ref
    assert F.evaluations(sp, r3.status) == 3
    # a launch: the new champion's Φ is measured at first-look fidelity under new names (3 more evaluations)
    hv = HypothesisView("h1", "Live", "optimizer", "val_loss", 0.4, "pvc://x/h1", delta={"component": "optimizer",
                                                                                        "patch": {"lr": 0.01}})
    ro = RolloutView("ro", "Promoted", ("h1",), "promote", "h1", "pvc://x/h1")
    r4 = evo_run(sp, r3.status, [], hyps=[hv], ros=[ro], now=T0 + timedelta(hours=1))
    assert r4.status.champion.name == "h1" and F.reference_for(sp, r4.status) == ({}, None)  # stale: not used
    r5 = evo_run(sp, r4.status, [], hyps=[hv], ros=[ro], now=T0 + timedelta(hours=1, minutes=1))
    new = [j for j in creates(r5) if j.fidelity is not None]
    assert len(new) == 3 and not {j.name for j in new} & {j.name for j in looks}
    assert all(j.baseline["optimizer"]["lr"] == 0.01 for j in new)  # the champion's Φ, which deltas apply to
    assert r5.status.first_look_reference.champion == "hypothesis/h1" and F.evaluations(sp, r5.status) == 6


def test_a_launched_hypothesis_named_baseline_gets_its_own_first_look_reference():
    # its name is the baseline's reference key: it kept the old champion's first looks (and their job names) as its
    # own, so every later candidate was judged against a model no longer in production
    sp = evo_spec(noise={"baselineSeeds": 2})
    r = evo_run(sp, api.EvolutionStatus())
    done = [JobObservation(j.name, "Succeeded", 0, metrics={"val_loss": 0.6 if j.fidelity else 0.5},
                           bundle_uri=f"pvc://x/{j.name}") for j in creates(r)]
    r = evo_run(sp, r.status, done, now=T0 + timedelta(minutes=1))
    old = r.status.first_look_reference
    assert old.champion == "baseline" and old.metrics
    hv = HypothesisView("baseline", "Live", "optimizer", "val_loss", 0.4, "pvc://x/baseline",
                        delta={"component": "optimizer", "patch": {"lr": 0.01}})
    ro = RolloutView("ro", "Promoted", ("baseline",), "promote", "baseline", "pvc://x/baseline")
    r2 = evo_run(sp, r.status, done, hyps=[hv], ros=[ro], now=T0 + timedelta(hours=1))
    r3 = evo_run(sp, r2.status, done, hyps=[hv], ros=[ro], now=T0 + timedelta(hours=1, minutes=1))
    assert r3.status.champion.hypothesis == "baseline"
    assert F.reference_for(sp, r3.status) == ({}, None)  # the old champion's first looks are not its reference
    new = [j for j in creates(r3) if j.fidelity is not None]
    assert len(new) == 2 and not {j.name for j in new} & {j.name for j in done}
    assert all(j.baseline["optimizer"]["lr"] == 0.01 for j in new)


def test_new_first_look_fractions_train_a_new_reference_never_adopting_the_old_runs():
    """The old reference's Jobs stay visible (locally jobs/ is kept for good, in the cluster for 24 h): the reference
    at the new fractions trains runs of its own instead of taking those metrics (trained at other fractions)."""
    sp = evo_spec(noise={"baselineSeeds": 2})
    r = evo_run(sp, api.EvolutionStatus())
    old = {j.name: j for j in creates(r) if j.fidelity is not None}
    done = [JobObservation(j.name, "Succeeded", 0, metrics={"val_loss": 0.6 if j.fidelity else 0.5},
                           bundle_uri=f"pvc://x/{j.name}") for j in creates(r)]
    r2 = evo_run(sp, r.status, done)
    assert r2.status.first_look_reference.metrics["val_loss"].value == pytest.approx(0.6)
    wider = evo_spec(fidelity={**FIDELITY, "firstLook": {"epochFraction": 1.0, "sampleFraction": 0.5}},
                     noise={"baselineSeeds": 2})
    names = ref_names(wider, r2.status)
    assert len(names) == 2 and not set(names) & set(old)
    r3 = evo_run(wider, r2.status, [d for d in done if d.name in old], now=T0 + timedelta(minutes=5))
    new = [j for j in creates(r3) if j.fidelity is not None]
    assert [j.name for j in new] == names and all(j.fidelity["epochFraction"] == 1.0 for j in new)
    ref = r3.status.first_look_reference
    assert ref.epoch_fraction == 1.0 and ref.metrics == {} and ref.runs == [] and ref.measured == 2
    assert F.reference_for(wider, r3.status) == ({}, None)  # first looks wait for the new reference
    # once its own runs finish, they are the reference
    r4 = evo_run(wider, r3.status, [JobObservation(n, "Succeeded", 0, metrics={"val_loss": 0.55}) for n in names])
    assert [x.job for x in r4.status.first_look_reference.runs] == names
    assert F.reference_for(wider, r4.status)[0]["val_loss"].value == pytest.approx(0.55)


def test_the_baselines_first_look_that_is_its_full_training_is_its_own_seeds():
    """A one-epoch Φ on every row: the baseline at first-look fidelity is the baseline itself, so its noise-floor
    runs are the reference (nothing trained twice, no evaluation spent); a launched champion is measured again."""
    from cambrian.operator.reconcile.actions import RecordJournal

    all_rows = {**FIDELITY, "firstLook": {"epochFraction": 0.25, "sampleFraction": 1.0}}
    sp = evo_spec(fidelity=all_rows, noise={"baselineSeeds": 3}, baseline={"training": {"epochs": 1}})
    r = evo_run(sp, api.EvolutionStatus())
    jobs = creates(r)
    assert [j.name for j in jobs] == N.baseline_job_names(EVO, sp) and all(j.fidelity is None for j in jobs)
    assert ref_names(sp, r.status) == [] and F.evaluations(sp, r.status) == 0
    assert F.reference_for(sp, r.status) == ({}, None)  # candidates wait for the baseline's seeds
    assert {c.type: c.reason for c in r.status.conditions}[F.READY] == "Measuring"
    done = [JobObservation(j.name, "Succeeded", 0, metrics={"val_loss": 0.5 + 0.01 * i}, bundle_uri=f"pvc://x/b{i}")
            for i, j in enumerate(jobs)]
    r2 = evo_run(sp, r.status, done)
    ref = r2.status.first_look_reference
    assert ref.metrics == r2.status.baseline_metrics and ref.metrics["val_loss"].value == pytest.approx(0.51)
    assert ref.runs == r2.status.baseline_runs and [x.job for x in ref.runs] == [j.name for j in jobs]
    assert F.evaluations(sp, r2.status) == 0 and not [j for j in creates(r2) if j.fidelity is not None]
    assert [a.event for a in r2.actions if isinstance(a, RecordJournal)].count("FirstLookReference") == 1
    # a candidate whose delta trains for four epochs still gets a first look, judged against these seeds
    longer = api.HypothesisSpec.model_validate({**HSPEC.model_dump(by_alias=True, exclude_none=True),
                                                "component": "training", "delta": {"patch": {"epochs": 4}}})
    c = H.EvolutionContext(name="evo", uid="evo-uid", spec=sp, baseline=sp.baseline, reference=ref.metrics,
                           first_look_reference=F.reference_for(sp, r2.status)[0])
    (look,) = creates(H.reconcile(HYP, longer, api.HypothesisStatus(), c, [], None, T0))
    assert look.fidelity == {"epochFraction": 0.25, "sampleFraction": 1.0}
    # a launched champion of four epochs is trained at first-look fidelity: 3 evaluations
    hv = HypothesisView("h1", "Live", "training", "val_loss", 0.4, "pvc://x/h1", delta={"component": "training",
                                                                                       "patch": {"epochs": 4}})
    ro = RolloutView("ro", "Promoted", ("h1",), "promote", "h1", "pvc://x/h1")
    r3 = evo_run(sp, r2.status, [], hyps=[hv], ros=[ro], now=T0 + timedelta(hours=1))
    r4 = evo_run(sp, r3.status, [], hyps=[hv], ros=[ro], now=T0 + timedelta(hours=1, minutes=1))
    new = [j for j in creates(r4) if j.fidelity is not None]
    assert len(new) == 3 and all(j.baseline["training"]["epochs"] == 4 for j in new)
    assert F.evaluations(sp, r4.status) == 3 and len(ref_names(sp, r4.status)) == 3


def test_a_failed_reference_run_lets_candidates_train_in_full():
    sp = evo_spec(noise={"baselineSeeds": 2})
    r = evo_run(sp, api.EvolutionStatus())
    looks = [j for j in creates(r) if j.fidelity is not None]
    bad = JobObservation(looks[1].name, "Failed", 137, "OOMKilled", "out of memory")
    r2 = evo_run(sp, r.status, [JobObservation(looks[0].name, "Running"), bad])
    assert r2.status.phase == "Running"  # not the Evolution's failure
    metrics, why = F.reference_for(sp, r2.status)
    assert metrics == {} and "out of memory" in why and ref_names(sp, r2.status) == []


def test_the_loop_counts_the_reference_runs_and_passes_them_to_the_core():
    """operator/loop.py (both platforms): the Evolution sees its first-look runs; a Hypothesis its reference."""
    from cambrian.operator import loop

    from .test_evaluations_budget import Objects, Platform

    sp = evo_spec(noise={"baselineSeeds": 2})
    evo = {"metadata": {"name": "evo", "uid": "uid-e", "namespace": "ns", "generation": 1}, "spec": sp.wire()}
    plat, objs = Platform(), Objects()
    s = loop.step("Evolution", evo, objs, plat, T0)
    evo["status"] = s.result.status.wire()
    for a in plat.created:
        plat.jobs[a.name] = JobObservation(a.name, "Succeeded", 0, metrics={"val_loss": 0.6 if a.fidelity else 0.5},
                                           bundle_uri="pvc://x/" + a.name)
    s = loop.step("Evolution", evo, objs, plat, T0 + timedelta(minutes=1))
    st = s.result.status
    assert st.first_look_reference.metrics["val_loss"].value == pytest.approx(0.6) and st.champion.bundle
    assert st.spend.evaluations == 4  # two baseline seeds, two first-look seeds
    evo["status"] = st.wire()
    hyp = {"metadata": {"name": "hyp-lr", "uid": "uid-h", "namespace": "ns", "generation": 1}, "spec": HSPEC.wire()}
    objs.objs[("evolutions", "evo")] = evo
    h = loop.step("Hypothesis", hyp, objs, plat, T0 + timedelta(minutes=2))
    (look,) = [a for a in plat.created if a.hypothesis == "hyp-lr"]
    assert look.fidelity == {"epochFraction": 0.25, "sampleFraction": 0.5} and h.result.status.first_look is not None
    hyp["status"] = h.result.status.wire()
    plat.jobs[look.name] = JobObservation(look.name, "Succeeded", 0, metrics={"val_loss": 0.9})
    stopped = loop.step("Hypothesis", hyp, objs, plat, T0 + timedelta(minutes=3)).result.status
    assert stopped.first_look.decision == "stopped" and stopped.phase == "Scored"


def test_the_training_job_and_the_run_store_carry_the_fidelity(tmp_path):
    from cambrian.operator.platform import kubernetes as K
    from cambrian.trainer import runstore

    sp = evo_spec()
    r = evo_run(sp, api.EvolutionStatus())
    look = next(j for j in creates(r) if j.fidelity is not None)
    full = next(j for j in creates(r) if j.fidelity is None)
    cm = K.training_configmap(look)
    assert json.loads(cm["data"]["fidelity.json"]) == {"epochFraction": 0.25, "sampleFraction": 0.5}
    pod = K.training_job(look)["spec"]["template"]["spec"]
    prepare = next(c for c in pod["initContainers"] if c["name"] == "prepare")
    for cmd in (prepare["command"], pod["containers"][0]["command"]):
        assert cmd[cmd.index("--fidelity") + 1] == "/etc/cambrian/run/fidelity.json"
    assert "fidelity.json" not in K.training_configmap(full)["data"]
    assert "--fidelity" not in K.training_job(full)["spec"]["template"]["spec"]["containers"][0]["command"]
    (tmp_path / "world.json").write_text("{}")
    request = {"baseline": full.baseline, "delta": None, "training": full.training}
    key = runstore.run_key(request, tmp_path, None)
    assert runstore.run_key({**request, "fidelity": look.fidelity}, tmp_path, None) != key
