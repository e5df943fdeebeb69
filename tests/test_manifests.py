"""The plain manifests for ``kubectl apply -f``: in step with the chart, and valid.

manifests/*.yaml are rendered from charts/gpu-predictor with manifests/values/*.yaml by
manifests/generate.py; a chart or values change without regenerating fails here.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from manifests import generate
from tests.chart_support import validate

MANIFESTS = generate.MANIFESTS


def documents(target: str) -> list[dict[str, Any]]:
    """The objects of a checked-in manifest."""
    text = (MANIFESTS / target).read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.mark.parametrize("target", generate.TARGETS)
def test_manifest_is_what_the_chart_renders(target: str) -> None:
    checked_in = (MANIFESTS / target).read_text()
    assert checked_in == generate.render_manifest(target), (
        f"manifests/{target} drifted from the chart; run `uv run python manifests/generate.py`"
    )


@pytest.mark.parametrize("target", generate.TARGETS)
def test_manifest_objects_validate_and_apply_as_is(target: str) -> None:
    objects = documents(target)
    assert objects
    for obj in objects:
        validate(obj)
        if obj["kind"] == "ClusterServingRuntime":
            assert "namespace" not in obj["metadata"]  # cluster-scoped
        elif target == "model-team.yaml":
            assert "namespace" not in obj["metadata"]  # applied in the team's namespace
        else:
            assert obj["metadata"]["namespace"] == generate.NAMESPACE
        annotations = obj["metadata"].get("annotations", {})
        assert "helm.sh/hook" not in annotations, "Helm-only objects do not belong here"


def test_each_manifest_holds_its_part() -> None:
    standard = {o["kind"] for o in documents("standard.yaml")}
    knative = {o["kind"] for o in documents("knative.yaml")}
    monitoring = {o["kind"] for o in documents("monitoring.yaml")}
    assert "InferenceService" in standard
    assert "InferenceService" in knative
    assert monitoring == {"PodMonitor", "PrometheusRule", "ConfigMap"}
    modes = {
        target: documents(target)[-1]["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
        for target in ("standard.yaml", "knative.yaml")
    }
    assert modes == {"standard.yaml": "Standard", "knative.yaml": "Knative"}
    # The monitoring objects watch the predictor both serving manifests deploy.
    (isvc,) = [o for o in documents("standard.yaml") if o["kind"] == "InferenceService"]
    (monitor,) = [o for o in documents("monitoring.yaml") if o["kind"] == "PodMonitor"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector["serving.kserve.io/inferenceservice"] == isvc["metadata"]["name"]


def test_the_model_team_names_the_platform_teams_runtime() -> None:
    (runtime,) = documents("runtime.yaml")
    (isvc,) = documents("model-team.yaml")
    assert runtime["kind"] == "ClusterServingRuntime"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = [f["name"] for f in runtime["spec"]["supportedModelFormats"] if f["autoSelect"]]
    assert model["modelFormat"]["name"] in formats
    assert set(isvc["spec"]["predictor"]) == {"model"}  # nothing but the model: ~12 lines
    text = (MANIFESTS / "model-team.yaml").read_text()
    assert len([line for line in text.splitlines() if not line.startswith("#")]) <= 14


def test_every_values_file_has_a_manifest() -> None:
    values_files = {f"values/{p.name}" for p in (MANIFESTS / "values").glob("*.yaml")}
    assert values_files == {values for values, _ in generate.TARGETS.values()}


def test_check_mode_reports_drift_and_regeneration_fixes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setattr(generate, "MANIFESTS", copy)
    assert generate.main(["--check"]) == 0
    values = copy / "values" / "standard.yaml"
    values.write_text(values.read_text() + "gpu:\n  count: 2\n")
    assert generate.main(["--check"]) == 1
    assert "standard.yaml" in capsys.readouterr().out
    assert generate.main([]) == 0
    assert generate.main(["--check"]) == 0
    assert "nvidia.com/gpu: 2" in (copy / "standard.yaml").read_text()
