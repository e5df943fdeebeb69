"""The Grafana dashboard source: Grafana 11.6 schema, variables, house-style PromQL.

Grafana itself cannot run here; the JSON is validated against the vendored Grafana 11.6
schemas (tests/schemas/grafana/SOURCES.txt) and every query is parsed by promtool. The live
test (tests/test_observability_live.py) evaluates every query against a real Prometheus.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.prometheus_support import (
    load_dashboard,
    panel_queries,
    panels,
    promtool,
    substitute,
    uses_gpu_metrics,
    variable_queries,
)

SCHEMAS = Path(__file__).resolve().parent / "schemas" / "grafana"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
VARIABLES = {
    "namespace": "ml",
    "pod": "gp-0|gp-1",
    "model": "digits",
    "__rate_interval": "1m",
}
# The panels issue 4 asks for, by title.
REQUIRED_PANELS = {
    "Request rate by status code",
    "Error ratio by status code",
    "End-to-end latency",
    "Latency split (p90 per stage)",
    "Mean latency per stage",
    "Batch size",
    "Batch size distribution",
    "Queue depth and in-flight requests",
    "Rejections by reason",
    "GPU utilisation",
    "GPU memory",
    "Replicas",
}
COUNTERS = re.compile(r"\b(\w+_(?:total|bucket|sum|count))\{")
IN_RATE = re.compile(r"\brate\((\w+_(?:total|bucket|sum|count))\{[^}]*\}\[\$__rate_interval\]\)")
QUANTILE = re.compile(r"histogram_quantile\(")
QUANTILE_FORM = re.compile(
    r"histogram_quantile\(0\.\d+, sum by \(le(?:, \w+)*\) "
    r"\(rate\(\w+_bucket\{[^}]*\}\[\$__rate_interval\]\)\)\)"
)


def validator(schema_file: str, definition: str | None = None) -> jsonschema.Draft7Validator:
    schema: dict[str, Any] = json.loads((SCHEMAS / schema_file).read_text(encoding="utf-8"))
    if definition is not None:
        schema = {**schema, "$ref": f"#/definitions/{definition}"}
    return jsonschema.Draft7Validator(schema)


def schema_errors(dashboard: Mapping[str, Any]) -> list[str]:
    """Every schema violation: the dashboard, each panel's options, each query."""
    found = [e.message for e in validator("dashboard.jsonschema.json").iter_errors(dashboard)]
    by_type = {
        "timeseries": (validator("timeseries.jsonschema.json", "Options"),
                       validator("timeseries.jsonschema.json", "FieldConfig")),
        "stat": (validator("stat.jsonschema.json", "Options"), None),
    }  # fmt: skip
    query = validator("prometheus.jsonschema.json")
    for panel in panels(dashboard):
        if panel["type"] not in by_type:
            found.append(f"{panel['title']}: panel type {panel['type']} has no vendored schema")
            continue
        options, custom = by_type[panel["type"]]
        found += [f"{panel['title']}: {e.message}" for e in options.iter_errors(panel["options"])]
        if custom is not None:
            field = panel["fieldConfig"]["defaults"].get("custom", {})
            found += [f"{panel['title']}: {e.message}" for e in custom.iter_errors(field)]
        for target in panel["targets"]:
            found += [f"{panel['title']}: {e.message}" for e in query.iter_errors(target)]
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def test_dashboard_validates_against_the_grafana_11_schema(dashboard: dict[str, Any]) -> None:
    assert schema_errors(dashboard) == []
    assert dashboard["schemaVersion"] >= 39  # Grafana 11


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: d["panels"][0].__setitem__("colour", "red"), id="unknown-panel-key"),
        pytest.param(lambda d: d["panels"][0]["gridPos"].__setitem__("w", 30), id="too-wide"),
        pytest.param(lambda d: d["panels"][7]["targets"][0].pop("refId"), id="query-no-refid"),
        pytest.param(lambda d: d["panels"][7]["options"].pop("legend"), id="timeseries-no-legend"),
        pytest.param(lambda d: d["templating"]["list"][1].__setitem__("type", "q"), id="bad-var"),
    ],
)
def test_schema_check_catches_damage(dashboard: dict[str, Any], damage: Any) -> None:
    broken = copy.deepcopy(dashboard)
    damage(broken)
    assert schema_errors(broken) != []


def test_variables_datasource_namespace_pod_model(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "pod", "model"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    queries = variable_queries(dashboard)
    assert queries["namespace"] == "label_values(predictor_model_info, namespace)"
    assert '{namespace=~"$namespace"}' in queries["pod"]
    assert 'namespace=~"$namespace", pod=~"$pod"' in queries["model"]
    for name in ("namespace", "pod", "model"):
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["multi"]
        assert variables[name]["includeAll"]
        assert variables[name]["allValue"] == ".*"


def test_every_panel_and_query_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_the_issues_panels_are_there(dashboard: dict[str, Any]) -> None:
    titles = [panel["title"] for panel in panels(dashboard)]
    assert len(titles) == len(set(titles))
    assert set(titles) >= REQUIRED_PANELS
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_queries_filter_by_namespace_pod_and_model(dashboard: dict[str, Any]) -> None:
    for title, ref, expr in panel_queries(dashboard):
        selectors = re.findall(r"(\w+)\{([^}]*)\}", expr)
        assert selectors, (title, ref)
        for name, selector in selectors:
            assert 'namespace=~"$namespace"' in selector, (title, ref, name)
            assert 'pod=~"$pod"' in selector, (title, ref, name)
            if not name.startswith("predictor_gpu_"):
                assert re.search(r'\bmodel(_name)?=~"\$model"', selector), (title, ref, name)
        if uses_gpu_metrics(expr):
            # NVML series have no model label: joined with the model's devices
            assert re.search(r"on \(namespace, pod, device\) group_left", expr), (title, ref)
            assert (
                'predictor_model_info{namespace=~"$namespace", pod=~"$pod", model=~"$model"}'
                in expr
            )


def test_counters_only_through_rate_and_quantiles_in_house_form(dashboard: dict[str, Any]) -> None:
    for title, ref, expr in panel_queries(dashboard):
        assert COUNTERS.findall(expr) == IN_RATE.findall(expr), (title, ref, expr)
        assert len(QUANTILE.findall(expr)) == len(QUANTILE_FORM.findall(expr)), (title, ref, expr)


def test_every_query_parses(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule); variables substituted as Grafana does."""
    exprs = [substitute(expr, VARIABLES) for _, _, expr in panel_queries(dashboard)]
    exprs += [
        re.sub(r"^label_values\((.*), \w+\)$", r"\1", substitute(q, VARIABLES))
        for q in variable_queries(dashboard).values()
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_promtool_parse_check_rejects_bad_promql(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    bad = {
        "groups": [{"name": "g", "rules": [{"record": "r", "expr": "sum by (le (rate(x[1m]))"}]}]
    }
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    assert promtool("check", "rules", str(path)).returncode != 0
