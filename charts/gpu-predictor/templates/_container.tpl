{{/*
The predictor container's environment: every PREDICTOR_* setting the values give. Shared by
the InferenceService's own container and the serving runtime's. Argument: a dict with
"root" (the chart context) and "runtime" (true: the runtime's container, whose served name
and model directory come from its args, KServe's {{.Name}} and /mnt/models).
*/}}
{{- define "gpu-predictor.env" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $gpu := int $v.gpu.count -}}
{{- if not .runtime }}
- name: PREDICTOR_MODEL_NAME
  value: {{ $v.model.name | quote }}
{{- end }}
- name: PREDICTOR_HTTP_PORT
  value: "8080"
- name: PREDICTOR_GRPC_PORT
  value: "8081"
- name: PREDICTOR_ENABLE_GRPC
  value: {{ $v.grpc.enabled | toString | quote }}
- name: PREDICTOR_DEVICES
  value: {{ ternary "auto" "cpu" (gt $gpu 0) | quote }}
- name: PREDICTOR_DTYPE
  value: {{ $v.dtype | quote }}
- name: PREDICTOR_JIT
  value: {{ $v.jit | quote }}
- name: PREDICTOR_MAX_BATCH_SIZE
  value: {{ int $v.batching.maxBatchSize | toString | quote }}
- name: PREDICTOR_MAX_BATCH_DELAY_MS
  value: {{ $v.batching.maxBatchDelayMs | toString | quote }}
- name: PREDICTOR_TUNE_BATCH_SIZE
  value: {{ $v.batching.tuneBatchSize | toString | quote }}
- name: PREDICTOR_QUEUE_CAPACITY
  value: {{ int $v.batching.queueCapacity | toString | quote }}
- name: PREDICTOR_REQUEST_TIMEOUT_MS
  value: {{ int $v.requestTimeoutMs | toString | quote }}
- name: PREDICTOR_DRAIN_TIMEOUT_S
  value: {{ int $v.drainTimeoutSeconds | toString | quote }}
- name: PREDICTOR_DECODE_WORKERS
  value: {{ int $v.decodeWorkers | toString | quote }}
- name: PREDICTOR_LOG_LEVEL
  value: {{ $v.logLevel | quote }}
- name: PREDICTOR_MAX_BODY_BYTES
  value: {{ int $v.limits.maxBodyBytes | toString | quote }}
- name: PREDICTOR_MAX_IMAGE_PIXELS
  value: {{ int $v.limits.maxImagePixels | toString | quote }}
- name: PREDICTOR_HEADER_TIMEOUT_S
  value: {{ $v.limits.headerTimeoutSeconds | toString | quote }}
- name: PREDICTOR_BODY_TIMEOUT_S
  value: {{ $v.limits.bodyTimeoutSeconds | toString | quote }}
- name: PREDICTOR_KEEP_ALIVE_TIMEOUT_S
  value: {{ $v.limits.keepAliveTimeoutSeconds | toString | quote }}
- name: PREDICTOR_MAX_HEADER_BYTES
  value: {{ int $v.limits.maxHeaderBytes | toString | quote }}
- name: PREDICTOR_MAX_HEADERS
  value: {{ int $v.limits.maxHeaders | toString | quote }}
- name: PREDICTOR_MAX_CONNECTIONS
  value: {{ int $v.limits.maxConnections | toString | quote }}
- name: PREDICTOR_MAX_INFLIGHT_BYTES
  value: {{ int $v.limits.maxInflightBytes | toString | quote }}
- name: PREDICTOR_GRPC_MAX_CONCURRENT_STREAMS
  value: {{ int $v.limits.grpcMaxConcurrentStreams | toString | quote }}
- name: PREDICTOR_MODEL_CONTROL
  value: {{ $v.modelControl | quote }}
- name: PREDICTOR_DOCS
  value: {{ $v.docs | toString | quote }}
{{- if $v.auth.enabled }}
- name: PREDICTOR_AUTH_TOKEN_FILE
  value: {{ include "gpu-predictor.authDir" $root }}/token
{{- end }}
{{- if not .runtime }}
{{- with $v.model.storageUri }}
- name: STORAGE_URI
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- with $v.extraEnv }}
{{- toYaml . | nindent 10 }}
{{- end }}
{{- end -}}

{{/*
The container's resource limits: the values' limits plus the GPU limit on
gpu.resourceName (a YAML map; empty when there are none).
*/}}
{{- define "gpu-predictor.limits" -}}
{{- $v := .Values -}}
{{- $limits := deepCopy (default dict $v.resources.limits) -}}
{{- if gt (int $v.gpu.count) 0 -}}
{{- $_ := set $limits $v.gpu.resourceName (int $v.gpu.count) -}}
{{- end -}}
{{- if $limits }}{{ toYaml $limits }}{{ end -}}
{{- end -}}

{{/*
Where the pods may run: node selector (the GPU one merged in; MIG's mixed strategy for a
nvidia.com/mig-* resource), tolerations, and the GPU product affinity. Pod-level fields, at
indentation 0; empty when there are none.
*/}}
{{- define "gpu-predictor.scheduling" -}}
{{- $v := .Values -}}
{{- $gpu := int $v.gpu.count -}}
{{- $nodeSelector := deepCopy $v.nodeSelector -}}
{{- $tolerations := $v.tolerations -}}
{{- if gt $gpu 0 -}}
{{- $nodeSelector = merge $nodeSelector (deepCopy $v.gpu.nodeSelector) -}}
{{- if hasPrefix "nvidia.com/mig-" $v.gpu.resourceName -}}
{{- $_ := set $nodeSelector "nvidia.com/mig.strategy" "mixed" -}}
{{- end -}}
{{- $tolerations = concat $v.gpu.tolerations $v.tolerations -}}
{{- end -}}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if and (gt $gpu 0) $v.gpu.product }}
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - key: nvidia.com/gpu.product
              operator: In
              values:
                - {{ $v.gpu.product | quote }}
{{- end }}
{{- end -}}

{{/*
The predictor container's probes (and its preStop sleep in Standard mode), at indentation 0.
Argument: a dict with "root" and "served" (the model name the readiness probes ask for).
*/}}
{{- define "gpu-predictor.probes" -}}
{{- $v := .root.Values -}}
startupProbe:
  httpGet:
    path: /v2/models/{{ .served }}/ready
    port: 8080
  periodSeconds: {{ int $v.probes.startup.periodSeconds }}
  failureThreshold: {{ int $v.probes.startup.failureThreshold }}
  timeoutSeconds: {{ int $v.probes.startup.timeoutSeconds }}
readinessProbe:
  httpGet:
    path: /v2/models/{{ .served }}/ready
    port: 8080
  periodSeconds: {{ int $v.probes.readiness.periodSeconds }}
  failureThreshold: {{ int $v.probes.readiness.failureThreshold }}
  timeoutSeconds: {{ int $v.probes.readiness.timeoutSeconds }}
livenessProbe:
  httpGet:
    path: /v2/health/live
    port: 8080
  periodSeconds: {{ int $v.probes.liveness.periodSeconds }}
  failureThreshold: {{ int $v.probes.liveness.failureThreshold }}
  timeoutSeconds: {{ int $v.probes.liveness.timeoutSeconds }}
{{- if and (ne $v.deploymentMode "Knative") (gt (int $v.preStopSleepSeconds) 0) }}
lifecycle:
  preStop:
    exec:
      command: ["sleep", "{{ int $v.preStopSleepSeconds }}"]
{{- end }}
{{- end -}}

{{/* The predictor container's volume mounts, at indentation 0. */}}
{{- define "gpu-predictor.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: shm
  mountPath: /dev/shm
{{- if .Values.auth.enabled }}
- name: auth-token
  mountPath: {{ include "gpu-predictor.authDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* The pod's volumes: scratch space, shared memory and the auth token, at indentation 0. */}}
{{- define "gpu-predictor.volumes" -}}
{{- $v := .Values -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $v.scratch.tmpSizeLimit }}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ $v.scratch.shmSizeLimit }}
{{- if $v.auth.enabled }}
- name: auth-token
  secret:
    secretName: {{ include "gpu-predictor.authSecretName" . }}
    items:
      - key: {{ $v.auth.secretKey }}
        path: token
    {{- /* 0440 with the pod's fsGroup (Standard); 0444 in Knative mode, whose pod
           security context carries no fsGroup (the volume is private to this container). */}}
    defaultMode: {{ ternary 292 288 (eq $v.deploymentMode "Knative") }}
{{- end }}
{{- end -}}
