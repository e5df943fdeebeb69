"""The Helm chart, rendered by the real Helm engine and checked as a cluster would check it.

Every case of MATRIX renders, lints clean, and every object it renders validates (core
kinds against the Kubernetes schemas, custom resources against the upstream CRDs). The
other tests assert what a user would notice: the GPU limit, the env var carrying a value,
the probe path naming the model, a clear refusal of bad values. The NOTES.txt request and
the helm test pod's script are executed against a live predictor.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import pytest
import yaml

from predictor import __version__
from predictor.config import Settings, known_fields
from predictor.config_sources import settings_from
from tests.chart_support import (
    CHART,
    CRD_FILES,
    FULLNAME,
    NAMESPACE,
    Rendered,
    crd_bytes,
    crd_sources,
    lint,
    lookup,
    render,
    schema_leaves,
    sha256,
    validate,
)
from tests.support import PredictorProcess

MONITORING = {
    "metrics": {
        "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "rules": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Inference"}},
    }
}
NETWORK_POLICY_FROM = [
    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}}},
    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
]

# The values matrix: each case renders, lints clean and validates object by object.
MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "knative": {
        "deploymentMode": "Knative",
        "autoscaling": {
            "mode": "knative",
            "minReplicas": 0,
            "maxReplicas": 6,
            "containerConcurrency": 48,
            "knative": {"targetConcurrency": 40},
        },
    },
    "keda": {
        "autoscaling": {
            "mode": "keda",
            "maxReplicas": 8,
            "keda": {"serverAddress": "http://prometheus.monitoring.svc:9090", "threshold": 48},
        }
    },
    "hpa": {"autoscaling": {"mode": "hpa", "hpa": {"cpuUtilizationPercentage": 60}}},
    "fixed-replicas": {"autoscaling": {"mode": "none", "minReplicas": 2, "maxReplicas": 2}},
    "gpu-0": {"gpu": {"count": 0}, "dtype": "float32"},
    "gpu-2": {
        "gpu": {"count": 2, "product": "NVIDIA-H100-80GB-HBM3"},
        "runtimeClassName": "nvidia",
        "model": {"name": "resnet50", "storageUri": "pvc://models/resnet50"},
        "deploymentStrategy": {"type": "Recreate"},
    },
    "monitoring": MONITORING,
    "auth": {"auth": {"enabled": True, "token": "s3cret-t0ken"}},
    "auth-existing-secret": {
        "auth": {"enabled": True, "existingSecret": "predictor-token", "secretKey": "bearer"}
    },
    "networkpolicy-pdb": {
        "networkPolicy": {"enabled": True, "from": NETWORK_POLICY_FROM},
        "podDisruptionBudget": {"enabled": True},
    },
    "cluster-runtime": {
        "servingRuntime": {"create": True},
        "predictorMode": "runtime",
        "model": {"storageUri": "s3://models/resnet50"},
    },
    "namespace-runtime-auth-mig": {
        "servingRuntime": {"create": True, "scope": "namespace", "name": "gp-runtime"},
        "predictorMode": "runtime",
        "model": {"storageUri": "pvc://models/digits"},
        "auth": {"enabled": True, "token": "t"},
        "gpu": {"resourceName": "nvidia.com/mig-1g.10gb", "product": "NVIDIA-A100-SXM4-80GB"},
    },
    "knative-canary-shared-gpu": {
        "deploymentMode": "Knative",
        "canaryTrafficPercent": 10,
        "gpu": {"resourceName": "nvidia.com/gpu.shared"},
    },
    "knative-everything": {
        "deploymentMode": "Knative",
        "gpu": {"count": 2},
        "auth": {"enabled": True, "token": "t"},
        "networkPolicy": {"enabled": True},
        "podDisruptionBudget": {"enabled": True},
        **MONITORING,
    },
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, Rendered]:
    """Every MATRIX case, rendered once."""
    return {case: render(values) for case, values in MATRIX.items()}


def chart_yaml() -> dict[str, Any]:
    """Chart.yaml."""
    data: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return data


def default_values() -> dict[str, Any]:
    """values.yaml."""
    data: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return data


def values_schema() -> dict[str, Any]:
    """values.schema.json."""
    data: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return data


# ---- the matrix: render, validate, lint -----------------------------------------------------


@pytest.mark.parametrize("case", MATRIX)
def test_every_rendered_object_validates(rendered: dict[str, Rendered], case: str) -> None:
    result = rendered[case]
    assert "InferenceService" in result.kinds()
    for obj in result.objects:
        passed = validate(obj)
        assert len(passed) >= 2, f"{obj['kind']} went through {passed} only"


@pytest.mark.parametrize("case", MATRIX)
def test_lint_finds_nothing(case: str) -> None:
    report = lint(MATRIX[case])
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [], report
    assert problems == [], report


def test_validators_catch_what_they_should(rendered: dict[str, Rendered]) -> None:
    """The validators are not rubber stamps: typical template mistakes are caught."""
    isvc = json.loads(json.dumps(rendered["defaults"].isvc))
    isvc["spec"]["predictor"]["containers"][0]["readinessprobe"] = {}  # misspelt field
    with pytest.raises(AssertionError, match="readinessprobe"):
        validate(isvc)
    isvc = json.loads(json.dumps(rendered["defaults"].isvc))
    isvc["spec"]["predictor"]["minReplicas"] = "1"  # a string where the CRD wants int32
    with pytest.raises(AssertionError, match="minReplicas"):
        validate(isvc)
    pod = json.loads(json.dumps(rendered["defaults"].test_pod))
    pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] = True
    with pytest.raises(AssertionError, match="readOnlyRootFs"):
        validate(pod)
    pod = json.loads(json.dumps(rendered["defaults"].test_pod))
    pod["metadata"]["labels"]["app.kubernetes.io/version"] = "1.0+build"  # invalid value
    with pytest.raises(AssertionError, match="label value"):
        validate(pod)


def test_vendored_crds_match_their_sources() -> None:
    sources = crd_sources()
    for filename in CRD_FILES.values():
        upstream = filename.removesuffix(".gz")
        entry = sources[upstream]
        data = crd_bytes(filename)
        assert len(data) == int(entry["bytes"]), upstream
        assert sha256(data) == entry["sha256"], f"{filename} differs from {entry['repo']}"


# ---- defaults -------------------------------------------------------------------------------


def test_chart_app_version_is_the_package_version() -> None:
    assert str(chart_yaml()["appVersion"]) == __version__


def test_defaults_render_a_gpu_inferenceservice(rendered: dict[str, Rendered]) -> None:
    r = rendered["defaults"]
    assert r.kinds() == {"InferenceService", "Pod"}, "extra-cluster features must be off"
    isvc = r.isvc
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["metadata"]["name"] == FULLNAME
    assert isvc["metadata"]["namespace"] == NAMESPACE
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert r.container["name"] == "kserve-container"
    assert r.container["image"] == f"ghcr.io/gpu-predictor/gpu-predictor:{__version__}"
    assert r.container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert r.predictor["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in r.predictor[
        "tolerations"
    ]
    assert r.env["PREDICTOR_DEVICES"] == "auto"
    assert "STORAGE_URI" not in r.env, "no storageUri: the image's baked-in demo model"


def test_env_vars_carry_the_values_and_parse_as_settings() -> None:
    r = render(
        {
            "model": {"name": "resnet50"},
            "batching": {"maxBatchSize": 16, "maxBatchDelayMs": 2.5, "queueCapacity": 1_000_000},
            "dtype": "bfloat16",
            "requestTimeoutMs": 1_500_000,
            "drainTimeoutSeconds": 40,
            "terminationGracePeriodSeconds": 60,
            "decodeWorkers": 8,
            "logLevel": "DEBUG",
            "grpc": {"enabled": False},
            "modelControl": "explicit",
            "docs": False,
            "limits": {
                "maxBodyBytes": 8_000_000,
                "maxImagePixels": 20_000_000,
                "headerTimeoutSeconds": 7.5,
                "bodyTimeoutSeconds": 12,
                "keepAliveTimeoutSeconds": 75,
                "maxHeaderBytes": 32768,
                "maxHeaders": 50,
                "maxConnections": 300,
                "maxInflightBytes": 3_000_000_000,
                "grpcMaxConcurrentStreams": 64,
            },
        }
    )
    env = r.env
    assert env["PREDICTOR_MODEL_NAME"] == "resnet50"
    assert env["PREDICTOR_MAX_BATCH_SIZE"] == "16"
    assert env["PREDICTOR_MAX_BATCH_DELAY_MS"] == "2.5"
    assert env["PREDICTOR_QUEUE_CAPACITY"] == "1000000"  # not 1e+06
    assert env["PREDICTOR_REQUEST_TIMEOUT_MS"] == "1500000"
    assert env["PREDICTOR_DTYPE"] == "bfloat16"
    assert env["PREDICTOR_DRAIN_TIMEOUT_S"] == "40"
    assert env["PREDICTOR_DECODE_WORKERS"] == "8"
    assert env["PREDICTOR_LOG_LEVEL"] == "DEBUG"
    assert env["PREDICTOR_ENABLE_GRPC"] == "false"
    assert env["PREDICTOR_MODEL_CONTROL"] == "explicit"
    assert env["PREDICTOR_DOCS"] == "false"
    assert [p["containerPort"] for p in r.container["ports"]] == [8080]
    # Every PREDICTOR_* variable names a real setting and parses as the predictor would.
    fields = {f"PREDICTOR_{name.upper()}" for name in known_fields()}
    predictor_env = {k: v for k, v in env.items() if k.startswith("PREDICTOR_")}
    assert set(predictor_env) <= fields
    settings = settings_from({}, {**predictor_env, "PREDICTOR_MODEL_DIR": str(CHART.parent)})
    assert isinstance(settings, Settings)
    assert (settings.max_batch_size, settings.queue_capacity) == (16, 1_000_000)
    assert (settings.dtype, settings.max_batch_delay_ms) == ("bfloat16", 2.5)
    assert (settings.model_control, settings.docs) == ("explicit", False)
    assert (settings.header_timeout_s, settings.body_timeout_s) == (7.5, 12)
    assert (settings.max_header_bytes, settings.max_headers) == (32768, 50)
    assert (settings.max_connections, settings.max_inflight_bytes) == (300, 3_000_000_000)
    assert (settings.max_body_bytes, settings.max_image_pixels) == (8_000_000, 20_000_000)
    assert settings.grpc_max_concurrent_streams == 64
    assert settings.keep_alive_timeout_s == 75
    defaults = render({}).env
    assert (defaults["PREDICTOR_MODEL_CONTROL"], defaults["PREDICTOR_DOCS"]) == ("none", "true")


def test_probes_name_the_model_and_outlast_startup() -> None:
    r = render({"model": {"name": "resnet50"}, "probes": {"startup": {"failureThreshold": 120}}})
    c = r.container
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/models/resnet50/ready", "port": 8080}
    assert c["startupProbe"]["httpGet"] == {"path": "/v2/models/resnet50/ready", "port": 8080}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 600
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "httpHeaders" not in c[probe]["httpGet"], "probes stay unauthenticated"
    default = render().container["startupProbe"]
    assert default["periodSeconds"] * default["failureThreshold"] >= 300, "load + warm-up"


def test_storage_uri_reaches_kserve() -> None:
    r = render({"model": {"storageUri": "s3://models/resnet50", "name": "resnet50"}})
    assert r.env["STORAGE_URI"] == "s3://models/resnet50"
    assert r.env["PREDICTOR_MODEL_NAME"] == "resnet50"


def test_pod_is_hardened(rendered: dict[str, Rendered]) -> None:
    for case in ("defaults", "knative"):
        r = rendered[case]
        sc = r.container["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["runAsUser"] != 0
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        # The only writable paths under the read-only root are emptyDirs.
        mounts = {m["mountPath"]: m["name"] for m in r.container["volumeMounts"]}
        volumes = {v["name"]: v for v in r.predictor["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    pod_sc = rendered["defaults"].predictor["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    test_sc = rendered["defaults"].test_pod["spec"]["containers"][0]["securityContext"]
    assert test_sc["readOnlyRootFilesystem"] is True
    assert test_sc["capabilities"]["drop"] == ["ALL"]


# ---- GPU scheduling -------------------------------------------------------------------------


def test_cpu_only_predictor_has_no_gpu_scheduling(rendered: dict[str, Rendered]) -> None:
    r = rendered["gpu-0"]
    assert "nvidia.com/gpu" not in r.container["resources"].get("limits", {})
    assert "nodeSelector" not in r.predictor
    assert "tolerations" not in r.predictor
    assert "affinity" not in r.predictor
    assert r.env["PREDICTOR_DEVICES"] == "cpu"
    # Extra scheduling values still apply to a CPU-only predictor.
    extra = render(
        {
            "gpu": {"count": 0},
            "nodeSelector": {"pool": "cpu"},
            "tolerations": [{"key": "spot", "operator": "Exists"}],
        }
    )
    assert extra.predictor["nodeSelector"] == {"pool": "cpu"}
    assert extra.predictor["tolerations"] == [{"key": "spot", "operator": "Exists"}]


def test_two_gpus_on_a_given_product(rendered: dict[str, Rendered]) -> None:
    r = rendered["gpu-2"]
    assert r.container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert r.container["resources"]["limits"]["memory"] == "8Gi", "GPU limit merges, not replaces"
    affinity = r.predictor["affinity"]["nodeAffinity"]
    terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    (expression,) = terms["nodeSelectorTerms"][0]["matchExpressions"]
    assert expression == {
        "key": "nvidia.com/gpu.product",
        "operator": "In",
        "values": ["NVIDIA-H100-80GB-HBM3"],
    }
    assert r.predictor["runtimeClassName"] == "nvidia"
    assert r.predictor["deploymentStrategy"] == {"type": "Recreate"}
    assert "affinity" not in rendered["defaults"].predictor, "no product: any GPU"
    assert "runtimeClassName" not in rendered["defaults"].predictor


def test_extra_node_selector_merges_with_the_gpu_one() -> None:
    r = render({"nodeSelector": {"pool": "inference"}})
    assert r.predictor["nodeSelector"] == {"nvidia.com/gpu.present": "true", "pool": "inference"}


# ---- deployment modes and autoscaling -------------------------------------------------------


def test_knative_mode_scales_on_concurrency(rendered: dict[str, Rendered]) -> None:
    r = rendered["knative"]
    annotations = r.isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Knative"
    assert "serving.kserve.io/autoscalerClass" not in annotations
    p = r.predictor
    assert (p["minReplicas"], p["maxReplicas"]) == (0, 6)
    assert p["containerConcurrency"] == 48
    assert (p["scaleMetric"], p["scaleTarget"]) == ("concurrency", 40)
    # Knative refuses these pod fields; its queue-proxy owns draining.
    assert "lifecycle" not in r.container
    assert "terminationGracePeriodSeconds" not in p
    assert "securityContext" not in p
    assert [port["containerPort"] for port in r.container["ports"]] == [8080], "one port"
    deadline = int(p["annotations"]["serving.knative.dev/progress-deadline"].removesuffix("s"))
    startup = r.container["startupProbe"]
    assert deadline > startup["periodSeconds"] * startup["failureThreshold"]


def test_auto_mode_follows_the_deployment_mode(rendered: dict[str, Rendered]) -> None:
    assert rendered["defaults"].isvc["metadata"]["annotations"][
        "serving.kserve.io/autoscalerClass"
    ] == ("hpa")
    knative = render({"deploymentMode": "Knative"})
    assert knative.predictor["containerConcurrency"] == 64
    assert "scaleMetric" not in knative.predictor, "targetConcurrency 0: Knative's default"


def test_hpa_mode_scales_on_cpu(rendered: dict[str, Rendered]) -> None:
    r = rendered["hpa"]
    assert r.isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    assert (r.predictor["scaleMetric"], r.predictor["scaleTarget"]) == ("cpu", 60)
    assert "containerConcurrency" not in r.predictor


def test_keda_mode_scales_on_the_predictors_own_metrics(rendered: dict[str, Rendered]) -> None:
    r = rendered["keda"]
    assert r.isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    assert r.predictor["maxReplicas"] == 8
    (metric,) = r.predictor["autoScaling"]["metrics"]
    assert metric["type"] == "External"
    source = metric["external"]["metric"]
    assert source["backend"] == "prometheus"
    assert source["serverAddress"] == "http://prometheus.monitoring.svc:9090"
    query = source["query"]
    for series in ("predictor_queue_depth", "predictor_inflight_requests"):
        assert re.search(series + r'\{[^}]*namespace="ml"', query), query
        assert re.search(series + r'\{[^}]*model="digits"', query), query
    assert metric["external"]["target"] == {"type": "Value", "value": "48"}
    query = 'sum(x{ns="{{ .Release.Namespace }}"})'
    custom = render({"autoscaling": {"mode": "keda", "keda": {"query": query}}})
    assert custom.predictor["autoScaling"]["metrics"][0]["external"]["metric"]["query"] == (
        'sum(x{ns="ml"})'
    )


def test_fixed_replicas(rendered: dict[str, Rendered]) -> None:
    r = rendered["fixed-replicas"]
    assert r.isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "none"
    assert (r.predictor["minReplicas"], r.predictor["maxReplicas"]) == (2, 2)


# ---- drain ----------------------------------------------------------------------------------


def test_drain_is_covered_by_the_grace_period(rendered: dict[str, Rendered]) -> None:
    r = rendered["defaults"]
    drain = int(r.env["PREDICTOR_DRAIN_TIMEOUT_S"])
    assert drain == 25
    command = r.container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    sleep = int(command[1])
    assert sleep > 0
    assert r.predictor["terminationGracePeriodSeconds"] > sleep + drain
    no_sleep = render({"preStopSleepSeconds": 0})
    assert "lifecycle" not in no_sleep.container


# ---- auth -----------------------------------------------------------------------------------


def _token_mount(r: Rendered, container: dict[str, Any], volumes: list[dict[str, Any]]) -> Any:
    """The Secret volume holding the token file that the container's env var names."""
    env = {e["name"]: e.get("value") for e in container["env"]}
    token_file = env.get("PREDICTOR_AUTH_TOKEN_FILE") or env["TOKEN_FILE"]
    directory, filename = token_file.rsplit("/", 1)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    assert mount["readOnly"] is True
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    (item,) = volume["secret"]["items"]
    assert item["path"] == filename
    return volume["secret"]["secretName"], item["key"]


def test_auth_token_is_mounted_from_the_chart_secret(rendered: dict[str, Rendered]) -> None:
    r = rendered["auth"]
    secret = r.one("Secret")
    name, key = _token_mount(r, r.container, r.predictor["volumes"])
    assert name == secret["metadata"]["name"]
    assert base64.b64decode(secret["data"][key]).decode() == "s3cret-t0ken"
    pod = r.test_pod
    assert _token_mount(r, pod["spec"]["containers"][0], pod["spec"]["volumes"]) == (name, key)
    # The token file lives outside every writable path.
    token_file = r.env["PREDICTOR_AUTH_TOKEN_FILE"]
    assert not token_file.startswith("/tmp/")
    # A new token rolls the pods.
    checksum = r.predictor["annotations"]["checksum/auth-token"]
    rolled = render({"auth": {"enabled": True, "token": "another"}})
    assert rolled.predictor["annotations"]["checksum/auth-token"] != checksum


def test_auth_with_an_existing_secret(rendered: dict[str, Rendered]) -> None:
    r = rendered["auth-existing-secret"]
    assert "Secret" not in r.kinds()
    assert _token_mount(r, r.container, r.predictor["volumes"]) == ("predictor-token", "bearer")
    assert "checksum/auth-token" not in r.predictor.get("annotations", {})


def test_auth_off_mounts_no_token(rendered: dict[str, Rendered]) -> None:
    r = rendered["defaults"]
    assert "PREDICTOR_AUTH_TOKEN_FILE" not in r.env
    assert all("secret" not in v for v in r.predictor["volumes"])


# ---- network policy, disruption budget ------------------------------------------------------


def _pod_labels_kserve_sets(r: Rendered) -> dict[str, str]:
    """Labels KServe puts on predictor pods (its own plus spec.predictor.labels)."""
    return {
        "serving.kserve.io/inferenceservice": r.isvc["metadata"]["name"],
        "component": "predictor",
        **r.predictor["labels"],
    }


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_network_policy_admits_only_the_serving_ports(rendered: dict[str, Rendered]) -> None:
    r = rendered["networkpolicy-pdb"]
    policy = r.one("NetworkPolicy")
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], _pod_labels_kserve_sets(r))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert sorted(p["port"] for p in rule["ports"]) == [8080, 8081]
    peers = rule["from"]
    assert peers[:2] == NETWORK_POLICY_FROM
    # The chart's helm test pod stays admitted.
    test_labels = r.test_pod["metadata"]["labels"]
    selectors = [p.get("podSelector", {}).get("matchLabels", {}) for p in peers]
    assert any(_selects(selector, test_labels) for selector in selectors)
    knative = rendered["knative-everything"].one("NetworkPolicy")
    (knative_rule,) = knative["spec"]["ingress"]
    assert {8080, 8081, 8012} <= {p["port"] for p in knative_rule["ports"]}, "queue-proxy"
    assert "from" not in knative_rule, "no sources given: any source, serving ports only"


def test_pod_disruption_budget(rendered: dict[str, Rendered]) -> None:
    r = rendered["networkpolicy-pdb"]
    pdb = r.one("PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], _pod_labels_kserve_sets(r))
    assert pdb["spec"]["maxUnavailable"] == 1


# ---- monitoring -----------------------------------------------------------------------------


def test_monitoring_objects(rendered: dict[str, Rendered]) -> None:
    r = rendered["monitoring"]
    monitor = r.one("PodMonitor")
    assert _selects(monitor["spec"]["selector"]["matchLabels"], _pod_labels_kserve_sets(r))
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["portNumber"], endpoint["path"]) == (8080, "/metrics")
    assert endpoint["portNumber"] in [p["containerPort"] for p in r.container["ports"]]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    rule = r.one("PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    groups = rule["spec"]["groups"]
    alerts = [a for g in groups for a in g["rules"]]
    assert alerts
    assert all(a["alert"] and a["expr"] for a in alerts)
    assert any(a["alert"].endswith("Down") for a in alerts)
    # Alerts that select a scrape job select the one this PodMonitor scrapes into.
    jobs = {job for a in alerts for job in re.findall(r'job="([^"]+)"', a["expr"])}
    assert jobs <= {f"{NAMESPACE}/{monitor['metadata']['name']}"}, jobs

    dashboard = r.one("ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"]["grafana_folder"] == "Inference"
    (content,) = dashboard["data"].values()
    parsed = json.loads(content)
    assert parsed == json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    relabelled = render(
        {"metrics": {"dashboard": {"enabled": True, "label": "dashboards", "labelValue": "gpu"}}}
    ).one("ConfigMap")
    assert relabelled["metadata"]["labels"]["dashboards"] == "gpu"
    assert "grafana_dashboard" not in relabelled["metadata"]["labels"]


# ---- refusals -------------------------------------------------------------------------------

REFUSED: list[tuple[str, dict[str, Any], type[helm.HelmError], str]] = [
    (
        "wrong enum",
        {"deploymentMode": "Serverless"},
        helm.HelmValuesError,
        "at '/deploymentMode': value must be one of 'Standard', 'Knative'",
    ),
    ("wrong dtype", {"dtype": "float8"}, helm.HelmValuesError, "at '/dtype': value must be one of"),
    (
        "wrong autoscaling mode",
        {"autoscaling": {"mode": "vpa"}},
        helm.HelmValuesError,
        "at '/autoscaling/mode': value must be one of",
    ),
    (
        "negative replicas",
        {"autoscaling": {"minReplicas": -1}},
        helm.HelmValuesError,
        "at '/autoscaling/minReplicas': minimum: got -1, want 0",
    ),
    (
        "negative GPU count",
        {"gpu": {"count": -1}},
        helm.HelmValuesError,
        "at '/gpu/count': minimum: got -1, want 0",
    ),
    (
        "fractional GPU count",
        {"gpu": {"count": 0.5}},
        helm.HelmValuesError,
        "at '/gpu/count': got number, want integer",
    ),
    (
        "unknown top-level key",
        {"replicaCount": 2},
        helm.HelmValuesError,
        "additional properties 'replicaCount' not allowed",
    ),
    (
        "unknown nested key",
        {"gpu": {"type": "a100"}},
        helm.HelmValuesError,
        "at '/gpu': additional properties 'type' not allowed",
    ),
    (
        "unknown threshold",
        {"metrics": {"rules": {"thresholds": {"bogusThreshold": 1}}}},
        helm.HelmValuesError,
        "at '/metrics/rules/thresholds': additional properties 'bogusThreshold' not allowed",
    ),
    (
        "bad model name",
        {"model": {"name": "my model"}},
        helm.HelmValuesError,
        "at '/model/name': 'my model' does not match pattern",
    ),
    (
        "string batch size",
        {"batching": {"maxBatchSize": "32"}},
        helm.HelmValuesError,
        "at '/batching/maxBatchSize': got string, want integer",
    ),
    (
        "max below min replicas",
        {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}},
        helm.HelmRenderError,
        r"autoscaling.maxReplicas \(2\) must be >= autoscaling.minReplicas \(3\)",
    ),
    (
        "containerConcurrency below maxBatchSize",
        {"deploymentMode": "Knative", "autoscaling": {"containerConcurrency": 16}},
        helm.HelmRenderError,
        r"containerConcurrency \(16\) must be >= batching.maxBatchSize \(32\)",
    ),
    (
        "knative autoscaling in Standard mode",
        {"autoscaling": {"mode": "knative"}},
        helm.HelmRenderError,
        "autoscaling.mode knative needs deploymentMode Knative",
    ),
    (
        "keda in Knative mode",
        {"deploymentMode": "Knative", "autoscaling": {"mode": "keda"}},
        helm.HelmRenderError,
        "autoscaling.mode keda needs deploymentMode Standard",
    ),
    (
        "scale to zero in Standard mode",
        {"autoscaling": {"minReplicas": 0}},
        helm.HelmRenderError,
        "minReplicas 0 .* needs deploymentMode Knative",
    ),
    (
        "target above the hard limit",
        {"deploymentMode": "Knative", "autoscaling": {"knative": {"targetConcurrency": 100}}},
        helm.HelmRenderError,
        r"autoscaling.knative.targetConcurrency \(100\) must be <= .*containerConcurrency \(64\)",
    ),
    (
        "batch window not below the request deadline",
        {"requestTimeoutMs": 5},
        helm.HelmRenderError,
        r"batching.maxBatchDelayMs \(5\) must be below requestTimeoutMs \(5\)",
    ),
    (
        "grace period not above preStop + drain",
        {"drainTimeoutSeconds": 60},
        helm.HelmRenderError,
        r"terminationGracePeriodSeconds \(40\) must be above .* \(5 \+ 60 = 65\)",
    ),
    (
        "queue smaller than a batch",
        {"batching": {"queueCapacity": 8}},
        helm.HelmRenderError,
        r"queueCapacity \(8\) must be >= batching.maxBatchSize \(32\)",
    ),
    (
        "CPU request without a limit",
        {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": None}}},
        helm.HelmRenderError,
        "resources.limits.cpu must be set when resources.requests.cpu is",
    ),
    (
        "auth without a token",
        {"auth": {"enabled": True}},
        helm.HelmRenderError,
        "auth.enabled needs auth.existingSecret .* or auth.token",
    ),
    (
        "unknown model control",
        {"modelControl": "poll"},
        helm.HelmValuesError,
        "at '/modelControl': value must be one of 'none', 'explicit'",
    ),
    (
        "canary in Standard mode",
        {"canaryTrafficPercent": 20},
        helm.HelmRenderError,
        r"canaryTrafficPercent \(20\) needs deploymentMode Knative: KServe splits traffic",
    ),
    (
        "canary of 100",
        {"deploymentMode": "Knative", "canaryTrafficPercent": 100},
        helm.HelmValuesError,
        "at '/canaryTrafficPercent': maximum: got 100, want 99",
    ),
    (
        "GPU resource that is not an extended resource",
        {"gpu": {"resourceName": "gpu"}},
        helm.HelmValuesError,
        "at '/gpu/resourceName': 'gpu' does not match pattern",
    ),
    (
        "GPU resource in the kubernetes.io domain",
        {"gpu": {"resourceName": "kubernetes.io/gpu"}},
        helm.HelmRenderError,
        'gpu.resourceName "kubernetes.io/gpu" is not an extended resource',
    ),
    (
        "unknown predictor mode",
        {"predictorMode": "sidecar"},
        helm.HelmValuesError,
        "at '/predictorMode': value must be one of 'container', 'runtime'",
    ),
    (
        "runtime mode without a storage URI",
        {"predictorMode": "runtime"},
        helm.HelmRenderError,
        "predictorMode runtime needs model.storageUri",
    ),
    (
        "auth on a cluster-wide runtime",
        {"servingRuntime": {"create": True}, "auth": {"enabled": True, "token": "t"}},
        helm.HelmRenderError,
        "auth.enabled with servingRuntime.scope cluster",
    ),
    (
        "runtime scope",
        {"servingRuntime": {"create": True, "scope": "global"}},
        helm.HelmValuesError,
        "at '/servingRuntime/scope': value must be one of 'cluster', 'namespace'",
    ),
    (
        "release name starting with a digit",
        {"fullnameOverride": "9lives"},
        helm.HelmValuesError,
        "at '/fullnameOverride': '9lives' does not match pattern",
    ),
]


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [pytest.param(v, e, m, id=case) for case, v, e, m in REFUSED],
)
def test_bad_values_are_refused_with_a_clear_message(
    values: dict[str, Any], error: type[helm.HelmError], message: str
) -> None:
    with pytest.raises(error, match=message):
        render(values)


def test_long_image_tags_still_make_valid_labels() -> None:
    tag = "2026.11.21-" + "x" * 51 + "-.rc1"
    r = render({"image": {"tag": tag}})
    assert r.container["image"].endswith(":" + tag)
    for obj in r.objects:
        validate(obj)


def test_release_names_kserve_cannot_use_are_refused() -> None:
    with pytest.raises(
        helm.HelmRenderError, match='"9lives-gpu-predictor" must start with a letter'
    ):
        render(release="9lives")


def test_knative_grace_period_is_knatives_business() -> None:
    """In Knative mode the queue-proxy drains; the Standard-mode grace rule does not apply."""
    r = render({"deploymentMode": "Knative", "drainTimeoutSeconds": 60})
    assert r.env["PREDICTOR_DRAIN_TIMEOUT_S"] == "60"


# ---- documentation of the values ------------------------------------------------------------


def test_every_value_is_documented_where_it_is_defined() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for path in schema_leaves(values_schema()):
        line = _line_of(lines, path)
        above = lines[line - 1].strip() if line else ""
        if not above.startswith("#"):
            undocumented.append(path)
    assert undocumented == [], f"values without a comment above them: {undocumented}"


def _line_of(lines: list[str], dotted: str) -> int:
    """Index of the line defining ``dotted`` in values.yaml (nested by indentation)."""
    start, indent = 0, 0
    index = -1
    for part in dotted.split("."):
        pattern = re.compile(rf"^{' ' * indent}{re.escape(part)}:")
        index = next(i for i in range(start, len(lines)) if pattern.match(lines[i]))
        start, indent = index + 1, indent + 2
    return index


def test_readme_lists_every_value_with_its_default() -> None:
    readme = (CHART / "README.md").read_text()
    rows = {}
    for match in re.finditer(r"^\| `([^`]+)` \| (.+?) \| `([^`]*)` \|", readme, re.MULTILINE):
        rows[match.group(1)] = match.group(3)
    leaves = set(schema_leaves(values_schema()))
    assert set(rows) == leaves, (
        f"missing from README: {sorted(leaves - set(rows))}; "
        f"not values: {sorted(set(rows) - leaves)}"
    )
    defaults = default_values()
    for path, shown in rows.items():
        assert json.loads(shown) == lookup(defaults, path), f"README default of {path}"


def test_schema_closes_every_chart_object() -> None:
    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("properties"):
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
            for name, sub in node["properties"].items():
                walk(sub, f"{path}.{name}")

    walk(values_schema(), "values")


# ---- NOTES and helm test, executed ----------------------------------------------------------


def test_notes_give_the_real_port_and_a_working_curl(digits_server: PredictorProcess) -> None:
    notes = render().notes
    assert "port-forward" in notes
    assert "8080:8080" in notes
    assert f"inferenceservice/{FULLNAME}" in notes
    assert "helm test demo -n ml" in notes
    (body,) = re.findall(r"-d '(\{.*\})'", notes)
    ready = re.search(r"curl -s http://127\.0\.0\.1:8080(/v2/models/digits/ready)", notes)
    predict = re.search(r"curl -s -X POST http://127\.0\.0\.1:8080(\S+)", notes)
    assert ready
    assert predict
    with httpx.Client(base_url=digits_server.url, timeout=30) as client:
        assert client.get(ready.group(1)).status_code == 200
        response = client.post(
            predict.group(1), content=body, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 200, response.text
    (top,) = response.json()["predictions"]
    assert top[0]["label"] == "7", "the chart's sample is a handwritten 7"


def test_notes_show_the_repository_api_only_when_it_is_served() -> None:
    assert "/v2/repository" not in render().notes
    notes = render({"modelControl": "explicit"}).notes
    assert "curl -s -X POST http://127.0.0.1:8080/v2/repository/index" in notes
    with_auth = render(
        {"modelControl": "explicit", "auth": {"enabled": True, "existingSecret": "tok"}}
    ).notes
    assert (
        'curl -s -X POST -H "Authorization: Bearer $TOKEN" '
        "http://127.0.0.1:8080/v2/repository/models/<name>/load"
    ) in with_auth


def test_notes_with_auth_fetch_the_token() -> None:
    notes = render({"auth": {"enabled": True, "existingSecret": "tok", "secretKey": "a.b"}}).notes
    assert "get secret tok -o jsonpath='{.data.a\\.b}'" in notes
    assert '-H "Authorization: Bearer $TOKEN"' in notes


RunTestPod = Callable[[Rendered, str, Path | None], subprocess.CompletedProcess[str]]


@pytest.fixture
def run_test_pod(tmp_path: Path) -> RunTestPod:
    """Run the helm test pod's command here, against a predictor on loopback."""
    if not (shutil.which("curl") and shutil.which("sh")):
        pytest.fail("sh and curl are needed to run the helm test pod's script")

    def run(r: Rendered, url: str, token: Path | None) -> subprocess.CompletedProcess[str]:
        (container,) = r.test_pod["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["PREDICTOR_URL"] == f"http://{FULLNAME}-predictor.{NAMESPACE}.svc"
        env["PREDICTOR_URL"] = url
        env["READY_TIMEOUT_S"] = str(min(int(env["READY_TIMEOUT_S"]), 20))
        if "TOKEN_FILE" in env:
            assert token is not None
            env["TOKEN_FILE"] = str(token)
        return subprocess.run(
            container["command"],
            env={"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path), **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


def test_helm_test_pod_passes_against_a_live_predictor(
    digits_server: PredictorProcess, run_test_pod: RunTestPod
) -> None:
    result = run_test_pod(render(), digits_server.url, None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout
    assert '"label":"7"' in result.stdout.replace(" ", "")


def test_helm_test_pod_fails_when_the_model_is_missing(
    digits_server: PredictorProcess, run_test_pod: RunTestPod
) -> None:
    r = render({"model": {"name": "resnet50"}, "helmTest": {"readyTimeoutSeconds": 1}})
    result = run_test_pod(r, digits_server.url, None)
    assert result.returncode != 0
    assert "not ready" in result.stderr


@pytest.mark.slow
def test_helm_test_pod_sends_the_token_when_auth_is_on(
    start_server: Callable[..., PredictorProcess], run_test_pod: RunTestPod, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-t0ken\n")
    server = start_server(
        ["--model-dir", str(CHART.parent.parent / "models" / "digits")],
        ["digits"],
        env={"PREDICTOR_AUTH_TOKEN_FILE": str(token)},
    )
    with_auth = run_test_pod(render(MATRIX["auth"]), server.url, token)
    assert with_auth.returncode == 0, with_auth.stdout + with_auth.stderr
    without = run_test_pod(render(), server.url, None)
    assert without.returncode != 0, without.stdout
    assert "-> 401" in without.stdout, without.stdout


# ---- docs/deploying.md ----------------------------------------------------------------------

DEPLOYING = CHART.parent.parent / "docs" / "deploying.md"


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def test_deploying_guide_helm_commands_render() -> None:
    text = DEPLOYING.read_text()
    commands = []
    for block in _code_blocks(text, "sh"):
        for command in block.replace("\\\n", " ").splitlines():
            if command.startswith("helm ") and "charts/gpu-predictor" in command:
                commands.append(shlex.split(command))
    assert len(commands) >= 4, commands
    names = set()
    for words in commands:
        positional = [w for w in words[2:] if not w.startswith("-")]
        release = positional[0]
        namespace = words[words.index("-n") + 1]
        values: dict[str, Any] = {}
        for index, word in enumerate(words):
            if word == "--set":
                values = _deep_merge(values, helm.parse_set_string(words[index + 1]))
        r = render(values, release=release, namespace=namespace)
        name = r.isvc["metadata"]["name"]
        names.add(f"-n {namespace} wait --for=condition=Ready inferenceservice/{name}")
    # The guide waits on the InferenceService its own helm commands create.
    assert any(name in text for name in names), names


def test_deploying_guide_values_snippets_render() -> None:
    top_level = set(values_schema()["properties"])
    snippets = [yaml.safe_load(block) for block in _code_blocks(DEPLOYING.read_text(), "yaml")]
    chart_snippets = [s for s in snippets if isinstance(s, dict) and set(s) <= top_level]
    assert len(chart_snippets) >= 2
    for snippet in chart_snippets:
        render(snippet)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
