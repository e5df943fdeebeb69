"""Render the plain Prometheus rules file from the chart's alert rules.

``deploy/prometheus/alert-rules.yaml`` is the ``spec.groups`` of the chart's PrometheusRule,
rendered by the real Helm engine (``helm-python``) with the chart's default thresholds and
the series selector ``job="gpu-predictor"`` (the scrape job name the docs use). The source is
``charts/gpu-predictor/files/alert-rules.yaml``; ``tests/test_alert_rules.py`` fails when the
plain file drifts from it.

Usage::

    uv run python scripts/render_alert_rules.py          # rewrite the plain file
    uv run python scripts/render_alert_rules.py --check  # exit 1 when it is out of date
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "gpu-predictor"
PLAIN = ROOT / "deploy" / "prometheus" / "alert-rules.yaml"
#: Label matchers of the plain file: the predictor's scrape job, as in docs/observability.md.
PLAIN_SELECTOR = 'job="gpu-predictor"'
HEADER = """\
# Alert rules of gpu-predictor for a Prometheus without the prometheus-operator
# (`rule_files:` in prometheus.yml). They select the scrape job "gpu-predictor".
#
# GENERATED from charts/gpu-predictor/files/alert-rules.yaml with the chart's default
# thresholds by scripts/render_alert_rules.py; do not edit by hand. Unit tests:
# deploy/prometheus/alert-rules.test.yaml (promtool test rules). Runbooks:
# docs/observability.md.
"""


def render_groups(
    thresholds: Mapping[str, float] | None = None,
    selector: str = PLAIN_SELECTOR,
    chart_dir: Path = CHART,
) -> list[dict[str, Any]]:
    """Render the chart with its alert rules enabled; the PrometheusRule's ``spec.groups``.

    Args:
        thresholds: overrides of ``metrics.rules.thresholds`` (chart defaults otherwise).
        selector: PromQL label matchers every rule applies (``metrics.rules.selector``).
        chart_dir: the chart.

    Raises:
        LookupError: the chart rendered no PrometheusRule.
    """
    values: dict[str, Any] = {
        "metrics": {
            "rules": {"enabled": True, "selector": selector, "thresholds": dict(thresholds or {})}
        }
    }
    with helm.Chart.load(chart_dir) as chart:
        rendered = chart.render(values, name="gpu-predictor", namespace="default")
    for path, text in rendered.items():
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for document in yaml.safe_load_all(text):
            if isinstance(document, dict) and document.get("kind") == "PrometheusRule":
                groups: list[dict[str, Any]] = document["spec"]["groups"]
                return groups
    raise LookupError(f"{chart_dir} rendered no PrometheusRule with metrics.rules.enabled")


class _Dumper(yaml.SafeDumper):
    """Literal block style for PromQL, one line per annotation, keys in source order."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def plain_text(groups: list[dict[str, Any]]) -> str:
    """The plain rules file: header comment plus ``groups:``."""
    body = yaml.dump(
        {"groups": groups}, Dumper=_Dumper, sort_keys=False, width=4096, allow_unicode=True
    )
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the plain rules file; the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    text = plain_text(render_groups())
    if args.check:
        current = PLAIN.read_text(encoding="utf-8") if PLAIN.exists() else ""
        if current != text:
            print(f"{PLAIN.relative_to(ROOT)} is out of date: run {__file__}", file=sys.stderr)
            return 1
        return 0
    PLAIN.parent.mkdir(parents=True, exist_ok=True)
    PLAIN.write_text(text, encoding="utf-8")
    print(f"wrote {PLAIN.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
