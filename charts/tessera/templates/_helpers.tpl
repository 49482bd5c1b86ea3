{{/*
Names and labels shared by every template. Names are cut to 63 characters, the length of a
DNS label (a Service's name is one) and of a label value, without a trailing "-".
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "tessera.name" -}}
{{ .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
What objects are named after: fullnameOverride; else the release name when it already
holds the chart's name (release "tessera" gives "tessera", not "tessera-tessera"); else
"<release>-<name>".
*/}}
{{- define "tessera.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{ .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "tessera.name" .) .Release.Name -}}
{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}
{{ printf "%s-%s" .Release.Name (include "tessera.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The chart label: name and version ("+" is not allowed in a label value). */}}
{{- define "tessera.chart" -}}
{{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
What the Deployment selects its pods by. It never changes across upgrades (a Deployment's
selector cannot be changed), so the component label is not in it.
*/}}
{{- define "tessera.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tessera.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
What Services and the NetworkPolicy select the server's pods by: the selector labels and the
component, so that the `helm test` pod (component "test") is never one of their endpoints.
*/}}
{{- define "tessera.serverSelectorLabels" -}}
{{ include "tessera.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/* The labels of every object. */}}
{{- define "tessera.labels" -}}
helm.sh/chart: {{ include "tessera.chart" . }}
{{ include "tessera.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The image, its tag defaulting to the chart's appVersion. */}}
{{- define "tessera.image" -}}
{{ printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The Service that exposes the admin port (metrics, health) inside the cluster. The full name
is cut to leave room for the suffix (55 + "-metrics" = 63): cutting the whole name instead
would give a long full name's Service and this one the same name.
*/}}
{{- define "tessera.metricsName" -}}
{{ printf "%s-metrics" (include "tessera.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* The `helm test` pod: its name is its host name, a DNS label (49 + 13 = 62). */}}
{{- define "tessera.testName" -}}
{{ printf "%s-test-healthz" (include "tessera.fullname" . | trunc 49 | trimSuffix "-") }}
{{- end }}
