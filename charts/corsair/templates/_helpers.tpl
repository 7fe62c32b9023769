{{/* Name of the chart's objects: the release name, unless it already says corsair. */}}
{{- define "corsair.fullname" -}}
{{- if contains "corsair" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-corsair" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "corsair.labels" -}}
app.kubernetes.io/name: corsair
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "corsair.selectorLabels" -}}
app.kubernetes.io/name: corsair
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "corsair.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "corsair.sidecarImage" -}}
{{- $slim := printf "%s:%s" .Values.sidecar.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- default $slim .Values.sidecar.image -}}
{{- end -}}

{{- define "corsair.webhookService" -}}
{{- printf "%s-webhook" (include "corsair.fullname" .) -}}
{{- end -}}

{{- define "corsair.serviceAccount" -}}
{{- printf "%s-controller" (include "corsair.fullname" .) -}}
{{- end -}}

{{- define "corsair.mutatingWebhook" -}}
{{- printf "%s-inject" (include "corsair.fullname" .) -}}
{{- end -}}

{{- define "corsair.validatingWebhook" -}}
{{- printf "%s-validate" (include "corsair.fullname" .) -}}
{{- end -}}

{{- define "corsair.lease" -}}
{{- printf "%s-controller" (include "corsair.fullname" .) -}}
{{- end -}}

{{- define "corsair.certSecret" -}}
{{- printf "%s-webhook-tls" (include "corsair.fullname" .) -}}
{{- end -}}

{{/* The webhook CA and its private key: read and written by the leader only. */}}
{{- define "corsair.caSecret" -}}
{{- printf "%s-webhook-ca" (include "corsair.fullname" .) -}}
{{- end -}}
