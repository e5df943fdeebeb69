"""A real Prometheus for the observability tests: the binaries, a server on loopback, queries.

``make prometheus`` (a prerequisite of ``make pytest``) puts ``prometheus`` and ``promtool``
in ``.tools/prometheus/bin``; ``PROMETHEUS_BIN_DIR`` points elsewhere, and ``PATH`` is the
last resort.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from tests.support import ROOT, free_port

T = TypeVar("T")

DASHBOARD = ROOT / "charts" / "gpu-predictor" / "files" / "grafana-dashboard.json"
PLAIN_RULES = ROOT / "deploy" / "prometheus" / "alert-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alert-rules.test.yaml"
GPU_METRICS = re.compile(r"\bpredictor_gpu_\w+")


def tool(name: str) -> Path:
    """Path of ``prometheus`` or ``promtool``; fails with the command that installs it."""
    candidates = []
    if os.environ.get("PROMETHEUS_BIN_DIR"):
        candidates.append(Path(os.environ["PROMETHEUS_BIN_DIR"]) / name)
    candidates.append(ROOT / ".tools" / "prometheus" / "bin" / name)
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        f"{name} not found (looked in {', '.join(map(str, candidates))}): run `make prometheus`"
    )


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool`` with ``args``; output captured, never raises on a non-zero exit."""
    return subprocess.run(
        [str(tool("promtool")), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = 60.0) -> T:
    """Poll ``probe`` until it returns something other than None (or fail after the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


class PromQLError(RuntimeError):
    """Prometheus refused a query (parse or evaluation error)."""


class Prometheus:
    """``prometheus`` on 127.0.0.1 with a free port, its config and TSDB in ``workdir``.

    Args:
        config: the ``prometheus.yml`` document.
        workdir: a fresh directory for the config, rule files and the TSDB.
    """

    def __init__(self, config: Mapping[str, Any], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                str(tool("prometheus")),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--web.console.templates={workdir}",
                f"--web.console.libraries={workdir}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        self.client = httpx.Client(base_url=self.url, timeout=10.0)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until ``/-/ready`` answers 200 (fail with the log if the process exits)."""

        def ready() -> bool | None:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.process.returncode}:\n{self.log()}")
            try:
                return True if self.client.get("/-/ready").status_code == 200 else None
            except httpx.TransportError:
                return None

        wait_for("prometheus to be ready", ready, timeout_s)

    def log(self) -> str:
        """Prometheus's output so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def api(self, path: str, **params: Any) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` member, or PromQLError with Prometheus's words."""
        response = self.client.get(f"/api/v1/{path}", params=params)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise PromQLError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: the result vector (a scalar result becomes one unlabelled sample)."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(
        self, expr: str, start: float, end: float, step_s: float
    ) -> list[dict[str, Any]]:
        """Range query: one ``{"metric", "values"}`` per series."""
        data = self.api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=step_s
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, None when the result is empty."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, f"{expr} returned {len(result)} series"
        return float(result[0]["value"][1])

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM by PID, wait (kill after ``timeout_s``)."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


# -- the dashboard's queries ------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    """The dashboard source JSON."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every non-row panel, rows' nested panels included."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(panel title, refId, expr)`` of every query of every panel."""
    return [
        (panel["title"], target["refId"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def variable_queries(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """The ``label_values(...)`` query of each query variable, by variable name."""
    return {
        variable["name"]: variable["query"]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    }


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace Grafana's ``$name`` / ``${name}`` variables (longest names first)."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    leftover = re.search(r"\$\{?\w+", expr)
    if leftover:
        raise ValueError(f"variable {leftover.group(0)} left in {expr!r}")
    return expr


def uses_gpu_metrics(expr: str) -> bool:
    """Whether a query reads the NVML series (absent on a machine without a GPU)."""
    return GPU_METRICS.search(expr) is not None


# -- the alert rules --------------------------------------------------------------------------


def rule_groups(path: Path = PLAIN_RULES) -> list[dict[str, Any]]:
    """The ``groups`` of a Prometheus rules file."""
    groups: list[dict[str, Any]] = yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    return groups


def alerts(groups: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Alerting rules by alert name."""
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}
