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
