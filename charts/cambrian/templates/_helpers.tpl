{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "cambrian.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource name prefix; leaves room for the longest suffix ("-operator-metrics"). */}}
{{- define "cambrian.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "cambrian.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cambrian.labels" -}}
helm.sh/chart: {{ include "cambrian.chart" . }}
app.kubernetes.io/name: {{ include "cambrian.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cambrian
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include "cambrian.selectorLabels" (list . "operator") */}}
{{- define "cambrian.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "cambrian.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "cambrian.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "cambrian.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image reference: include "cambrian.image" (list .Values.operator.image .Chart.AppVersion) */}}
{{- define "cambrian.image" -}}
{{- $img := index . 0 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default (index . 1) $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* Namespaces whose objects the operator manages: the watched ones, or the release namespace. */}}
{{- define "cambrian.policyNamespaces" -}}
{{- $ns := .Values.networkPolicy.namespaces -}}
{{- if not $ns -}}
{{- $ns = concat (list .Release.Namespace) .Values.operator.watchNamespaces | uniq -}}
{{- end -}}
{{- toJson $ns -}}
{{- end -}}

{{/* The kopf peering object the operator replicas elect their active one through. */}}
{{- define "cambrian.peeringName" -}}
{{ include "cambrian.fullname" . }}-operator
{{- end -}}

{{- define "cambrian.routerConfigMap" -}}
{{- printf "%s-router" (include "cambrian.fullname" .) -}}
{{- end -}}

{{/*
The operator's rules in the namespaces it serves: exactly the verbs it uses, no wildcards, no
Secrets. kopf watches and patches the Cambrian objects (finalizers, progress annotations) and their
/status, and posts core Events; with more than one replica it reads and patches its kopf peering
object (leader election, no Leases). The platform adapter (operator/platform/kubernetes.py) creates training Jobs with their
run ConfigMaps, serving-arm and per-Rollout router Deployments and Services, replaces the router and
champion ConfigMaps, reads Job pods' termination messages, and patches HTTPRoute weights.
tests/chart/test_rbac.py checks these rules against the API calls in operator/.
*/}}
{{- define "cambrian.operatorRules" -}}
{{- if gt (int .Values.operator.replicas) 1 -}}
# kopf's peering (leader election between the replicas): each replica patches its own entry into the
# peering object's status and watches the others'.
- apiGroups: [kopf.dev]
  resources: [{{ if .Values.operator.watchNamespaces }}kopfpeerings{{ else }}clusterkopfpeerings{{ end }}]
  verbs: [get, list, watch, patch]
{{ end -}}
- apiGroups: [cambrian.dev]
  resources: [evolutions]
  verbs: [get, list, watch, patch]
- apiGroups: [cambrian.dev]
  resources: [hypotheses, rollouts]
  verbs: [get, list, watch, create, patch]
- apiGroups: [cambrian.dev]
  resources: [evolutions/status, hypotheses/status, rollouts/status]
  verbs: [get, patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# update: the champion's Deployment is switched to a new bundle in place (a rolling update); patch: its
# Service's port follows spec.serving.port.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, create, update, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, create, patch, delete]
# A multi-worker training gang's own NetworkPolicy: its pods may reach each other (operator/platform/gang.py).
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [create, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, update, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Read only to name a missing prerequisite in a Hypothesis' status (a PriorityClass is cluster-scoped:
# with watchNamespaces only RoleBindings exist, and the operator then cannot tell).
- apiGroups: [scheduling.k8s.io]
  resources: [priorityclasses]
  verbs: [get]
- apiGroups: [kueue.x-k8s.io]
  resources: [localqueues]
  verbs: [get]
{{- if .Values.gateway.enabled }}
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, patch]
{{- end }}
{{- end -}}

{{/*
Cambrian's alert rules (the `groups:` of a Prometheus rule file). With default values and release
name "cambrian" this renders exactly manifests/prometheus/cambrian-rules.yaml (a test checks it).
Metrics, exported by the operator:
  cambrian_guardrail_breached{rollout,arm,metric}    1 while an arm breaks a guardrail, else 0
  cambrian_hypothesis_phase{evolution,phase}         hypotheses currently in each phase
  cambrian_hypothesis_phase_seconds{evolution,phase} age in that phase of its oldest hypothesis
  cambrian_budget_remaining{evolution,kind}          budget left (kind: tokens|dollars|gpu_hours)
  cambrian_rollout_effect{rollout,arm,metric,value}  latest north-star reading (value: estimate|lower|upper|planned)
*/}}
{{- define "cambrian.ruleGroups" -}}
{{- $pr := .Values.metrics.prometheusRule -}}
groups:
  - name: cambrian.rules
    rules:
      - alert: CambrianGuardrailBreached
        expr: max by (namespace, rollout, arm, metric) (cambrian_guardrail_breached) > 0
        for: {{ $pr.guardrailBreachFor }}
        labels:
          severity: critical
        annotations:
          summary: Rollout {{"{{"}} $labels.rollout {{"}}"}} arm {{"{{"}} $labels.arm {{"}}"}} breaks guardrail {{"{{"}} $labels.metric {{"}}"}}
          description: >-
            Arm {{"{{"}} $labels.arm {{"}}"}} of Rollout {{"{{"}} $labels.namespace {{"}}"}}/{{"{{"}} $labels.rollout {{"}}"}}
            has breached the guardrail on {{"{{"}} $labels.metric {{"}}"}}; the operator should be rolling it back.
      - alert: CambrianHypothesisStuck
        expr: max by (namespace, evolution, phase) (cambrian_hypothesis_phase_seconds{phase=~"Proposed|Validated|Training"}) > {{ $pr.stuckHypothesisSeconds }}
        for: {{ $pr.stuckHypothesisFor }}
        labels:
          severity: warning
        annotations:
          summary: A hypothesis of {{"{{"}} $labels.evolution {{"}}"}} is stuck in phase {{"{{"}} $labels.phase {{"}}"}}
          description: >-
            The oldest hypothesis of Evolution {{"{{"}} $labels.namespace {{"}}"}}/{{"{{"}} $labels.evolution {{"}}"}} in phase
            {{"{{"}} $labels.phase {{"}}"}} has been there for {{"{{"}} $value | humanizeDuration {{"}}"}}.
      - alert: CambrianBudgetExhausted
        expr: min by (namespace, evolution, kind) (cambrian_budget_remaining) <= 0
        for: {{ $pr.budgetExhaustedFor }}
        labels:
          severity: warning
        annotations:
          summary: Evolution {{"{{"}} $labels.evolution {{"}}"}} has no {{"{{"}} $labels.kind {{"}}"}} budget left
          description: >-
            Evolution {{"{{"}} $labels.namespace {{"}}"}}/{{"{{"}} $labels.evolution {{"}}"}} exhausted its {{"{{"}} $labels.kind {{"}}"}} budget;
            its agents propose nothing until the budget is raised.
      - alert: CambrianOperatorDown
        expr: absent(up{job="{{ include "cambrian.fullname" . }}-operator-metrics"} == 1)
        for: {{ $pr.operatorDownFor }}
        labels:
          severity: critical
        annotations:
          summary: The Cambrian operator is not being scraped
          description: >-
            No healthy scrape of the Cambrian operator for {{ $pr.operatorDownFor }}: hypotheses, rollouts and
            the alerts above are not being updated.
{{- end -}}
