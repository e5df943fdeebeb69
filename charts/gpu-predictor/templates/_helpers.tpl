{{/*
Names, labels and derived values shared by the templates.
*/}}

{{/* Chart name, overridable. */}}
{{- define "gpu-predictor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name: the InferenceService name. KServe derives `<name>-predictor` (Service,
Deployment) and Knative `<name>-predictor-00001` (revision, a label value of 63 characters
at most) from it, hence 40 characters at most.
*/}}
{{- define "gpu-predictor.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* chart label value: name-version */}}
{{- define "gpu-predictor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object the chart creates. */}}
{{- define "gpu-predictor.labels" -}}
helm.sh/chart: {{ include "gpu-predictor.chart" . }}
{{ include "gpu-predictor.selectorLabels" . }}
app.kubernetes.io/version: {{ include "gpu-predictor.imageTag" . | trunc 63 | trimSuffix "-" | trimSuffix "." | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Name and instance labels. */}}
{{- define "gpu-predictor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpu-predictor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Labels KServe puts on the predictor pods, in both deployment modes: what the PodMonitor,
NetworkPolicy and PodDisruptionBudget select on.
*/}}
{{- define "gpu-predictor.podSelector" -}}
serving.kserve.io/inferenceservice: {{ include "gpu-predictor.fullname" . }}
component: predictor
{{- end -}}

{{/* Image tag: image.tag, else the chart appVersion. */}}
{{- define "gpu-predictor.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{/* Effective autoscaling mode: `auto` resolved against the deployment mode. */}}
{{- define "gpu-predictor.autoscalingMode" -}}
{{- $mode := .Values.autoscaling.mode -}}
{{- if eq $mode "auto" -}}
{{- ternary "knative" "hpa" (eq .Values.deploymentMode "Knative") -}}
{{- else -}}
{{- $mode -}}
{{- end -}}
{{- end -}}

{{/* Secret holding the auth token, and its key. */}}
{{- define "gpu-predictor.authSecretName" -}}
{{- default (printf "%s-auth" (include "gpu-predictor.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* Where the token file is mounted in the predictor and test containers. */}}
{{- define "gpu-predictor.authDir" -}}/var/run/secrets/gpu-predictor{{- end -}}

{{/*
Cluster-local base URL of the predictor: KServe's `<name>-predictor` Service on port 80 in
both modes (Standard: a ClusterIP Service to port 8080; Knative: the cluster-local route).
*/}}
{{- define "gpu-predictor.url" -}}
http://{{ include "gpu-predictor.fullname" . }}-predictor.{{ .Release.Namespace }}.svc
{{- end -}}

{{/*
The name the model is served under: model.name with this chart's container; with
predictorMode runtime, the InferenceService's name (the runtime passes KServe's {{.Name}}).
*/}}
{{- define "gpu-predictor.servedName" -}}
{{- if eq .Values.predictorMode "runtime" -}}
{{- include "gpu-predictor.fullname" . -}}
{{- else -}}
{{- .Values.model.name -}}
{{- end -}}
{{- end -}}

{{/* Prometheus label matchers selecting this release's predictor series. */}}
{{- define "gpu-predictor.seriesSelector" -}}
namespace="{{ .Release.Namespace }}",model="{{ include "gpu-predictor.servedName" . }}"
{{- end -}}

{{/*
KEDA query: images queued plus requests in flight over every replica. KEDA divides it by
autoscaling.keda.threshold to get the replica count.
*/}}
{{- define "gpu-predictor.kedaQuery" -}}
{{- if .Values.autoscaling.keda.query -}}
{{- tpl .Values.autoscaling.keda.query . -}}
{{- else -}}
{{- $sel := include "gpu-predictor.seriesSelector" . -}}
(sum(predictor_queue_depth{ {{- $sel -}} }) or vector(0)) + (sum(predictor_inflight_requests{ {{- $sel -}} }) or vector(0))
{{- end -}}
{{- end -}}

{{/* Body of a v1 prediction request carrying the chart's sample image (a handwritten 7). */}}
{{- define "gpu-predictor.sampleRequest" -}}
{"instances": [{"image_bytes": {"b64": "{{ .Files.Get "files/sample-digit.png" | b64enc }}"}}]}
{{- end -}}
