"""The KServe-native install: a (Cluster)ServingRuntime, the model form, GPU slices, canaries.

The rendered objects are validated against the upstream CRDs in test_chart.py's matrix;
here, what they say. The last test takes the runtime's container args from the rendered
ClusterServingRuntime, fills in what KServe fills in (``{{.Name}}``, ``/mnt/models``), and
starts the real server with them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chart_support import Rendered, render, validate
from tests.support import DIGITS, ROOT, PredictorProcess, free_port

RUNTIME = {"servingRuntime": {"create": True}}
MODEL_FORM = {"predictorMode": "runtime", "model": {"storageUri": "s3://models/resnet50"}}


def runtime_of(result: Rendered) -> dict[str, Any]:
    (found,) = [o for o in result.objects if o["kind"].endswith("ServingRuntime")]
    return found


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_cluster_runtime_declares_the_format_protocols_and_kserve_args() -> None:
    runtime = runtime_of(render(RUNTIME))
    assert runtime["kind"] == "ClusterServingRuntime"
    assert "namespace" not in runtime["metadata"]
    assert runtime["metadata"]["name"] == "gpu-predictor"
    spec = runtime["spec"]
    assert spec["supportedModelFormats"] == [
        {"name": "gpu-predictor", "version": "1", "autoSelect": True, "priority": 1}
    ]
    assert spec["protocolVersions"] == ["v1", "v2", "grpc-v2"]
    assert spec["annotations"] == {
        "prometheus.kserve.io/port": "8080",
        "prometheus.kserve.io/path": "/metrics",
    }
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    assert container["args"][:2] == ["--model_name={{.Name}}", "--model_dir=/mnt/models"]
    probe = container["readinessProbe"]["httpGet"]["path"]
    assert probe == "/v2/models/{{.Name}}/ready"
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("http1", 8080),
        ("grpc", 8081),
    ]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_runtime_carries_every_setting_the_chart_container_does() -> None:
    values = {**RUNTIME, "batching": {"maxBatchSize": 16, "queueCapacity": 64}, "dtype": "float16"}
    result = render(values)
    (container,) = runtime_of(result)["spec"]["containers"]
    own = env_of(result.container)
    # The served name and model directory come from the runtime's args, not the env.
    assert env_of(container) == {
        k: v for k, v in own.items() if k not in ("PREDICTOR_MODEL_NAME", "STORAGE_URI")
    }
    assert env_of(container)["PREDICTOR_MAX_BATCH_SIZE"] == "16"


def test_namespace_runtime_in_the_release_namespace() -> None:
    values = {"servingRuntime": {"create": True, "scope": "namespace", "name": "gp"}}
    runtime = runtime_of(render(values, namespace="team-a"))
    assert (runtime["kind"], runtime["metadata"]["name"]) == ("ServingRuntime", "gp")
    assert runtime["metadata"]["namespace"] == "team-a"


def test_model_form_names_the_format_and_keeps_gpu_scheduling() -> None:
    result = render({**MODEL_FORM, "gpu": {"count": 2, "product": "NVIDIA-L4"}})
    predictor = result.predictor
    assert "containers" not in predictor
    assert "volumes" not in predictor
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "gpu-predictor", "version": "1"}
    assert model["runtime"] == "gpu-predictor"
    assert model["storageUri"] == "s3://models/resnet50"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    terms = predictor["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["NVIDIA-L4"]
    # The served name is the InferenceService's: the helm test and NOTES use it.
    assert "PREDICTOR_MODEL_NAME" not in env_of(model)
    test_env = env_of(result.test_pod["spec"]["containers"][0])
    assert test_env["MODEL_NAME"] == result.isvc["metadata"]["name"]


@pytest.mark.parametrize(
    ("resource", "selector"),
    [
        ("nvidia.com/mig-1g.10gb", {"nvidia.com/mig.strategy": "mixed"}),
        ("nvidia.com/mig-3g.40gb", {"nvidia.com/mig.strategy": "mixed"}),
        ("nvidia.com/gpu.shared", {}),
        ("nvidia.com/gpu", {}),
    ],
)
def test_gpu_slices_ask_for_their_resource(resource: str, selector: dict[str, str]) -> None:
    result = render({**RUNTIME, "gpu": {"resourceName": resource}})
    for container in (result.container, runtime_of(result)["spec"]["containers"][0]):
        limits = container["resources"]["limits"]
        assert limits[resource] == 1
        assert [k for k in limits if k.startswith("nvidia.com/")] == [resource]
    expected = {"nvidia.com/gpu.present": "true", **selector}
    assert result.predictor["nodeSelector"] == expected
    assert runtime_of(result)["spec"]["nodeSelector"] == expected
    for obj in result.objects:
        validate(obj)


@pytest.mark.parametrize(("percent", "shown"), [(10, 10), (0, 0), (None, None)])
def test_canary_traffic_in_knative_mode(percent: int | None, shown: int | None) -> None:
    """10: a canary; 0: all traffic back to the previous revision; null: all to the latest."""
    values = {"deploymentMode": "Knative", "canaryTrafficPercent": percent}
    predictor = render(values).predictor
    assert predictor.get("canaryTrafficPercent") == shown


def test_the_runtime_args_start_the_server(tmp_path: Path) -> None:
    """What KServe runs: the image's entrypoint plus the runtime's args, filled in."""
    (container,) = runtime_of(render(RUNTIME))["spec"]["containers"]
    mnt = tmp_path / "mnt" / "models"
    shutil.copytree(DIGITS, mnt, ignore=shutil.ignore_patterns("samples", "*.py"))
    http, grpc_port = free_port(), free_port()
    args = [
        a.replace("{{.Name}}", "digits-isvc")
        .replace("/mnt/models", str(mnt))
        .replace("=8080", f"={http}")
        .replace("=8081", f"={grpc_port}")
        for a in container["args"]
    ]
    entrypoint = dockerfile_entrypoint()
    assert entrypoint[:3] == ["gpu-predictor", "serve", "--model-dir"]
    image_args = [a.replace("/mnt/models", str(mnt)) for a in entrypoint[2:]]
    env = {**env_of(container), "PREDICTOR_DEVICES": "cpu"}
    # PredictorProcess passes its own --http-port first; the runtime's --http_port, later on
    # the command line, is what the server listens on.
    server = PredictorProcess([*image_args, *args], tmp_path / "server.log", env=env)
    server.http_port, server.url = http, f"http://127.0.0.1:{http}"
    try:
        server.wait_ready(["digits-isvc"])
        sample = (DIGITS / "samples" / "digit-3.png").read_bytes()
        answer = httpx.post(
            f"{server.url}/v1/models/digits-isvc:predict",
            content=sample,
            headers={"content-type": "image/png"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0][0]["label"] == "3"
    finally:
        server.stop()


def dockerfile_entrypoint() -> list[str]:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("ENTRYPOINT "):
            command: list[str] = json.loads(line.removeprefix("ENTRYPOINT "))
            return command
    raise AssertionError("the Dockerfile has no ENTRYPOINT")


def test_series_carry_the_knative_revision() -> None:
    """The PodMonitor copies Knative's revision label onto every series (canary vs previous)."""
    result = render({"metrics": {"podMonitor": {"enabled": True}}})
    (monitor,) = [o for o in result.objects if o["kind"] == "PodMonitor"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_label_serving_knative_dev_revision"],
        "targetLabel": "revision",
    } in endpoint["relabelings"]
