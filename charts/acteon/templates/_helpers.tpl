{{/*
Chart name, possibly overridden.
*/}}
{{- define "acteon.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name prefix. Release "acteon" gives "acteon"; release "prod" gives
"prod-acteon". Truncated so that "-operator"/"-gateway" suffixes stay within 63 characters.
*/}}
{{- define "acteon.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart label value: name-version.
*/}}
{{- define "acteon.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels common to every object.
*/}}
{{- define "acteon.labels" -}}
helm.sh/chart: {{ include "acteon.chart" . }}
app.kubernetes.io/name: {{ include "acteon.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: acteon
{{- end }}

{{/*
Selector labels; add app.kubernetes.io/component per workload.
*/}}
{{- define "acteon.selectorLabels" -}}
app.kubernetes.io/name: {{ include "acteon.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Operator: base name (ServiceAccount, ClusterRole, bindings, Role) and labels.
*/}}
{{- define "acteon.operator.fullname" -}}
{{- printf "%s-operator" (include "acteon.fullname" .) }}
{{- end }}

{{- define "acteon.operator.labels" -}}
{{ include "acteon.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "acteon.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "acteon.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Gateway: base name and labels.
*/}}
{{- define "acteon.gateway.fullname" -}}
{{- printf "%s-gateway" (include "acteon.fullname" .) }}
{{- end }}

{{- define "acteon.gateway.labels" -}}
{{ include "acteon.labels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "acteon.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "acteon.gateway.fullname" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The one image holding both binaries: repository@digest, else repository:tag (appVersion).
*/}}
{{- define "acteon.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Secret holding the state backend URL, and its key.
*/}}
{{- define "acteon.state.secretName" -}}
{{- if .Values.state.existingSecret }}
{{- .Values.state.existingSecret }}
{{- else }}
{{- if not (include "acteon.state.url" .) }}
{{- fail "state.url (a redis:// or postgres:// URL) or state.existingSecret is required (or evaluationRedis.enabled, for evaluation only): operator and gateways meet in the state backend" }}
{{- end }}
{{- printf "%s-state" (include "acteon.fullname" .) }}
{{- end }}
{{- end }}

{{/*
"true" when the bundled evaluation Redis is rendered: enabled, and no backend given.
*/}}
{{- define "acteon.evaluationRedis.enabled" -}}
{{- if and .Values.evaluationRedis.enabled (not .Values.state.url) (not .Values.state.existingSecret) }}true{{ end }}
{{- end }}

{{- define "acteon.evaluationRedis.fullname" -}}
{{- printf "%s-redis" (include "acteon.fullname" .) }}
{{- end }}

{{/*
The state URL the chart's Secret holds: state.url, else the evaluation Redis (if rendered).
*/}}
{{- define "acteon.state.url" -}}
{{- if .Values.state.url }}
{{- .Values.state.url }}
{{- else if eq (include "acteon.evaluationRedis.enabled" .) "true" }}
{{- printf "redis://%s.%s.svc:6379" (include "acteon.evaluationRedis.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{- define "acteon.state.secretKey" -}}
{{- if .Values.state.existingSecret }}{{ .Values.state.existingSecretKey }}{{ else }}url{{ end }}
{{- end }}

{{/*
Secret holding the seal key, and its key.
*/}}
{{- define "acteon.sealKey.secretName" -}}
{{- default (printf "%s-seal-key" (include "acteon.fullname" .)) .Values.sealKey.existingSecret }}
{{- end }}

{{- define "acteon.sealKey.secretKey" -}}
{{- if .Values.sealKey.existingSecret }}{{ .Values.sealKey.existingSecretKey }}{{ else }}key{{ end }}
{{- end }}

{{/*
The seal key Secret mounted as files, which the kubelet rewrites when the Secret changes:
gateways and the operator re-read them, so a rotated key needs no restart (the operator, not
the chart, owns the Secret, so a checksum annotation could not follow it). The optional
`previous` entry holds the old key(s) still accepted during a rotation.
*/}}
{{- define "acteon.sealKeyFileEnv" -}}
- name: ACTEON_SEAL_KEY_FILE
  value: {{ printf "/etc/acteon/seal/%s" (include "acteon.sealKey.secretKey" .) | quote }}
{{- end }}

{{- define "acteon.previousSealKeysFileEnv" -}}
- name: ACTEON_PREVIOUS_SEAL_KEYS_FILE
  value: /etc/acteon/seal/previous
{{- end }}

{{- define "acteon.sealKeyVolumeMount" -}}
- name: seal-key
  mountPath: /etc/acteon/seal
  readOnly: true
{{- end }}

{{- define "acteon.sealKeyVolume" -}}
- name: seal-key
  secret:
    secretName: {{ include "acteon.sealKey.secretName" . }}
    # 0440: readable by the pod's fsGroup (the containers run as non-root).
    defaultMode: 288
{{- end }}

{{/*
Environment both binaries share: state backend, shared namespace, logging.
*/}}
{{- define "acteon.commonEnv" -}}
- name: ACTEON_STATE
  valueFrom:
    secretKeyRef:
      name: {{ include "acteon.state.secretName" . }}
      key: {{ include "acteon.state.secretKey" . }}
- name: ACTEON_STATE_PREFIX
  value: {{ .Values.state.prefix | quote }}
- name: ACTEON_STATE_TIMEOUT_MS
  value: {{ .Values.state.timeoutMs | quote }}
- name: ACTEON_SHARED_NAMESPACE
  value: {{ default .Release.Namespace .Values.sharedNamespace | quote }}
- name: ACTEON_LOG_JSON
  value: {{ .Values.logging.json | quote }}
- name: RUST_LOG
  value: {{ .Values.logging.level | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}

{{/*
PodDisruptionBudget and HorizontalPodAutoscaler API versions: the GA ones when the cluster
serves them (Kubernetes ≥ 1.21 / 1.23), else the beta ones older clusters serve.
*/}}
{{- define "acteon.pdb.apiVersion" -}}
{{- if .Capabilities.APIVersions.Has "policy/v1" }}policy/v1{{ else }}policy/v1beta1{{ end }}
{{- end }}

{{- define "acteon.hpa.apiVersion" -}}
{{- if .Capabilities.APIVersions.Has "autoscaling/v2" }}autoscaling/v2{{ else }}autoscaling/v2beta2{{ end }}
{{- end }}

{{/*
What the operator needs in a namespace it watches (ClusterRole, or a Role per watched namespace).
*/}}
{{- define "acteon.operator.watchRules" -}}
- apiGroups: ["acteon.dev"]
  resources: ["rules", "providers", "chains", "statemachines", "actionquotas"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["acteon.dev"]
  resources: ["rules/status", "providers/status", "chains/status", "statemachines/status", "actionquotas/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Whether the gateways call the Kubernetes API (authentication through TokenReview or API
token Secrets): "true" or "false".
*/}}
{{- define "acteon.gateway.usesKubeApi" -}}
{{- $a := .Values.gateway.auth -}}
{{- and $a.enabled (or $a.serviceAccounts $a.apiTokenSecrets) | toString -}}
{{- end }}
