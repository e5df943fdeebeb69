{{/*
Cross-field checks values.schema.json cannot express. Each failure names the values
involved and what would go wrong, and stops the render before anything reaches a cluster.
*/}}
{{- define "gpu-predictor.validate" -}}
{{- $v := .Values -}}
{{- $a := $v.autoscaling -}}
{{- $mode := include "gpu-predictor.autoscalingMode" . -}}
{{- $name := include "gpu-predictor.fullname" . -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) -}}
{{- fail (printf "InferenceService name %q must start with a letter and hold only lowercase letters, digits and '-' (set fullnameOverride)" $name) -}}
{{- end -}}
{{- if lt (int $a.maxReplicas) (int $a.minReplicas) -}}
{{- fail (printf "autoscaling.maxReplicas (%d) must be >= autoscaling.minReplicas (%d)" (int $a.maxReplicas) (int $a.minReplicas)) -}}
{{- end -}}
{{- if and (eq $mode "knative") (ne $v.deploymentMode "Knative") -}}
{{- fail (printf "autoscaling.mode knative needs deploymentMode Knative (got %s); use hpa, keda or none in Standard mode" $v.deploymentMode) -}}
{{- end -}}
{{- if and (has $mode (list "hpa" "keda" "none")) (ne $v.deploymentMode "Standard") -}}
{{- fail (printf "autoscaling.mode %s needs deploymentMode Standard (got %s); Knative mode scales with autoscaling.mode knative" $mode $v.deploymentMode) -}}
{{- end -}}
{{- if and (eq (int $a.minReplicas) 0) (ne $v.deploymentMode "Knative") -}}
{{- fail "autoscaling.minReplicas 0 (scale to zero) needs deploymentMode Knative; Standard mode keeps at least one replica" -}}
{{- end -}}
{{- if eq $v.deploymentMode "Knative" -}}
{{- $cc := int $a.containerConcurrency -}}
{{- if and (gt $cc 0) (lt $cc (int $v.batching.maxBatchSize)) -}}
{{- fail (printf "autoscaling.containerConcurrency (%d) must be >= batching.maxBatchSize (%d) (or 0, unlimited): Knative admits at most containerConcurrency requests per pod, so a batch could never fill" $cc (int $v.batching.maxBatchSize)) -}}
{{- end -}}
{{- if and (gt $cc 0) (gt (int $a.knative.targetConcurrency) $cc) -}}
{{- fail (printf "autoscaling.knative.targetConcurrency (%d) must be <= autoscaling.containerConcurrency (%d)" (int $a.knative.targetConcurrency) $cc) -}}
{{- end -}}
{{- end -}}
{{- if lt (int $v.batching.queueCapacity) (int $v.batching.maxBatchSize) -}}
{{- fail (printf "batching.queueCapacity (%d) must be >= batching.maxBatchSize (%d), else a batch can never fill" (int $v.batching.queueCapacity) (int $v.batching.maxBatchSize)) -}}
{{- end -}}
{{- if ge (float64 $v.batching.maxBatchDelayMs) (float64 $v.requestTimeoutMs) -}}
{{- fail (printf "batching.maxBatchDelayMs (%v) must be below requestTimeoutMs (%d)" $v.batching.maxBatchDelayMs (int $v.requestTimeoutMs)) -}}
{{- end -}}
{{- $drain := add (int $v.preStopSleepSeconds) (int $v.drainTimeoutSeconds) -}}
{{- if and (eq $v.deploymentMode "Standard") (le (int $v.terminationGracePeriodSeconds) $drain) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above preStopSleepSeconds + drainTimeoutSeconds (%d + %d = %d), else the kubelet kills pods mid-drain" (int $v.terminationGracePeriodSeconds) (int $v.preStopSleepSeconds) (int $v.drainTimeoutSeconds) $drain) -}}
{{- end -}}
{{- range $resource := list "cpu" "memory" -}}
{{- if and (hasKey (default dict $v.resources.requests) $resource) (not (hasKey (default dict $v.resources.limits) $resource)) -}}
{{- fail (printf "resources.limits.%s must be set when resources.requests.%s is: KServe gives a container without one its default limit (1 CPU / 2Gi in a stock install), and a request above the limit makes the pod invalid" $resource $resource) -}}
{{- end -}}
{{- end -}}
{{- if and (not (kindIs "invalid" $v.canaryTrafficPercent)) (ne $v.deploymentMode "Knative") -}}
{{- fail (printf "canaryTrafficPercent (%d) needs deploymentMode Knative: KServe splits traffic between revisions only in Knative mode (Standard mode replaces pods with a rolling update)" (int $v.canaryTrafficPercent)) -}}
{{- end -}}
{{- $domain := (splitList "/" $v.gpu.resourceName | first) -}}
{{- if or (eq $domain "kubernetes.io") (hasSuffix ".kubernetes.io" $domain) -}}
{{- fail (printf "gpu.resourceName %q is not an extended resource: names in the kubernetes.io domain are Kubernetes' own (use e.g. nvidia.com/gpu, nvidia.com/mig-1g.10gb)" $v.gpu.resourceName) -}}
{{- end -}}
{{- if and $v.servingRuntime.create $v.auth.enabled (eq $v.servingRuntime.scope "cluster") -}}
{{- fail "auth.enabled with servingRuntime.scope cluster: a ClusterServingRuntime's pods run in every namespace that names it, where this release's token Secret does not exist; use servingRuntime.scope namespace" -}}
{{- end -}}
{{- if and (eq $v.predictorMode "runtime") (not $v.model.storageUri) -}}
{{- fail "predictorMode runtime needs model.storageUri: KServe's storage initializer fills /mnt/models from it, and the runtime serves what is there" -}}
{{- end -}}
{{- if and $v.auth.enabled (not $v.auth.existingSecret) (not $v.auth.token) -}}
{{- fail "auth.enabled needs auth.existingSecret (a Secret holding the token) or auth.token (the chart creates the Secret)" -}}
{{- end -}}
{{- end -}}
