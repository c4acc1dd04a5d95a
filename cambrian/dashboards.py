"""Grafana dashboards for Cambrian, generated from code with grafana-foundation-sdk.

    cambrian dashboards --out charts/cambrian/dashboards --out manifests/dashboards

Five dashboards, each with a `datasource` template variable (any Prometheus) and a fixed uid:
  cambrian-overview     the loop at a glance: hypotheses in flight, live experiments, traffic, budgets
  cambrian-hypotheses   the journal as metrics: hypotheses per phase, oldest age per phase, failures
  cambrian-experiments  one live experiment: weights, exposures, sample ratio, per-arm means, lift + 95% CI
  cambrian-guardrails   breached guardrails, ratio metrics and relative change per arm, latency, errors
  cambrian-spend        budget left, burn rate and the serving/collection work the loop causes

Every query uses only metric names exported by code in this repository (METRICS below says which
module exports each), so that tests can fill a real Prometheus through those exporters and check
that every panel returns data. The generated JSON is committed under charts/cambrian/dashboards/
(one ConfigMap each, for the Grafana sidecar) and manifests/dashboards/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import typer

from cambrian import inputs

# Where each metric comes from. Tests fill Prometheus through these exporters, never by hand.
METRICS: dict[str, str] = {
    # cambrian.online.collector (per-arm sufficient statistics, no user ids in labels)
    "cambrian_arm_stat": "online.collector",
    "cambrian_arm_exposures": "online.collector",
    "cambrian_arm_cohort_users": "online.collector",
    "cambrian_collector_closed_day": "online.collector",
    "cambrian_collector_rows_total": "online.collector",
    # cambrian.online.router
    "cambrian_router_weight": "online.router",
    "cambrian_router_users_total": "online.router",
    "cambrian_router_errors_total": "online.router",
    "cambrian_router_requests_total": "online.router",
    "cambrian_router_request_seconds_bucket": "online.router",
    "cambrian_router_overhead_seconds_bucket": "online.router",
    "cambrian_router_exposures_pending": "online.router",
    # cambrian.online.server (one per arm)
    "cambrian_server_requests_total": "online.server",
    "cambrian_server_users_total": "online.server",
    "cambrian_server_errors_total": "online.server",
    "cambrian_server_request_seconds_bucket": "online.server",
    # the operator (names fixed by the chart's PrometheusRule, charts/cambrian/templates/_helpers.tpl)
    "cambrian_hypothesis_phase": "operator",
    "cambrian_hypothesis_phase_seconds": "operator",
    "cambrian_guardrail_breached": "operator",
    "cambrian_budget_remaining": "operator",
    "cambrian_rollout_effect": "operator",
}

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
USERS_PER_S = "suffix: users/s"
STUCK_SECONDS = 21600  # the chart's CambrianHypothesisStuck threshold (metrics.prometheusRule.stuckHypothesisSeconds)


# ---------------------------------------------------------------------------------------------- PromQL
def arm_stat(stat: str, experiment: str = '"$experiment"', metric: str | None = '"$metric"', arm: str = "") -> str:
    """One sufficient statistic per (experiment, arm, metric), with the `stat` label dropped for arithmetic."""
    sel = [f"experiment={experiment}", f'stat="{stat}"']
    if metric is not None:
        sel.insert(1, f"metric={metric}")
    if arm:
        sel.append(arm)
    return f"sum without (stat) (cambrian_arm_stat{{{', '.join(sel)}}})"


def arm_mean(arm: str = "", metric: str | None = '"$metric"') -> str:
    return f"({arm_stat('sum_y', metric=metric, arm=arm)} / {arm_stat('n', metric=metric, arm=arm)} > -Inf)"


def arm_ratio(arm: str = "", metric: str | None = '"$metric"') -> str:
    return f"({arm_stat('sum_m', metric=metric, arm=arm)} / {arm_stat('sum_d', metric=metric, arm=arm)} > -Inf)"


def arm_variance(arm: str = "") -> str:
    """Sample variance of the per-user metric from moments about the metric's reference ref_y
    (docs/CONTRACTS.md): (sum_y2 − (sum_y − n·ref_y)²/n) / (n − 1), free of cancellation."""
    n, sy, sy2, ref = (arm_stat(s, arm=arm) for s in ("n", "sum_y", "sum_y2", "ref_y"))
    return f"(({sy2} - ({sy} - {n} * {ref}) ^ 2 / {n}) / clamp_min({n} - 1, 1))"


TREAT, CONTROL = 'arm!="$control"', 'arm="$control"'
ON = "on (experiment, metric) group_left ()"


def lift() -> str:
    """Relative lift of each treatment's mean over the control's: m_t / m_c − 1."""
    return f"{arm_mean(TREAT)} / {ON} {arm_mean(CONTROL)} - 1"


def lift_se() -> str:
    """Delta-method standard error of m_t / m_c (independent arms): sqrt(v_t/(n_t m_c²) + m_t² v_c/(n_c m_c⁴))."""
    mt, mc = arm_mean(TREAT), arm_mean(CONTROL)
    vt_over_n = f"({arm_variance(TREAT)} / {arm_stat('n', arm=TREAT)})"
    vc_over_n = f"({arm_variance(CONTROL)} / {arm_stat('n', arm=CONTROL)})"
    return (f"sqrt({vt_over_n} / {ON} ({mc} ^ 2) + ({mt} ^ 2) * {ON} ({vc_over_n} / ({mc} ^ 4)))")


def lift_bound(sign: str) -> str:
    return f"({lift()}) {sign} 1.96 * ({lift_se()})"


def relative_change_all() -> str:
    """Every metric (mean and ratio kinds) of every treatment relative to the control, for guardrails."""
    mean_t, mean_c = arm_mean(TREAT, metric=None), arm_mean(CONTROL, metric=None)
    ratio_t, ratio_c = arm_ratio(TREAT, metric=None), arm_ratio(CONTROL, metric=None)
    return f"({mean_t} / {ON} {mean_c} - 1) or ({ratio_t} / {ON} {ratio_c} - 1)"


def p99(metric: str, by: str = "arm", where: str = "") -> str:
    sel = f"{{{where}}}" if where else ""
    by_clause = f"le, {by}" if by else "le"
    return f"histogram_quantile(0.99, sum by ({by_clause}) (rate({metric}{sel}[{RATE}])))"


# ---------------------------------------------------------------------------------------------- panels
@dataclass
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass
class PanelSpec:
    title: str
    description: str
    queries: list[Query]
    kind: str = "timeseries"  # timeseries | stat | state | table
    unit: str = "short"
    width: int = 12
    height: int = 8
    stack: bool = False
    min: float | None = None
    max: float | None = None
    thresholds: list[tuple[float | None, str]] = field(default_factory=list)  # (from value, colour)
    dashed: str | None = None  # regex of series drawn as dashed lines (interval bounds)


@dataclass
class Variable:
    name: str
    label: str
    query: str | None = None        # label_values(...) for a query variable
    default: str | None = None      # for a text box
    multi: bool = False
    description: str = ""


@dataclass
class DashboardSpec:
    uid: str
    title: str
    description: str
    rows: list[tuple[str, list[PanelSpec]]]
    variables: list[Variable] = field(default_factory=list)


def _ds():
    from grafana_foundation_sdk.models import dashboard as dm

    return dm.DataSourceRef(type_val=DATASOURCE["type"], uid=DATASOURCE["uid"])


def _panel(p: PanelSpec, pid: int):
    from grafana_foundation_sdk.builders import common, prometheus, stat, statetimeline, table, timeseries
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models import dashboard as dm

    builder = {"timeseries": timeseries.Panel, "stat": stat.Panel, "state": statetimeline.Panel,
               "table": table.Panel}[p.kind]()
    b = builder.id(pid).title(p.title).description(p.description).datasource(_ds()).unit(p.unit)
    b = b.height(p.height).span(p.width)
    for i, q in enumerate(p.queries):
        t = prometheus.Dataquery().expr(q.expr).ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
        t = t.legend_format(q.legend or "__auto")
        b = b.with_target(t.instant() if q.instant or p.kind in ("stat", "table") else t.range())
    if p.min is not None:
        b = b.min(p.min)
    if p.max is not None:
        b = b.max(p.max)
    if p.thresholds:
        steps = [dm.Threshold(value=v, color=c) for v, c in p.thresholds]
        b = b.thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps))
    if p.kind == "timeseries":
        legend = common.VizLegendOptions().show_legend(True).display_mode(cm.LegendDisplayMode.TABLE) \
            .placement(cm.LegendPlacement.BOTTOM).calcs(["lastNotNull"])
        tooltip = common.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)
        b = b.legend(legend).tooltip(tooltip).line_width(1).fill_opacity(10 if p.stack else 0).span_nulls(True)
        if p.stack:
            b = b.stacking(common.StackingConfig().mode(cm.StackingMode.NORMAL)).fill_opacity(60)
        if p.thresholds:
            b = b.thresholds_style(common.GraphThresholdsStyleConfig().mode(cm.GraphTresholdsStyleMode.DASHED))
        if p.dashed:
            b = b.override_by_regexp(p.dashed, [dm.DynamicConfigValue(id_val="custom.lineStyle",
                                                                      value={"fill": "dash", "dash": [4, 4]})])
    elif p.kind == "stat":
        b = b.graph_mode(cm.BigValueGraphMode.AREA).color_mode(cm.BigValueColorMode.VALUE) \
            .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
    elif p.kind == "state":
        b = b.show_value(cm.VisibilityMode.NEVER).merge_values(True).mappings([
            dm.ValueMap(options={"0": dm.ValueMappingResult(text="ok", color="green"),
                                 "1": dm.ValueMappingResult(text="BREACHED", color="red")})])
    return b


def build(spec: DashboardSpec) -> dict:
    """A dashboard as Grafana JSON (a plain dict)."""
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import dashboard as dm

    d = (db.Dashboard(spec.title).uid(spec.uid).description(spec.description).tags(["cambrian"])
         .editable().refresh("30s").time("now-6h", "now").timezone("browser")
         .tooltip(dm.DashboardCursorSync.CROSSHAIR))
    d = d.with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus")
                        .description("The Prometheus that scrapes the Cambrian operator, router, model servers "
                                     "and event collector"))
    for v in spec.variables:
        if v.query is not None:
            var = (db.QueryVariable(v.name).label(v.label).description(v.description).datasource(_ds())
                   .query({"query": v.query, "refId": f"var-{v.name}"})
                   .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
                   .sort(dm.VariableSort.ALPHABETICAL_ASC).multi(v.multi).include_all(v.multi))
            if v.multi:
                var = var.all_value(".*").current(dm.VariableOption(text="All", value="$__all", selected=True))
        else:
            var = db.TextBoxVariable(v.name).label(v.label).description(v.description).default_value(v.default or "")
            var = var.current(dm.VariableOption(text=v.default or "", value=v.default or "", selected=True))
        d = d.with_variable(var)
    pid = 1
    for title, panels in spec.rows:
        d = d.with_row(db.Row(title).id(pid))
        pid += 1
        for p in panels:
            d = d.with_panel(_panel(p, pid))
            pid += 1
    return json.loads(json.dumps(d.build(), cls=JSONEncoder, sort_keys=True))


# ---------------------------------------------------------------------------------------------- the five
EVOLUTION = Variable("evolution", "Evolution", "label_values(cambrian_hypothesis_phase, evolution)", multi=True,
                     description="Evolution custom resources (one self-evolving loop each)")
EXPERIMENT = Variable("experiment", "Experiment", "label_values(cambrian_arm_exposures, experiment)",
                      description="Rollout (online experiment) name, as the collector labels it")
METRIC = Variable("metric", "Metric", 'label_values(cambrian_arm_stat{experiment="$experiment", stat="sum_y"}, metric)',
                  description="Per-user mean metric (north star or secondary) to compare across arms")
CONTROL_ARM = Variable("control", "Control arm", default="control",
                       description="Name of the control arm of the experiment (the current champion)")
EVO = 'evolution=~"$evolution"'


def overview() -> DashboardSpec:
    return DashboardSpec("cambrian-overview", "Cambrian / Loop overview",
                         "The self-evolving loop at a glance: offline hypotheses, live experiments, traffic, budgets.",
                         variables=[EVOLUTION], rows=[
        ("Loop", [
            PanelSpec("Hypotheses in flight", "Hypotheses proposed, validated or training now.",
                      [Query(f'sum(cambrian_hypothesis_phase{{{EVO}, phase=~"Proposed|Validated|Training"}})')],
                      kind="stat", width=6, height=5),
            PanelSpec("Live hypotheses", "Hypotheses serving as a treatment arm of a rollout now.",
                      [Query(f'sum(cambrian_hypothesis_phase{{{EVO}, phase="Live"}})')], kind="stat", width=6,
                      height=5),
            PanelSpec("Launched", "Hypotheses promoted to champion (counted while their resource exists).",
                      [Query(f'sum(cambrian_hypothesis_phase{{{EVO}, phase="Launched"}})')], kind="stat", width=6,
                      height=5),
            PanelSpec("Guardrails breached now", "Arms currently breaking a guardrail (the operator rolls them back).",
                      [Query("sum(cambrian_guardrail_breached)")], kind="stat", width=6, height=5,
                      thresholds=[(None, "green"), (1, "red")]),
            PanelSpec("Hypotheses by phase", "Hypotheses of the selected evolutions in each phase.",
                      [Query(f"sum by (phase) (cambrian_hypothesis_phase{{{EVO}}})", "{{phase}}")], stack=True),
            PanelSpec("Budget left", "Remaining budget per evolution and kind (tokens, dollars, GPU-hours); "
                      "0 stops the agents.",
                      [Query(f"cambrian_budget_remaining{{{EVO}}}", "{{evolution}} {{kind}}")], min=0),
        ]),
        ("Online", [
            PanelSpec("Live experiments", "Experiments with at least one exposed user, per the event collector.",
                      [Query("count(count by (experiment) (cambrian_arm_exposures))")], kind="stat", width=6,
                      height=5),
            PanelSpec("Last closed day", "Last simulated/served day whose events are complete; delayed metrics "
                      "are published only for closed days.",
                      [Query("max(cambrian_collector_closed_day)")], kind="stat", width=6, height=5),
            PanelSpec("Users ranked per second", "All model servers, every arm.",
                      [Query(f"sum(rate(cambrian_server_users_total[{RATE}]))")], kind="stat", unit=USERS_PER_S,
                      width=6,
                      height=5),
            PanelSpec("Router p99 latency", "End-to-end rank request time in the router.",
                      [Query(p99("cambrian_router_request_seconds_bucket", by=""))], kind="stat", unit="s", width=6,
                      height=5),
            PanelSpec("Users ranked per second by arm", "Rate of users ranked by each arm's model server.",
                      [Query(f"sum by (arm) (rate(cambrian_server_users_total[{RATE}]))", "{{arm}}")],
                      unit=USERS_PER_S),
            PanelSpec("Traffic weight by arm", "Percent of users the router sends to each arm.",
                      [Query("cambrian_router_weight", "{{experiment}} / {{arm}}")], unit="percent", min=0, max=100),
            PanelSpec("North star as each rollout's decision reads it", "Per rollout and treatment, the latest "
                      "readout: estimate, always-valid interval (lower, upper) and the effect its design was sized for "
                      "(planned); a fraction of control's mean when relative. An estimate far below the planned effect "
                      "late in a test is heading for an inconclusive end.",
                      [Query("max by (rollout, arm, value) (cambrian_rollout_effect)", instant=True)], kind="table",
                      width=24),
        ]),
    ])


def hypotheses() -> DashboardSpec:
    return DashboardSpec("cambrian-hypotheses", "Cambrian / Hypotheses",
                         "The journal seen through the operator's metrics: where hypotheses are, what is stuck, "
                         "how many fail.", variables=[EVOLUTION], rows=[
        ("Phases", [
            PanelSpec("Hypotheses by phase", "Count per phase (Proposed → Validated → Training → Scored → Live → "
                      "Launched | Retired; Failed and Rejected carry a reason in the journal).",
                      [Query(f"sum by (phase) (cambrian_hypothesis_phase{{{EVO}}})", "{{phase}}")], stack=True,
                      width=16),
            PanelSpec("Now, by phase", "Current count per phase.",
                      [Query(f"sum by (phase) (cambrian_hypothesis_phase{{{EVO}}})", "{{phase}}", instant=True)],
                      kind="stat", width=8),
            PanelSpec("Hypotheses per evolution", "All phases, per Evolution.",
                      [Query(f"sum by (evolution) (cambrian_hypothesis_phase{{{EVO}}})", "{{evolution}}")]),
            PanelSpec("Failed or rejected share", "Failed (gate, training, crash, timeout) plus Rejected (invalid, "
                      "duplicate, over quota) over all hypotheses.",
                      [Query(f'sum by (evolution) (cambrian_hypothesis_phase{{{EVO}, phase=~"Failed|Rejected"}}) / '
                             f"sum by (evolution) (cambrian_hypothesis_phase{{{EVO}}})", "{{evolution}}")],
                      unit="percentunit", min=0, max=1),
        ]),
        ("Progress", [
            PanelSpec("Oldest hypothesis age per phase", "How long the oldest hypothesis has been in each phase; "
                      f"the CambrianHypothesisStuck alert fires above {STUCK_SECONDS // 3600} h in "
                      "Proposed, Validated or Training.",
                      [Query(f"max by (evolution, phase) (cambrian_hypothesis_phase_seconds{{{EVO}}})",
                             "{{evolution}} {{phase}}")], unit="s",
                      thresholds=[(None, "green"), (STUCK_SECONDS, "red")]),
            PanelSpec("Hypotheses waiting for compute", "Proposed or Validated, not yet training.",
                      [Query(f'sum by (evolution) (cambrian_hypothesis_phase{{{EVO}, phase=~"Proposed|Validated"}})',
                             "{{evolution}}")]),
        ]),
    ])


def experiments() -> DashboardSpec:
    mean_desc = ("Per-user mean of $metric in each arm (users with at least one closed day in the arm; delayed "
                 "metrics only once their window closed).")
    lift_desc = ("Relative lift of each treatment over $control on $metric with a 95% interval (normal, delta "
                 "method, no CUPED, fixed horizon). The operator decides on CUPED-adjusted confidence sequences, "
                 "which are wider early on: read this as a monitor, not as the decision.")
    decision_desc = ("The Rollout's own readout of each treatment against control on the north star, as the "
                     "operator decided on it (CUPED-adjusted, a fraction of control's mean when relative): estimate, "
                     "always-valid interval, and the effect the design was sized for (what its planned users per arm "
                     "detect with its power). An interval that will not clear 0 before the end, around an estimate "
                     "well below the planned effect, is a test that will end inconclusive.")
    return DashboardSpec("cambrian-experiments", "Cambrian / Live experiments",
                         "One online experiment: traffic split, exposures, sample ratio, per-arm metrics and effects.",
                         variables=[EXPERIMENT, METRIC, CONTROL_ARM], rows=[
        ("Traffic", [
            PanelSpec("Traffic weight by arm", "Percent of users assigned to each arm (ramp steps, rollbacks, "
                      "promotion).", [Query('cambrian_router_weight{experiment="$experiment"}', "{{arm}}")],
                      unit="percent", min=0, max=100, width=8),
            PanelSpec("Users exposed by arm", "Users ever exposed to each arm.",
                      [Query('cambrian_arm_exposures{experiment="$experiment"}', "{{arm}}")], width=8),
            PanelSpec("Exposure share by arm", "Share of exposed users per arm: compare with the weights (a "
                      "persistent gap is a sample-ratio mismatch).",
                      [Query('cambrian_arm_exposures{experiment="$experiment"} / on (experiment) group_left () '
                             'sum by (experiment) (cambrian_arm_exposures{experiment="$experiment"})', "{{arm}}")],
                      unit="percentunit", min=0, max=1, width=8),
            PanelSpec("New users per day by arm", "Users by the closed day of their first exposure (cohorts used "
                      "for the sample-ratio check).",
                      [Query('sum by (arm, cohort_day) (cambrian_arm_cohort_users{experiment="$experiment"})',
                             "day {{cohort_day}} {{arm}}", instant=True)], kind="table", width=8),
            PanelSpec("Users ranked per second by arm", "Users ranked by each arm's model server.",
                      [Query(f"sum by (arm) (rate(cambrian_server_users_total[{RATE}]))", "{{arm}}")], unit=USERS_PER_S,
                      width=8),
            PanelSpec("Last closed day", "Days up to this one are complete in the collector.",
                      [Query("max(cambrian_collector_closed_day)")], kind="stat", width=8),
        ]),
        ("Effects on $metric", [
            PanelSpec("Mean per user by arm", mean_desc, [Query(arm_mean(), "{{arm}}")]),
            PanelSpec("Users measured by arm", "Users counted in $metric per arm (n of the sufficient statistics).",
                      [Query(arm_stat("n"), "{{arm}}")]),
            PanelSpec("Lift over control, 95% interval", lift_desc,
                      [Query(lift(), "{{arm}} lift"), Query(lift_bound("-"), "{{arm}} lower 95%"),
                       Query(lift_bound("+"), "{{arm}} upper 95%")],
                      unit="percentunit", width=24, height=10, thresholds=[(None, "transparent"), (0, "text")],
                      dashed=".* (lower|upper) 95%"),
        ]),
        ("The operator's reading of the north star", [
            PanelSpec("Effect as the decision reads it, with the planned effect", decision_desc,
                      [Query(f'cambrian_rollout_effect{{rollout="$experiment", value="{v}"}}', f"{{{{arm}}}} {label}")
                       for v, label in (("estimate", "estimate"), ("lower", "lower (always valid)"),
                                        ("upper", "upper (always valid)"), ("planned", "planned effect"))],
                      unit="percentunit", width=24, height=10, thresholds=[(None, "transparent"), (0, "text")],
                      dashed=".* (lower|upper) \\(always valid\\)|.* planned effect"),
        ]),
    ])


def guardrails() -> DashboardSpec:
    return DashboardSpec("cambrian-guardrails", "Cambrian / Guardrails",
                         "Guardrails and hard limits of live experiments: what is breached, and the metrics behind it.",
                         variables=[EXPERIMENT, CONTROL_ARM], rows=[
        ("Breaches", [
            PanelSpec("Guardrail status by rollout, arm and metric", "1 while an arm breaks a guardrail "
                      "(non-inferiority failed or a hard limit crossed); the operator then rolls the arm back.",
                      [Query("max by (rollout, arm, metric) (cambrian_guardrail_breached)",
                             "{{rollout}} / {{arm}} / {{metric}}")], kind="state", width=24, height=7),
        ]),
        ("Guardrail metrics ($experiment)", [
            PanelSpec("Ratio metrics by arm", "Ratio metrics (Σ numerator / Σ denominator over users), e.g. "
                      "ctr and hate_rate.",
                      [Query(f"{arm_ratio(metric=None)}", "{{metric}} {{arm}}")], unit="percentunit"),
            PanelSpec("Change versus control, every metric", "Relative difference of each treatment from "
                      "$control, per metric (point estimate; the guardrail uses its confidence bound).",
                      [Query(relative_change_all(), "{{metric}} {{arm}}")], unit="percentunit",
                      thresholds=[(None, "transparent"), (0, "text")]),
        ]),
        ("Hard limits (serving)", [
            PanelSpec("Model server p99 latency by arm", "p99 of rank request handling time per arm "
                      "(hard limit latency_p99_ms).", [Query(p99("cambrian_server_request_seconds_bucket"), "{{arm}}")],
                      unit="s", width=8),
            PanelSpec("Model server error rate by arm", "Failed rank requests / all rank requests per arm (hard "
                      "limit error_rate).",
                      [Query(f"sum by (arm) (rate(cambrian_server_errors_total[{RATE}])) / clamp_min(sum by (arm) "
                             f"(rate(cambrian_server_requests_total[{RATE}])), 1e-9)", "{{arm}}")],
                      unit="percentunit", min=0, width=8),
            PanelSpec("Router overhead p99", "Time spent in the router itself per rank request (budget: 1 ms).",
                      [Query(p99("cambrian_router_overhead_seconds_bucket", by=""), "p99 overhead")], unit="s",
                      thresholds=[(None, "green"), (0.001, "red")], width=8),
            PanelSpec("Router errors by arm", "Sub-batches the router failed to get ranked, per second.",
                      [Query(f"sum by (arm) (rate(cambrian_router_errors_total[{RATE}]))", "{{arm}}")], unit="reqps"),
            PanelSpec("Exposures waiting for the collector", "First exposures the router has not delivered yet "
                      "(growing: the collector is unreachable).",
                      [Query("sum(cambrian_router_exposures_pending)", "pending")]),
        ]),
    ])


def spend() -> DashboardSpec:
    kinds = [("tokens", "LLM tokens left", "short"), ("dollars", "Dollars left", "currencyUSD"),
             ("gpu_hours", "GPU-hours left", "h")]
    return DashboardSpec("cambrian-spend", "Cambrian / Spend",
                         "Budgets of the agents (tokens, dollars, GPU-hours), their burn rate, and the online "
                         "work the loop causes.", variables=[EVOLUTION], rows=[
        ("Budgets", [
            PanelSpec(title, f"Remaining {kind} budget per evolution; at 0 the agents stop proposing.",
                      [Query(f'cambrian_budget_remaining{{{EVO}, kind="{kind}"}}', "{{evolution}}")], kind="stat",
                      unit=unit, width=8, height=5, thresholds=[(None, "red"), (0.000001, "green")])
            for kind, title, unit in kinds
        ] + [
            PanelSpec("Budget left over time", "Remaining budget per evolution and kind.",
                      [Query(f"cambrian_budget_remaining{{{EVO}}}", "{{evolution}} {{kind}}")], min=0),
            PanelSpec("Burn rate per hour", "How fast each budget is spent (decrease of the remaining budget per "
                      "hour, over the last hour).",
                      [Query(f"clamp_min(-deriv(cambrian_budget_remaining{{{EVO}}}[1h]) * 3600, 0)",
                             "{{evolution}} {{kind}}")], min=0),
        ]),
        ("Online work", [
            PanelSpec("Rank requests per second by arm", "Model-server requests: the serving cost of live arms.",
                      [Query(f"sum by (arm) (rate(cambrian_server_requests_total[{RATE}]))", "{{arm}}")],
                      unit="reqps", width=8),
            PanelSpec("Users routed per second by arm", "Users the router sent to each arm.",
                      [Query(f"sum by (arm) (rate(cambrian_router_users_total[{RATE}]))", "{{arm}}")], unit=USERS_PER_S,
                      width=8),
            PanelSpec("Collector rows per second", "User-day rows applied by the event collector.",
                      [Query(f"sum(rate(cambrian_collector_rows_total[{RATE}]))", "rows")], unit="suffix: rows/s",
                      width=8),
        ]),
    ])


DASHBOARDS: dict[str, Callable[[], DashboardSpec]] = {
    "overview": overview, "hypotheses": hypotheses, "experiments": experiments, "guardrails": guardrails,
    "spend": spend,
}


def generate() -> dict[str, dict]:
    """{file name: dashboard JSON} for every dashboard."""
    return {f"cambrian-{name}.json": build(make()) for name, make in DASHBOARDS.items()}


def render(dash: dict) -> str:
    return json.dumps(dash, indent=2, sort_keys=True) + "\n"


def write(out: str | Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, dash in generate().items():
        path = out / name
        path.write_text(render(dash))
        written.append(path)
    return written


def dashboards(
    out: list[Path] = typer.Option(..., "--out", help="directory to write the dashboard JSON files into "
                                   "(repeatable: charts/cambrian/dashboards and manifests/dashboards)"),
    check: bool = typer.Option(False, "--check", help="write nothing; exit 1 if a file differs from a fresh "
                               "generation"),
) -> None:
    """Generate the Grafana dashboards (JSON) from code."""
    for d in out:
        inputs.output_dir(d)  # all of them before the first is written
    if check:
        stale = [str(Path(d) / name) for d in out for name, dash in generate().items()
                 if not (Path(d) / name).is_file() or (Path(d) / name).read_text() != render(dash)]
        if stale:
            typer.echo("out of date (run `cambrian dashboards --out DIR`): " + ", ".join(stale), err=True)
            raise typer.Exit(1)
        typer.echo("dashboards are up to date")
        return
    for d in out:
        for path in write(d):
            typer.echo(str(path))
