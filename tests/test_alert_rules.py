"""Alert rules: chart template and plain file in step, promtool check and unit tests, runbooks.

The source is charts/gpu-predictor/files/alert-rules.yaml, rendered by the real Helm engine;
deploy/prometheus/alert-rules.yaml is generated from it (scripts/render_alert_rules.py) and
deploy/prometheus/alert-rules.test.yaml holds the promtool unit tests.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from scripts import render_alert_rules
from tests.prometheus_support import PLAIN_RULES, RULE_TESTS, alerts, promtool, rule_groups
from tests.support import ROOT

ALERTS = {
    "GpuPredictorDown",
    "GpuPredictorHighErrorRatio",
    "GpuPredictorHighLatencyP99",
    "GpuPredictorQueueSaturated",
    "GpuPredictorGpuMemoryNearFull",
    "GpuPredictorTinyBatches",
}
DOCS = ROOT / "docs" / "observability.md"


def test_plain_rules_file_is_rendered_from_the_chart() -> None:
    """Fails when the template or the chart's default thresholds change without a re-render."""
    rendered = render_alert_rules.plain_text(render_alert_rules.render_groups())
    assert PLAIN_RULES.read_text(encoding="utf-8") == rendered, (
        "deploy/prometheus/alert-rules.yaml is stale: run "
        "`uv run python scripts/render_alert_rules.py`"
    )


def test_the_issues_alerts_with_summary_description_and_runbook() -> None:
    rules = alerts(rule_groups())
    assert set(rules) == ALERTS
    for name, rule in rules.items():
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert annotations["runbook_url"].endswith(f"docs/observability.md#{name.lower()}")
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert re.fullmatch(r"\d+m", rule["for"]), name
        assert 'job="gpu-predictor"' in rule["expr"], name


def test_every_runbook_anchor_exists_in_the_docs() -> None:
    headings = re.findall(r"^#{2,4} (.+)$", DOCS.read_text(encoding="utf-8"), re.MULTILINE)
    # GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes
    anchors = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
    for name, rule in alerts(rule_groups()).items():
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor in anchors, f"{name}: no '## {name}' section in docs/observability.md"


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(PLAIN_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_cover_every_alert_firing_and_silent() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    assert tests["rule_files"] == [PLAIN_RULES.name]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
            for alert in check["exp_alerts"]:
                # annotations are checked in full: the templates render as documented
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}
    assert fires == ALERTS
    assert silent == ALERTS


def test_unit_tests_fail_when_the_thresholds_move(tmp_path: Path) -> None:
    """The unit tests pin the thresholds: rules rendered with others must fail them."""
    moved = {
        "errorRatio": 0.2,
        "latencyP99Seconds": 5,
        "queueFullRatio": 0.1,
        "gpuMemoryUsedRatio": 0.99,
        "tinyBatchMeanSize": 1.01,
        "tinyBatchBusyRatio": 0.9,
    }
    groups = render_alert_rules.render_groups(moved)
    (tmp_path / PLAIN_RULES.name).write_text(render_alert_rules.plain_text(groups))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = promtool("test", "rules", str(tmp_path / RULE_TESTS.name))
    assert result.returncode != 0
    for name in ALERTS - {"GpuPredictorDown"}:  # the only alert without a threshold
        assert f"alertname: {name}," in result.stdout + result.stderr, name


def test_chart_default_selector_is_the_podmonitor_job() -> None:
    groups = render_alert_rules.render_groups(selector="")
    for name, rule in alerts(groups).items():
        assert 'namespace="default", job="default/gpu-predictor"' in rule["expr"], name


def test_chart_thresholds_reach_the_expressions() -> None:
    thresholds = {"errorRatio": 0.125, "latencyP99Seconds": 0.75, "gpuMemoryUsedRatio": 0.875}
    rules = alerts(render_alert_rules.render_groups(thresholds))
    assert rules["GpuPredictorHighErrorRatio"]["expr"].rstrip().endswith("> 0.125")
    assert rules["GpuPredictorHighLatencyP99"]["expr"].rstrip().endswith("> 0.75")
    assert rules["GpuPredictorGpuMemoryNearFull"]["expr"].rstrip().endswith("> 0.875")
    assert (
        "above 0.875 of the installed memory"
        in (rules["GpuPredictorGpuMemoryNearFull"]["annotations"]["description"])
    )


@pytest.mark.parametrize(
    "thresholds",
    [
        pytest.param({"errorRatio": 0}, id="zero-error-ratio"),
        pytest.param({"errorRatio": 1.5}, id="ratio-above-1"),
        pytest.param({"latencyP99Seconds": -1}, id="negative-latency"),
        pytest.param({"tinyBatchMeanSize": 1}, id="mean-batch-of-1"),
        pytest.param({"queueFullRatio": "1%"}, id="string"),
        pytest.param({"errorRatioo": 0.1}, id="typo"),
    ],
)
def test_chart_schema_refuses_bad_thresholds(thresholds: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render_alert_rules.render_groups(thresholds)


def test_chart_schema_refuses_a_malformed_selector() -> None:
    with pytest.raises(helm.HelmValuesError):
        render_alert_rules.render_groups(selector="job=gpu-predictor")
