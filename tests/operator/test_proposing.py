"""The cluster-mode adapter to the agents: Hypothesis specs from the real proposers, quotas, budgets,
the journal view the Online Agent ranks, pod templates from the chart, and the metrics exporter."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from cambrian.errors import ConfigError
from cambrian.operator import api, metrics
from cambrian.operator import proposing as P
from cambrian.operator.platform import kubernetes as K
from cambrian.operator.reconcile.actions import CreateTrainingJob, Owner, ProposeHypotheses
from cambrian.operator.reconcile.observations import Effect

OWNER = Owner("Evolution", "evo", "uid-evo", "ns")
T0 = datetime(2026, 2, 1, tzinfo=timezone.utc)


def evo_spec(**agent):
    return api.parse_spec("Evolution", {"objective": {"northStar": [{"name": "watch_minutes"}]},
                                        "data": {"world": {}}, "agent": {"provider": "builtin", **agent}})


def wake(spec, wakeup=1):
    return ProposeHypotheses(OWNER, wakeup, f"evo-w{wakeup}-abc", (("explore", spec.agent.quotas.explore),
                             ("exploit", spec.agent.quotas.exploit), ("innovate", spec.agent.quotas.innovate)),
                             tuple(spec.agent.personas), spec.wire(), spec.baseline)


def as_objects(batch, prefix="evo-w1-abc", status=None):
    return [{"metadata": {"name": f"{prefix}-{i}", "annotations": ann, "creationTimestamp": "2026-02-01T00:00:00Z"},
             "spec": spec, "status": (status or {}).get(i, {})} for i, (spec, ann) in enumerate(batch.items)]


def test_builtin_proposer_makes_valid_specs_per_persona_within_quotas():
    spec = evo_spec(personas=["optimizer", "reward"], proposalsPerWakeup=2,
                    quotas={"explore": 1, "exploit": 0, "innovate": 1})
    batch = P.ClusterProposer()(wake(spec), [])
    assert len(batch.items) == 4 and not batch.notes
    for hs, ann in batch.items:
        parsed = api.parse_spec("Hypothesis", hs)  # what the API server admits
        assert parsed.origin.kind == "persona" and parsed.origin.wakeup == 1
        assert parsed.component in {"optimizer": ("optimizer", "training"), "reward": ("reward",)}[parsed.origin.persona]
        assert json.loads(ann[P.A_META])["entry"] and ann[P.A_ORIGIN].startswith("builtin")
    # the next wake-up sees the journal (fingerprints): nothing is proposed twice
    again = P.ClusterProposer()(wake(spec, 2), as_objects(batch))
    assert not {json.dumps(h["delta"], sort_keys=True) for h, _ in again.items} & {
        json.dumps(h["delta"], sort_keys=True) for h, _ in batch.items}


def test_the_builtin_proposer_is_asked_with_the_objectives_metric_and_the_champions_label():
    """The reward persona reaches every proposer with the metric the Evolution's objective judges rewards by: the
    built-in tries the rewards meant to raise it first (likes, when like_corr is the objective) and its blend
    reads the champion's own label; under the default objective its catalogue order is unchanged."""
    watch = "LEAST(watch_seconds / 300.0, 1.0)"

    def entries(objective):
        spec = api.parse_spec("Evolution", {
            "objective": {"northStar": [{"name": "watch_minutes"}], **objective}, "data": {"world": {}},
            "baseline": {"reward": {"label": watch}},
            "agent": {"provider": "builtin", "personas": ["reward"], "proposalsPerWakeup": 3,
                      "quotas": {"explore": 1, "exploit": 1, "innovate": 1}}})
        batch = P.ClusterProposer()(wake(spec), [])
        return [(json.loads(ann[P.A_META])["entry"], hs["delta"]["patch"]) for hs, ann in batch.items]

    likes = entries({"offline": {"reward": {"metric": "like_corr", "direction": "maximize"}}})
    assert [e for e, _ in likes][:2] == ["like_weighted", "label_and_like"]
    assert "label" not in likes[0][1] and '"like"' in likes[0][1]["weight"]  # Φ0's label kept, liked rows weighed up
    assert watch in likes[1][1]["label"] and '"like"' in likes[1][1]["label"]
    default = [e for e, _ in entries({})]
    assert default[0] == "completion" and not {"like_weighted", "label_and_like"} & set(default)
    # judged by long_watch_corr, the long-watch label (that metric's own signal) comes first
    watched = entries({"offline": {"reward": {"metric": "long_watch_corr", "direction": "maximize"}}})
    assert watched[0] == ("long_watch", {"label": "CAST(watch_seconds >= 60 AS DOUBLE)"})


class Scripted:
    """A proposer whose answer is fixed (the LLM proposers' output shape), with token usage."""

    name, model = "gemini", "gemini-2.5-flash"

    def __init__(self, proposals):
        self.proposals = proposals

    def propose(self, request):
        from cambrian.agents.proposers.base import ProposerResult

        assert "EXPERIMENT JOURNAL" in request.prompt  # LLM proposers get the rendered prompt
        return ProposerResult(proposals=list(self.proposals), input_tokens=900, output_tokens=100, model=self.model)


def test_llm_output_is_checked_quota_enforced_and_usage_recorded():
    good = {"category": "explore", "explanation": "AdamW", "delta": {"component": "optimizer", "patch": {"name": "AdamW"}}}
    outside = {"category": "explore", "explanation": "x", "delta": {"component": "reward", "patch": {"label": "1"}}}
    empty = {"category": "explore", "explanation": "x", "delta": {"component": "optimizer", "patch": {}}}
    spec = evo_spec(provider="gemini", model="gemini-2.5-flash", personas=["optimizer"], proposalsPerWakeup=2,
                    quotas={"explore": 1, "exploit": 1, "innovate": 0})
    other = {**good, "delta": {"component": "optimizer", "patch": {"lr": 0.01}}}
    prop = P.ClusterProposer(make=lambda settings, seed: Scripted([good, outside, empty, good, other, other]),
                             env={"GEMINI_API_KEY": "k"})
    batch = prop(wake(spec), [])
    assert [h["delta"] for h, _ in batch.items] == [{"patch": {"name": "AdamW"}}, {"patch": {"lr": 0.01}}]
    assert any("over the wake-up quota" in n for n in batch.notes)
    assert any("outside the persona" in n for n in batch.notes) and any("duplicates" in n for n in batch.notes)
    assert any("rejected" in n and "spec.delta" in n for n in batch.notes)
    assert batch.tokens == 1000 and batch.dollars > 0
    # a spent token budget stops asking: the first Hypothesis created carries the wake-up's spend
    made = []
    P.propose_wakeup(wake(spec), [], lambda a, e: batch, MemoryRecord(),
                     lambda n, s, l, a: made.append((s, a)) or True, lambda *charge: pytest.fail("carried"))
    assert made[0][1]["cambrian.dev/tokens"] == "1000" and float(made[0][1]["cambrian.dev/dollars"]) > 0
    objs = as_objects(P.ProposalBatch(items=made))
    capped = evo_spec(provider="gemini", model="m", personas=["optimizer"], budgets={"tokens": 500})
    assert not P.ClusterProposer(make=lambda s, seed: Scripted([good]), env={"GEMINI_API_KEY": "k"})(wake(capped, 2), objs).items


def test_llm_provider_without_key_is_a_clear_note_not_a_crash():
    spec = evo_spec(provider="openai", model="m", apiKeySecretRef={"name": "llm", "key": "token"})
    batch = P.ClusterProposer(env={})(wake(spec), [])
    assert not batch.items and "OPENAI_API_KEY" in batch.notes[0]
    with pytest.raises(ConfigError):
        P.provider_settings(spec.agent, {})
    s = P.provider_settings(spec.agent, {"CAMBRIAN_KEY_LLM_TOKEN": "x"})
    assert s.api_key_env == "CAMBRIAN_KEY_LLM_TOKEN"


def test_online_agent_ranks_offline_winners_and_retires_dropouts():
    spec = evo_spec()
    objs = [
        {"metadata": {"name": n, "creationTimestamp": "2026-02-01T00:00:00Z"},
         "spec": {"component": "optimizer", "delta": {"patch": {"lr": lr}}, "origin": {"kind": "persona", "persona": "optimizer"}},
         "status": {"phase": phase, "offlineMetric": "val_loss", "offlineScore": score,
                    "proxyMetrics": {"val_loss": {"value": score, "std": 0.01, "seeds": 3}},
                    "gain": 0.5 - score, "noiseFloor": 0.02, "verdict": verdict}}
        for n, lr, phase, score, verdict in (("a", 0.01, "Live", 0.49, "not_better"), ("b", 0.02, "Scored", 0.40, "better"),
                                             ("c", 0.03, "Scored", 0.55, "not_better"))]
    sel = P.select_top_k(spec.model_copy(update={"top_k": 1}), spec.baseline, objs)
    assert sel.ranking == ["b"] and sel.start == ["b"] and sel.retire == ["a"]  # c is worse than the champion
    entries = {h.id: h for h in P.journal_view(objs, spec, spec.baseline)}
    assert entries["b"].offline["val_loss"].n == 3 and entries["b"].noise_floor == 0.02  # as the core judged it
    # a promising (one-seed) hypothesis far ahead is not offered: the agent picks among what may be rolled out
    promising = {**objs[2], "metadata": {**objs[2]["metadata"], "name": "p"},
                 "spec": {**objs[2]["spec"], "delta": {"patch": {"lr": 0.04}}},
                 "status": {**objs[2]["status"], "offlineScore": 0.1, "gain": 0.4, "verdict": "promising"}}
    assert P.select_top_k(spec.model_copy(update={"top_k": 1}), spec.baseline, objs + [promising]).start == ["b"]
    sel2 = P.select_top_k(spec.model_copy(update={"top_k": 2}), spec.baseline, objs)
    assert sel2.start == ["b"] and sel2.keep == ["a"] and sel2.retire == []


def test_chart_pod_templates_are_applied_without_relaxing_security():
    action = CreateTrainingJob("run", OWNER, "h", 1, {}, {"component": "optimizer", "patch": {"lr": 0.1}},
                               api.Training().wire(), {"world": {}})
    tpl = {"image": "reg/trainer:1", "labels": {"cambrian.dev/role": "trainer", "team": "ml"},
           "podSecurityContext": {"runAsNonRoot": False, "fsGroup": 1000},
           "securityContext": {"readOnlyRootFilesystem": False, "runAsUser": 1000},
           "automountServiceAccountToken": True, "ttlSecondsAfterFinished": 60, "tmpSizeLimit": "2Gi",
           "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}
    job = K.apply_pod_template(K.training_job(action), tpl, "trainer", [{"name": "pull"}])
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["template"]["metadata"]["labels"]["team"] == "ml"
    assert job["spec"]["template"]["metadata"]["labels"]["cambrian.dev/role"] == "trainer"
    assert pod["securityContext"] == {**pod["securityContext"], "runAsNonRoot": True, "fsGroup": 1000}
    c = pod["containers"][0]
    assert c["image"] == "reg/trainer:1" and c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["runAsUser"] == 1000 and pod["automountServiceAccountToken"] is False
    assert job["spec"]["ttlSecondsAfterFinished"] == 60 and pod["imagePullSecrets"] == [{"name": "pull"}]
    assert [v for v in pod["volumes"] if v["name"] == "tmp"][0]["emptyDir"]["sizeLimit"] == "2Gi"
    assert pod["tolerations"] == tpl["tolerations"]


def test_metrics_exporter_serves_the_chart_metric_names():
    port = metrics.serve(0, addr="127.0.0.1")
    hyps = [{"metadata": {"name": "h1", "creationTimestamp": "2026-02-01T00:00:00Z"}, "status": {"phase": "Training",
             "conditions": [{"type": "Training", "lastTransitionTime": "2026-02-01T00:10:00Z"}]}},
            {"metadata": {"name": "h2", "creationTimestamp": "2026-02-01T00:05:00Z"}, "status": {"phase": "Scored"}}]
    metrics.observe_evolution("evo-m", hyps, {"tokens": 1000, "gpuHours": 2.0}, {"tokens": 250, "gpuHours": 0.5},
                              T0 + timedelta(minutes=30))
    metrics.observe_guardrails("ro-m", [("treatment", "hate_rate", True), ("treatment", "sessions", False)])
    metrics.observe_effects("ro-m", [Effect("treatment", "watch_minutes", 0.031, -0.004, 0.066, True, 0.2, 0.054)])
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for value, v in (("estimate", 0.031), ("lower", -0.004), ("upper", 0.066), ("planned", 0.054)):
        assert f'cambrian_rollout_effect{{arm="treatment",metric="watch_minutes",rollout="ro-m",value="{value}"}} {v}' in text
    # a readout without a planned effect (an always-valid test) removes the stale one
    metrics.observe_effects("ro-m", [Effect("treatment", "watch_minutes", 0.03, -0.004, 0.066, True, 0.2, None)])
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'rollout="ro-m",value="planned"' not in text and 'rollout="ro-m",value="estimate"} 0.03' in text
    assert 'cambrian_hypothesis_phase{evolution="evo-m",phase="Training"} 1.0' in text
    assert 'cambrian_hypothesis_phase{evolution="evo-m",phase="Failed"} 0.0' in text
    assert 'cambrian_hypothesis_phase_seconds{evolution="evo-m",phase="Training"} 1200.0' in text
    assert 'cambrian_hypothesis_phase_seconds{evolution="evo-m",phase="Scored"} 1500.0' in text
    assert 'cambrian_budget_remaining{evolution="evo-m",kind="tokens"} 750.0' in text
    assert 'cambrian_budget_remaining{evolution="evo-m",kind="gpu_hours"} 1.5' in text
    assert 'evolution="evo-m",kind="dollars"' not in text  # other tests may export other evolutions
    assert 'cambrian_guardrail_breached{arm="treatment",metric="hate_rate",rollout="ro-m"} 1.0' in text
    metrics.forget_rollout("ro-m")
    metrics.forget_evolution("evo-m")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "ro-m" not in text and "evo-m" not in text


class FakeCustom:
    def __init__(self, items, crash_at=None):
        self.items, self.created, self.crash_at = list(items), [], crash_at

    def list_namespaced_custom_object(self, group, version, ns, plural):
        return {"items": list(self.items)}

    def create_namespaced_custom_object(self, group, version, ns, plural, body):
        if len(self.created) == self.crash_at:
            self.crash_at = None
            raise SystemExit("the operator dies between two creates")
        self.created.append(body)
        self.items.append(body)


class MemoryRecord:
    """propose_wakeup's record in memory."""

    def __init__(self):
        self.kept = {}

    def load(self, prefix):
        return self.kept.get(prefix)

    def save(self, prefix, record):
        self.kept[prefix] = record

    def drop(self, prefix):
        self.kept.pop(prefix, None)


class FakeEvolutions(FakeCustom):
    """FakeCustom plus the Evolution itself, answering a stale resourceVersion with 409 like the API server."""

    def __init__(self, conflicts=0):
        super().__init__([])
        self.evolution = {"metadata": {"name": "evo", "resourceVersion": "1", "annotations": {}}}
        self.conflicts, self.patches = conflicts, 0

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        assert plural == "evolutions" and name == "evo"
        return json.loads(json.dumps(self.evolution))

    def patch_namespaced_custom_object(self, group, version, ns, plural, name, body):
        from kubernetes.client.rest import ApiException

        meta = self.evolution["metadata"]
        if self.conflicts:  # another writer got there first
            self.conflicts -= 1
            meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        if body["metadata"].get("resourceVersion") not in (None, meta["resourceVersion"]):
            raise ApiException(status=409)
        self.patches += 1
        meta["annotations"].update(body["metadata"]["annotations"])
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)


class FakeConfigMaps:
    """ConfigMaps by name, answering like the API server (404, 409)."""

    def __init__(self):
        self.maps, self.calls = {}, []

    def create_namespaced_config_map(self, ns, body, _preload_content=True):
        from kubernetes.client.rest import ApiException

        self.calls.append("create")
        if body["metadata"]["name"] in self.maps:
            raise ApiException(status=409)
        self.maps[body["metadata"]["name"]] = body

    def read_namespaced_config_map(self, name, ns):
        from types import SimpleNamespace

        from kubernetes.client.rest import ApiException

        self.calls.append("read")
        if name not in self.maps:
            raise ApiException(status=404)
        return SimpleNamespace(data=self.maps[name]["data"])

    def delete_namespaced_config_map(self, name, ns, propagation_policy=None):
        from kubernetes.client.rest import ApiException

        self.calls.append("delete")
        if self.maps.pop(name, None) is None:
            raise ApiException(status=404)


def two_proposals():
    """An Evolution asking one persona for two proposals, and the built-in proposer counting its wake-ups."""
    spec = evo_spec(personas=["optimizer"], proposalsPerWakeup=2, quotas={"explore": 1, "exploit": 0, "innovate": 1})
    asked = []

    def proposer(action, existing):
        asked.append(action.wakeup)
        return P.ClusterProposer()(action, existing)

    return spec, asked, proposer


def _cluster(proposer, crash_at=None):
    plat = K.KubernetesPlatform.__new__(K.KubernetesPlatform)
    plat.custom, plat.core, plat.proposer, plat.observed = FakeCustom([], crash_at), FakeConfigMaps(), proposer, None
    plat.events = []
    plat.record = plat.events.append
    return plat


def test_a_replayed_wakeup_asks_nobody_and_duplicates_nothing():
    spec, asked, proposer = two_proposals()

    plat = _cluster(proposer)
    plat.propose(wake(spec))
    names = [b["metadata"]["name"] for b in plat.custom.created]
    assert names == ["evo-w1-abc-0", "evo-w1-abc-1"]
    body = plat.custom.created[0]
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-evo" and body["spec"]["evolutionRef"] == {"name": "evo"}
    assert plat.core.maps == {}  # the answer's record is dropped once every Hypothesis exists
    plat.propose(wake(spec))  # the operator died before persisting status: the same wake-up again
    assert asked == [1] and len(plat.custom.created) == 2


def test_a_kill_between_two_creates_loses_no_proposal():
    """The operator dies after creating the wake-up's first Hypothesis: the replay creates the second from the
    recorded answer (the same spec), without asking the proposer again."""
    spec, asked, proposer = two_proposals()

    whole = _cluster(proposer)
    whole.propose(wake(spec))
    plat = _cluster(proposer, crash_at=1)
    with pytest.raises(SystemExit):
        plat.propose(wake(spec))
    assert [b["metadata"]["name"] for b in plat.custom.created] == ["evo-w1-abc-0"]
    assert list(plat.core.maps) == ["evo-w1-abc-proposals"]  # the answer waits, owned by the Evolution
    assert plat.core.maps["evo-w1-abc-proposals"]["metadata"]["ownerReferences"][0]["uid"] == "uid-evo"
    plat.propose(wake(spec))
    assert asked == [1, 1]  # once for the uninterrupted platform, once for the killed one: never on replay
    assert [b["spec"] for b in plat.custom.created] == [b["spec"] for b in whole.custom.created]
    assert [b["metadata"]["name"] for b in plat.custom.created] == ["evo-w1-abc-0", "evo-w1-abc-1"]
    assert plat.core.maps == {} and [e.event for e in plat.events] == ["Proposed"]


class Replay:
    """A loopback server speaking Gemini's generateContent REST call with recorded response bodies."""

    def __init__(self, bodies):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.bodies, self.requests = list(bodies), []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                replay.requests.append({"path": self.path, "body": json.loads(body or b"{}"),
                                        "key": self.headers.get("x-goog-api-key")})
                data = json.dumps(replay.bodies.pop(0)).encode() if replay.bodies else b'{"error": {"code": 500}}'
                self.send_response(200 if len(data) > 30 else 500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


FIXTURES = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures" / "gemini"


def test_gemini_proposer_and_ranker_through_the_real_client(monkeypatch):
    """Recorded answers served to the real google-genai client: the operator's key from its environment."""
    monkeypatch.setenv("GEMINI_API_KEY", "key-from-secret")
    recorded = json.loads((FIXTURES / "optimizer_valid.json").read_text())
    server = Replay([recorded])
    try:
        spec = evo_spec(provider="gemini", model="gemini-2.5-pro", baseUrl=server.url, personas=["optimizer"],
                        apiKeySecretRef={"name": "gemini", "key": "api-key"})
        batch = P.ClusterProposer()(wake(spec), [])
        assert server.requests[0]["key"] == "key-from-secret" and "generateContent" in server.requests[0]["path"]
        assert [h["delta"]["patch"] for h, _ in batch.items] == [
            {"name": "AdamW", "lr": 0.003, "weight_decay": 0.0001}, {"lr": 0.01}, {"name": "Adagrad", "lr": 0.05}]
        assert batch.tokens == 2200
        assert {h["origin"]["category"] for h, _ in batch.items} == {"explore", "exploit", "innovate"}
        # the Online Agent asks Gemini for the ranking (recorded answer), names outside the pool are dropped
        objs = [{"metadata": {"name": n, "creationTimestamp": "2026-02-01T00:00:00Z"},
                 "spec": {"component": "optimizer", "delta": {"patch": {"lr": lr}}},
                 "status": {"phase": "Scored", "offlineMetric": "val_loss", "offlineScore": s,
                            "proxyMetrics": {"val_loss": {"value": s}}, "gain": 0.5 - s, "noiseFloor": 0.001,
                            "verdict": "better"}}
                for n, lr, s in (("a", 0.01, 0.49), ("b", 0.02, 0.40))]
        text = json.dumps({"ranking": [{"name": "zz", "reason": "unknown"}, {"name": "a", "reason": "smaller step"}]})
        server.bodies.append({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                                              "finishReason": "STOP", "index": 0}]})
        sel = P.select_top_k(spec.model_copy(update={"top_k": 1}), spec.baseline, objs)
        assert sel.ranked_by == "gemini" and sel.start == ["a"]
        # no answer (HTTP 500): the built-in rule decides, and says so
        sel = P.select_top_k(spec.model_copy(update={"top_k": 1}), spec.baseline, objs)
        assert sel.ranked_by == "builtin" and sel.start == ["b"] and "unusable" in sel.note
    finally:
        server.close()


def test_a_gemini_proposal_that_needs_two_components_carries_also_to_the_hypothesis(monkeypatch):
    """The structured output offers `also_json` (the prompt says so): an optimizer change that needs gradient
    clipping reaches the Hypothesis as spec.delta.also.training, through the real google-genai client."""
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    server = Replay([json.loads((FIXTURES / "optimizer_with_also.json").read_text())])
    try:
        spec = evo_spec(provider="gemini", model="gemini-2.5-pro", baseUrl=server.url, personas=["optimizer"],
                        apiKeySecretRef={"name": "gemini", "key": "api-key"})
        batch = P.ClusterProposer()(wake(spec), [])
        asked = json.dumps(server.requests[0]["body"])
        assert "also_json" in asked  # in the response schema and the prompt
        (h, _), = batch.items
        assert h["delta"]["patch"] == {"name": "AdamW", "lr": 0.004, "weight_decay": 0.0001}
        assert h["delta"]["also"] == {"training": {"grad_clip": 1.0}}
        api.parse_spec("Hypothesis", h)  # what the operator creates, the CRD model accepts
    finally:
        server.close()


def test_a_failed_hypothesis_goes_back_to_its_persona_with_its_error():
    """The wake-up's repairs (chosen by the core) reach the real built-in proposer with the failure: the
    repair is a new Hypothesis whose origin names the failed one, with smaller settings of the same family."""
    spec = evo_spec(personas=["optimizer"], proposalsPerWakeup=1, quotas={"explore": 1, "exploit": 0, "innovate": 0})
    first = P.ClusterProposer()(wake(spec), [])
    failed = as_objects(first, status={0: {"phase": "Failed", "failureStage": "training",
                                           "reason": "job failed: loss is NaN at step 3"}})
    name = failed[0]["metadata"]["name"]
    (entry,) = [h for h in P.journal_view(failed, spec, spec.baseline)]
    assert entry.failure.stage == "training" and "NaN" in entry.failure.reason
    action = ProposeHypotheses(OWNER, 2, "evo-w2-abc", (("explore", 1), ("exploit", 0), ("innovate", 0)),
                               ("optimizer",), spec.wire(), spec.baseline, repairs=(name,))
    batch = P.ClusterProposer()(action, failed)
    repairs = [api.parse_spec("Hypothesis", h) for h, _ in batch.items if h["origin"].get("repairOf")]
    assert len(repairs) == 1 and repairs[0].origin.repair_of == name and repairs[0].origin.category == "exploit"
    assert f"repair of {name}" in repairs[0].explanation
    assert repairs[0].delta.patch != failed[0]["spec"]["delta"]["patch"]  # a different change, not a retry
    assert P.journal_view(as_objects(batch, "evo-w2-abc"), spec, spec.baseline)[-1].parent == name


def _concluded(name: str, component: str, long_watch: float, floors: float, effect: float | None, arm="treatment",
               metric="watch_minutes"):
    status = {"phase": "Scored", "offlineMetric": "val_loss", "gain": floors * 0.01, "noiseFloor": 0.01,
              "verdict": "better", "proxyMetrics": {"long_watch_corr": {"value": long_watch}, "return_corr": {"value": 0.0}}}
    if effect is not None:
        status.update(phase="Retired", online={
            "rollout": f"ro-{name}", "arm": arm, "decision": "rollback",
            "effects": [{"arm": "other", "metric": metric, "estimate": 9.9, "ciLow": 9, "ciHigh": 11, "relative": True},
                        {"arm": arm, "metric": metric, "estimate": effect, "ciLow": effect - 0.01,
                         "ciHigh": effect + 0.01, "relative": True}]})
    return {"metadata": {"name": name, "creationTimestamp": "2026-02-01T00:00:00Z"},
            "spec": {"component": component, "delta": {"patch": {"lr": 0.01 + len(name) * 1e-4}}}, "status": status}


def test_concluded_rollouts_reach_the_surrogate_through_the_hypothesis_objects():
    """The Online Agent's surrogate learns from the effects concluded rollouts recorded in Hypothesis status
    (its own arm's north-star effect, not another arm's); the operator path had given it none, so it never ranked."""
    history = [_concluded(f"h{i}", c, lw, fl, 0.2 * lw) for i, (c, lw, fl) in enumerate([
        ("reward", 0.10, 1.0), ("reward", 0.05, 1.5), ("optimizer", 0.0, 4.0), ("training", -0.01, 6.0),
        ("architecture", 0.02, 3.0), ("reward", -0.05, 2.0)])]
    pool = [_concluded("big-gain", "training", 0.0, 8.0, None), _concluded("long-watch", "reward", 0.08, 1.2, None)]
    spec = evo_spec().model_copy(update={"top_k": 1})
    entries = {h.id: h for h in P.journal_view(history, spec, spec.baseline)}
    assert entries["h0"].online["effect"] == pytest.approx(0.02)  # its arm's estimate, not "other"'s
    sel = P.select_top_k(spec, spec.baseline, [*history, *pool])
    assert sel.ranked_by == "surrogate" and sel.start == ["long-watch"]
    assert sel.predictions["long-watch"]["mean"] > sel.predictions["big-gain"]["mean"]


def test_the_operator_tells_the_surrogate_which_way_the_north_star_should_go():
    """A north star to minimize (churn_rate): rollouts in which long watches cut churn. select_top_k passed only
    the metric names, so the surrogate ranked the largest predicted churn effect first and started the candidate
    expected to raise churn; it must start the predicted fall."""
    history = [_concluded(f"h{i}", c, lw, fl, -0.2 * lw, metric="churn_rate") for i, (c, lw, fl) in enumerate([
        ("reward", 0.10, 1.0), ("reward", 0.05, 1.5), ("optimizer", 0.0, 4.0), ("training", -0.01, 6.0),
        ("architecture", 0.02, 3.0), ("reward", -0.05, 2.0)])]
    pool = [_concluded("big-gain", "training", 0.0, 8.0, None), _concluded("long-watch", "reward", 0.08, 1.2, None)]
    spec = api.parse_spec("Evolution", {"objective": {"northStar": [{"name": "churn_rate", "direction": "minimize"}]},
                                        "data": {"world": {}}, "agent": {"provider": "builtin"}, "topK": 1})
    sel = P.select_top_k(spec, spec.baseline, [*history, *pool])
    assert sel.ranked_by == "surrogate" and sel.start == ["long-watch"]
    assert sel.predictions["long-watch"]["mean"] < sel.predictions["big-gain"]["mean"]  # churn's own effect


def test_local_mode_replays_a_wakeup_cut_between_two_creates(tmp_path):
    """The same in local mode (the driver SIGKILLed between two object writes): the recorded answer is a file."""
    from cambrian.operator.localstore import LocalStore
    from cambrian.operator.platform.local import LocalPlatform

    spec, asked, proposer = two_proposals()

    store = LocalStore(tmp_path)
    plat = LocalPlatform(tmp_path, store, lambda: T0, proposer=proposer)
    create, calls = store.create, []

    def dies_second_time(obj, now, owner=None):
        calls.append(obj["metadata"]["name"])
        if len(calls) == 2:
            raise SystemExit("killed")
        return create(obj, now, owner)

    store.create = dies_second_time
    with pytest.raises(SystemExit):
        plat.propose(wake(spec))
    assert [h["metadata"]["name"] for h in store.list("hypotheses")] == ["evo-w1-abc-0"]
    assert (tmp_path / "proposals" / "evo-w1-abc.json").exists()
    plat.propose(wake(spec))
    assert asked == [1] and sorted(h["metadata"]["name"] for h in store.list("hypotheses")) == ["evo-w1-abc-0", "evo-w1-abc-1"]
    assert not (tmp_path / "proposals" / "evo-w1-abc.json").exists()


def _rejected_only(asked):
    """A Gemini proposer (1,000 tokens an answer) whose every proposal is outside the persona."""
    outside = {"category": "explore", "explanation": "x", "delta": {"component": "reward", "patch": {"label": "1"}}}

    class Counted(Scripted):
        def propose(self, request):
            asked.append(self.wakeup)
            return super().propose(request)

    def make(settings, seed):
        made = Counted([outside])
        made.wakeup = seed
        return made

    return P.ClusterProposer(make=make, env={"GEMINI_API_KEY": "k"})


def test_a_wakeup_that_creates_nothing_still_counts_against_the_llm_budget():
    """Every proposal rejected: no Hypothesis carries the spend, so it is booked on the Evolution, once per
    wake-up; a replay of that wake-up asks nobody; the core's spend and the next wake-up's budget check count it
    (before, such a proposer spent without limit)."""
    from cambrian.operator.reconcile import views

    spec = evo_spec(provider="gemini", model="gemini-2.5-flash", personas=["optimizer"], budgets={"tokens": 1500})
    asked = []
    plat = _cluster(_rejected_only(asked))
    plat.custom = FakeEvolutions(conflicts=1)
    plat.propose(wake(spec))
    assert plat.custom.created == [] and asked == [1]
    ann = plat.custom.evolution["metadata"]["annotations"]
    assert views.unattributed(ann) == {"through": 1, "tokens": 1000, "dollars": pytest.approx(views.unattributed(ann)["dollars"])}
    assert views.unattributed(ann)["dollars"] > 0 and plat.custom.patches == 1  # the 409 was read again
    assert views.spend([], evolution_annotations=ann).tokens == 1000
    # the operator died before its status said wake-up 1 happened: the replay asks nobody and books nothing twice
    through = views.unattributed(ann)["through"]
    plat.propose(replace(wake(spec), charged_through=through))
    assert asked == [1] and plat.custom.patches == 1
    # wake-up 2: under budget, asked, booked on top
    plat.propose(replace(wake(spec, 2), tokens_spent=1000, charged_through=through))
    assert asked == [1, 2] and views.unattributed(ann)["tokens"] == 2000 and views.unattributed(ann)["through"] == 2
    # wake-up 3: the budget (1,500 tokens) is spent, by what no Hypothesis carries: nobody is asked
    plat.propose(replace(wake(spec, 3), tokens_spent=2000, charged_through=2))
    assert asked == [1, 2] and views.unattributed(ann)["tokens"] == 2000


def test_local_mode_books_a_wakeup_that_creates_nothing_on_the_evolution(tmp_path):
    from cambrian.operator.localstore import LocalStore
    from cambrian.operator.platform.local import LocalPlatform
    from cambrian.operator.reconcile import views

    spec = evo_spec(provider="gemini", model="gemini-2.5-flash", personas=["optimizer"])
    store = LocalStore(tmp_path)
    store.create({"kind": "Evolution", "apiVersion": api.API_VERSION, "metadata": {"name": "evo"}, "spec": spec.wire()}, T0)
    asked = []
    plat = LocalPlatform(tmp_path, store, lambda: T0, proposer=_rejected_only(asked))
    plat.propose(wake(spec))
    plat.propose(wake(spec))  # a replay whose action predates the booking: asked again, booked once
    ann = store.get("evolutions", "default", "evo")["metadata"]["annotations"]
    assert store.list("hypotheses") == [] and views.unattributed(ann)["tokens"] == 1000 and asked == [1, 1]


def test_an_evolution_without_a_reward_objective_asks_the_reward_persona_for_top_watch_share():
    """The default reward objective reaches the LLM's prompt: the reward persona is asked to improve the world's
    top_watch_share (what the hypothesis is judged by), not its own default long_watch_corr."""
    from cambrian.agents.personas import REWARD
    from cambrian.trainer.config import parse_config

    spec = evo_spec(personas=["reward"])
    persona = P.declared_persona(REWARD.name, spec, spec.data.declared())
    text = P._prompt(persona, parse_config(spec.baseline), [], {"explore": 1}, spec, spec.data.declared())
    assert "improve the offline metric top_watch_share on held-out days (HIGHER is better)" in text
    assert "improve the offline metric long_watch_corr" not in text


def test_a_proposal_that_changes_nothing_or_respells_an_earlier_one_is_never_trained():
    # the champion's own lr, its reward label in other case and parentheses or cast to DOUBLE, its weight as an
    # integer: each gives the champion's Φ; an earlier reward respelt is that reward again
    from cambrian.trainer.config import ModelConfig

    assert ModelConfig().optimizer.lr == 0.003  # the default Φ0 (evo_spec names no baseline)
    noop = [{"component": "optimizer", "patch": {"lr": 0.003}},
            {"component": "reward", "patch": {"label": "(LABEL)"}},
            {"component": "reward", "patch": {"label": "CAST(label AS DOUBLE)", "weight": "1"}}]
    long = {"component": "reward", "patch": {"label": "CASE WHEN watch_seconds >= 60 THEN 1 ELSE 0 END"}}
    long_respelt = {"component": "reward", "patch": {"label": "case when (Watch_Seconds >= 60) then 1 else 0 end"}}
    props = [{"category": "explore", "explanation": "x", "delta": d} for d in (*noop, long, long_respelt)]
    spec = evo_spec(provider="gemini", model="gemini-2.5-flash", personas=["optimizer", "reward"],
                    proposalsPerWakeup=5, quotas={"explore": 5, "exploit": 0, "innovate": 0})
    by_persona = {"optimizer": props[:1], "reward": props[1:]}

    class PerPersona(Scripted):
        def propose(self, request):
            self.proposals = by_persona[request.persona.name]
            return super().propose(request)

    batch = P.ClusterProposer(make=lambda settings, seed: PerPersona([]), env={"GEMINI_API_KEY": "k"})(wake(spec), [])
    assert [h["delta"]["patch"] for h, _ in batch.items] == [long["patch"]]
    assert sum("changes nothing" in n for n in batch.notes) == 3, batch.notes
    assert sum("duplicates an earlier hypothesis" in n for n in batch.notes) == 1, batch.notes
