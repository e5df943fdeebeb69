"""The bench harness: systems, plans, process handling, derived ratios and the rendered docs."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "load-tests"))

import bench
from loadlib import report
from loadlib.procs import ServerProcess, free_port, http_status
from loadlib.systems import SYSTEMS, ServerSettings
from loadlib.workload import MODELS

ROOT = Path(__file__).resolve().parent.parent


def test_plans_name_known_workloads_and_bounded_points() -> None:
    for plan in (bench.QUICK, bench.FULL):
        assert set(plan.workloads) <= set(bench.WORKLOADS)
        assert plan.concurrency == tuple(sorted(plan.concurrency))
        assert all(0 < f <= 1 for f in plan.rate_fractions)
    assert bench.FULL.concurrency[0] == 1
    assert bench.FULL.concurrency[-1] == 128
    assert 64 in bench.QUICK.concurrency  # the batching on/off ratio is quoted at 64
    assert {w.model for w in bench.WORKLOADS.values()} <= set(MODELS)


def test_quick_plan_fits_its_budget() -> None:
    # An upper bound of the measuring time per system (startups and limits come on top):
    # every closed point at most warm-up + window + drain, each bounded by the latency cap.
    plan = bench.QUICK
    per_system = (
        len(plan.concurrency) * (max(plan.point_s, plan.latency_cap_s) + 2 * plan.latency_cap_s)
        + len(plan.rate_fractions) * (plan.point_s + 1.0)
        + plan.server_warmup_s
    )
    assert per_system * (len(SYSTEMS) + 1) < 200  # + ours' gRPC series


def test_every_system_listens_on_loopback_ports() -> None:
    settings = ServerSettings(Path("/m/resnet18"), "resnet18", 18001, 18002, "cpu", "auto")
    for key, system in SYSTEMS.items():
        command = system.command(settings)
        assert command[0] == sys.executable
        assert "18001" in command, key
        assert system.ready_url(settings).startswith("http://127.0.0.1:18001/")
        if key != "kserve-plain":  # KServe 0.21 binds 0.0.0.0 by itself
            assert "127.0.0.1" in command, key
    ours = SYSTEMS["ours"].command(settings)
    off = SYSTEMS["ours-nobatch"].command(settings)
    assert ours[ours.index("--max-batch-size") + 1] == "32"
    assert off[off.index("--max-batch-size") + 1] == "1"
    assert SYSTEMS["litserve"].protocol == "v1-json"


def test_thread_and_device_settings() -> None:
    assert bench.torch_threads("3", "cpu") == 3
    assert bench.torch_threads("auto", "cuda:0") == 0
    assert bench.torch_threads("auto", "cpu") == max(1, len(os.sched_getaffinity(0)) // 2)
    assert bench.resolve_device("cuda") == "cuda:0"
    assert bench.resolve_device("cpu") == "cpu"


def test_bench_refuses_unknown_names() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--systems", "ours,triton"])
    with pytest.raises(SystemExit):
        bench.main(["--torch-threads", "many"])


def test_server_process_is_started_and_stopped_as_a_group(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(
        "trivial",
        [sys.executable, "-m", "loadlib.trivial_server", str(port)],
        f"http://127.0.0.1:{port}/",
        tmp_path / "log",
        env={"PYTHONPATH": str(ROOT / "load-tests")},
    )
    with server:
        assert server.start(30) > 0
        assert server.rss_bytes() > 1_000_000
        pid = server.pid
        assert pid is not None
    assert http_status(f"http://127.0.0.1:{port}/", timeout_s=0.5) is None
    assert server.process is not None
    assert server.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_server_process_that_exits_reports_its_log(tmp_path: Path) -> None:
    server = ServerProcess(
        "broken",
        [sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"],
        "http://127.0.0.1:9/",
        tmp_path / "log",
    )
    with server, pytest.raises(RuntimeError, match="no model here"):
        server.start(30)


# -- derived figures and the rendered page ------------------------------------------------------


def closed(
    level: int, img_s: float, p99: float, codes: dict[str, int] | None = None
) -> dict[str, Any]:
    return {
        "concurrency": level,
        "images_per_s": img_s,
        "ok_rps": img_s,
        "status_counts": codes or {"200": 100},
        "latency_ok_ms": {"p50": p99 / 2, "p99": p99},
    }


def opened(rate: float, p99: float) -> dict[str, Any]:
    return {
        "offered_rps": rate,
        "ok_rps": rate,
        "images_per_s": rate,
        "dropped": 0,
        "status_counts": {"200": 10},
        "latency_ok_ms": {"p50": p99 / 3, "p99": p99},
    }


LIMITS: dict[str, Any] = {
    "engine": [
        {"batch_size": 1, "img_per_s": 100.0, "ms_per_batch": 10.0},
        {"batch_size": 32, "img_per_s": 400.0, "ms_per_batch": 80.0},
    ],
    "decode": {"img_per_s": 400.0, "workers": 2, "ms_per_image": 2.0},
}


def results() -> dict[str, Any]:
    systems = {
        key: {"label": s.label, "description": s.description, "protocol": s.protocol,
              "batching": s.batching}
        for key, s in SYSTEMS.items()
    }  # fmt: skip
    return {
        "version": 1,
        "plan": {"name": "quick", "concurrency": [1, 64], "rate_fractions": [0.5],
                 "point_s": 2.0, "server_warmup_s": 1.0},
        "started": "2026-01-01T00:00:00+00:00",
        "elapsed_s": 200.0,
        "command": "uv run --group peers load-tests/bench.py --quick",
        "note": "Measured under contention.",
        "machine": {"cpu": "Test CPU", "cores": 2, "memory_gib": 8.0, "os": "Linux",
                    "python": "3.11", "versions": {"kserve": "0.21.0", "mosec": None}},
        "environment": {"torch": "2.x", "torchvision": "0.x", "torch_threads": 1,
                        "cuda": None, "device_name": "cpu"},
        "settings": {"device": "cpu", "dtype": "auto", "torch_threads": 1},
        "systems": systems,
        "loadavg_start": [0.1, 0.2, 0.3],
        "loadavg_end": [0.1, 0.2, 0.3],
        "client_ceiling": {"thumbs": {"throughput_rps": 9000.0,
                                      "client_cpu_us_per_request": 95.0}},
        "workloads": [
            {
                "key": "mobilenet_v3_small-96", "model": "mobilenet_v3_small-96",
                "corpus": "thumbs", "corpus_description": "24 images", "about": "tiny",
                "limits": LIMITS,
                "systems": {
                    "ours": {"closed": [closed(1, 80, 12), closed(64, 180, 300)],
                             "open": [opened(90, 20)], "rss_bytes": 2**30},
                    "ours-nobatch": {"closed": [closed(1, 90, 11), closed(64, 60, 900),
                                                {"concurrency": 128, "skipped": "too slow"}],
                                     "open": [opened(30, 30)], "rss_bytes": 2**29},
                    "mosec": {"closed": [closed(1, 70, 15), closed(64, 150, 200)],
                              "open": [opened(75, 25)], "rss_bytes": 2**30},
                    "litserve": {"error": "did not start\nTraceback ..."},
                },
            }
        ],
    }  # fmt: skip


def test_limits_and_objective() -> None:
    assert report.engine_best(LIMITS) == (400.0, 32)
    assert report.pipeline_limit(LIMITS, "cpu") == pytest.approx(200.0)  # costs add on CPU
    assert report.pipeline_limit(LIMITS, "cuda:0") == 400.0  # the slower one on a GPU
    assert report.slo_ms(LIMITS) == 120.0  # 10 x (10 ms + 2 ms)
    slow: dict[str, Any] = copy.deepcopy(LIMITS)
    slow["decode"]["ms_per_image"] = 1234.0
    assert report.slo_ms(slow) == 13000.0  # rounded up to two significant digits


def test_best_points_and_ratios() -> None:
    ours = results()["workloads"][0]["systems"]["ours"]
    best = report.best(ours)
    assert best is not None
    assert best["concurrency"] == 64
    within = report.best_within(ours, 100.0)
    assert within is not None
    assert within["concurrency"] == 1
    assert report.best_within(ours, 5.0) is None
    errors = {"closed": [closed(8, 500, 10, {"200": 90, "503": 10})]}
    assert report.best_within(errors, 100.0) is None  # errors never meet an objective
    assert report.at_concurrency(ours, 64) is best
    assert report.ratio(300.0, 100.0) == "3.00×"
    assert report.ratio(1.0, 0.0) == "-"


def test_render_and_write(tmp_path: Path) -> None:
    data = results()
    written = report.write(data, tmp_path, tmp_path / "results.json")
    page = (tmp_path / "benchmarks.md").read_text()
    assert written[0] == tmp_path / "benchmarks.md"
    for png in written[1:]:
        assert png.read_bytes()[:4] == b"\x89PNG"
    assert "**Provisional.**" in page
    assert "Measured under contention." in page
    assert "## Key ratios" in page
    assert "Test CPU, 2 cores" in page
    # served / engine limit 180/400; batching on/off at 64: 180/60; ours/mosec 180/150.
    assert "45%" in page
    assert "3.00×" in page
    assert "1.20×" in page
    assert "failed: did not start" in page
    assert "skipped (too slow)" in page
    assert "img/bench-mobilenet_v3_small-96-throughput.png" in page
    assert "--quick" in page
    assert "--device cuda --dtype float16" in page


def test_report_renders_again_from_a_results_file(tmp_path: Path) -> None:
    import json

    source = tmp_path / "results.json"
    source.write_text(json.dumps(results()))
    docs = tmp_path / "docs"
    assert bench.main(["--report", str(source), "--docs", str(docs)]) == 0
    assert (docs / "benchmarks.md").is_file()
    assert len(list((docs / "img").glob("*.png"))) == 2


def test_report_takes_a_note_written_after_the_run(tmp_path: Path) -> None:
    import json

    full = results()
    full["plan"]["name"] = "full"
    source = tmp_path / "results.json"
    source.write_text(json.dumps(full))
    docs = tmp_path / "docs"
    note = "Findings: see [performance.md](performance.md)."
    assert bench.main(["--report", str(source), "--docs", str(docs), "--note", note]) == 0
    page = (docs / "benchmarks.md").read_text()
    assert f"> {note}" in page
    assert "Measured under contention." not in page  # replaced, not added to
    assert "**Provisional.**" not in page  # a full run with a note is not provisional
    assert json.loads((docs / "benchmarks.json").read_text())["note"] == note
