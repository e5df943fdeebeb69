r"""Draw the Grafana dashboard's panels from a live Prometheus into a PNG (matplotlib).

Grafana is not needed: every panel query of charts/gpu-predictor/files/grafana-dashboard.json
is run through Prometheus's HTTP API with the template variables substituted, and drawn where
the dashboard places it (stat panels as their last value, time series as lines). The picture
in docs/observability.md is made by the live test::

    GPU_PREDICTOR_DASHBOARD_PNG=docs/img/dashboard.png \\
        uv run pytest tests/test_observability_live.py -s

or against any Prometheus that scrapes the predictor::

    uv run python scripts/dashboard_png.py --prometheus http://localhost:9090 --minutes 30 \\
        --namespace ml --out dashboard.png
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "charts" / "gpu-predictor" / "files" / "grafana-dashboard.json"
ROW_UNIT_IN = 0.42  # inches per Grafana grid row
WIDTH_IN = 22.0


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace Grafana's ``$name`` / ``${name}`` variables (longest names first)."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    return expr


def legend(template: str, labels: Mapping[str, str]) -> str:
    """Grafana's legend format: ``{{label}}`` replaced by the series' label value."""
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    return text.strip() or ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"


def format_value(value: float, unit: str) -> str:
    """A stat panel's number in its unit."""
    if math.isnan(value):
        return "NaN"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "reqps":
        return f"{value:.1f} req/s"
    if unit == "bytes":
        return f"{value / 2**30:.1f} GiB"
    return f"{value:.2f}" if value % 1 else f"{value:.0f}"


def query_range(
    client: httpx.Client, expr: str, start: float, end: float, step_s: float
) -> list[dict[str, Any]]:
    """One ``{"metric", "values"}`` per series; raises on a Prometheus error."""
    response = client.get(
        "/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": step_s},
    )
    body = response.json()
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def render(
    prometheus_url: str,
    variables: Mapping[str, str],
    start: float,
    end: float,
    out: Path,
    step_s: float = 1.0,
    dashboard_path: Path = DASHBOARD,
) -> Path:
    """Draw every panel over ``[start, end]`` (unix seconds) into ``out``; returns ``out``."""
    dashboard = json.loads(dashboard_path.read_text(encoding="utf-8"))
    items = dashboard["panels"]
    top = 1.0  # grid rows kept free for the title
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in items) + top
    fig = plt.figure(figsize=(WIDTH_IN, rows * ROW_UNIT_IN), dpi=80)
    shown = ", ".join(f"{k}={v}" for k, v in variables.items() if k != "datasource")
    fig.suptitle(
        f"{dashboard['title']}: {datetime.fromtimestamp(start):%Y-%m-%d %H:%M:%S} to "
        f"{datetime.fromtimestamp(end):%H:%M:%S}  ({shown})",
        fontsize=11,
        y=1 - 0.3 / rows,
    )
    with httpx.Client(base_url=prometheus_url, timeout=30) as client:
        for panel in items:
            pos = panel["gridPos"]
            left, width = pos["x"] / 24 + 0.035, pos["w"] / 24 - 0.045
            bottom = 1 - (top + pos["y"] + pos["h"]) / rows + 0.55 / rows
            height = pos["h"] / rows - 1.25 / rows
            if panel["type"] == "row":
                fig.text(
                    0.01,
                    1 - (top + pos["y"] + 0.7) / rows,
                    panel["title"],
                    fontsize=12,
                    weight="bold",
                )
                continue
            ax = fig.add_axes((left, bottom, width, max(height, 0.01)))
            ax.set_title(panel["title"], fontsize=10, loc="left")
            unit = panel["fieldConfig"]["defaults"].get("unit", "none")
            series = []
            for target in panel["targets"]:
                expr = substitute(target["expr"], variables)
                for result in query_range(client, expr, start, end, step_s):
                    times = [float(t) - end for t, _ in result["values"]]
                    values = [float(v) for _, v in result["values"]]
                    series.append(
                        (legend(target.get("legendFormat", ""), result["metric"]), times, values)
                    )
            if panel["type"] == "stat":
                _draw_stat(ax, series, unit)
            else:
                _draw_timeseries(ax, series, unit)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _draw_stat(ax: Any, series: list[tuple[str, list[float], list[float]]], unit: str) -> None:
    ax.set_axis_off()
    finite = [v for _, _, values in series for v in values if not math.isnan(v)]
    text = format_value(finite[-1], unit) if finite else "No data"
    ax.text(0.5, 0.4, text, fontsize=20, ha="center", va="center", weight="bold", color="#1f60c4")


def _draw_timeseries(
    ax: Any, series: list[tuple[str, list[float], list[float]]], unit: str
) -> None:
    if not series:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    scale = 1000.0 if unit == "s" else 100.0 if unit == "percentunit" else 1.0
    for name, times, values in series[:12]:
        ax.plot(times, [v * scale for v in values], label=name, linewidth=1.2)
    ax.set_ylabel({"s": "ms", "percentunit": "%", "reqps": "req/s", "bytes": "bytes"}.get(unit, ""))
    ax.set_xlabel("seconds before the end", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", ncols=2, framealpha=0.6)


def main(argv: list[str] | None = None) -> int:
    """Draw the dashboard from ``--prometheus`` over the last ``--minutes``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="base URL of the Prometheus")
    parser.add_argument("--minutes", type=float, default=30.0, help="time range, ending now")
    parser.add_argument("--namespace", default=".*", help="$namespace (a regex)")
    parser.add_argument("--pod", default=".*", help="$pod (a regex)")
    parser.add_argument("--model", default=".*", help="$model (a regex)")
    parser.add_argument("--rate-interval", default="1m", help="$__rate_interval")
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"))
    args = parser.parse_args(argv)
    end = time.time()
    start = end - args.minutes * 60
    variables = {
        "datasource": "",
        "namespace": args.namespace,
        "pod": args.pod,
        "model": args.model,
        "__rate_interval": args.rate_interval,
    }
    step = max(1.0, args.minutes * 60 / 400)
    print(render(args.prometheus, variables, start, end, args.out, step_s=step))
    return 0


if __name__ == "__main__":
    sys.exit(main())
