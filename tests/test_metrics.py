"""predictor.metrics on a private registry: names, labels, buckets, the NVML collector.

The exposition is checked with the real ``promtool check metrics``. NVML is replaced by a
stand-in module only to reach the collector's GPU-present path (no GPU here); the absent path
runs against the real ``pynvml``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from predictor.config import Settings
from predictor.errors import PredictorError
from predictor.gpu_metrics import GpuCollector
from predictor.metrics import (
    REJECT_REASONS,
    Metrics,
    batch_size_buckets,
    latency_buckets,
)
from tests.prometheus_support import promtool
from tests.support import metric, parse_metrics

GIB = 1024**3


@pytest.mark.parametrize(
    ("max_batch", "expected"),
    [
        (1, [1.0]),
        (2, [1.0, 2.0]),
        (8, [1.0, 2.0, 4.0, 8.0]),
        (12, [1.0, 2.0, 4.0, 8.0, 12.0]),
        (32, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]),
    ],
)
def test_batch_size_buckets_double_up_to_the_max_batch(
    max_batch: int, expected: list[float]
) -> None:
    assert batch_size_buckets(max_batch) == expected


@pytest.mark.parametrize("timeout_s", [0.05, 1.0, 2.0, 30.0, 300.0])
def test_latency_buckets_end_at_the_request_timeout(timeout_s: float) -> None:
    buckets = latency_buckets(timeout_s)
    assert buckets[0] == 0.0005
    assert buckets[-1] == timeout_s
    assert buckets == sorted(set(buckets))
    # a 1-2.5-5 ladder: no gap wider than 2.5x below the timeout bucket
    assert all(b / a <= 2.5 + 1e-9 for a, b in itertools.pairwise(buckets[:-1]))


def served_metrics(registry: CollectorRegistry) -> Metrics:
    """Metrics of a server with two models and some traffic, as the core drives them."""
    settings = Settings(max_batch_size=8, queue_capacity=24, request_timeout_ms=2000)
    metrics = Metrics(settings, registry)
    for model, arch in (("digits", "digits_cnn"), ("resnet", "resnet18")):
        metrics.describe_model(model, arch, "float32", ["cpu", "cpu/1"])
        metrics.watch_model(model, depth=lambda: 3.0, inflight=lambda: 5.0, failures=lambda: 0.0)
    observer = metrics.model_observer("digits")
    observer.batch_started(6, [0.001, 0.002, 0.004, 0.004, 0.010, 0.020])
    observer.batch_finished("cpu", 0.012, ok=True)
    observer.batch_started(1, [0.0002])
    observer.batch_finished("cpu/1", 0.5, ok=False)
    metrics.observe_request("digits", "v1", 200, 0.03)
    metrics.observe_request("digits", "grpc", 200, 0.02)
    metrics.observe_request("digits", "v2", 503, 0.001)
    metrics.observe_rejection("digits", "queue_full")
    metrics.observe_request("_unknown", "v1", 404, 0.0005)
    metrics.observe_rejection("_unknown", "unknown_model")
    return metrics


def test_model_series_carry_the_model_label_and_observed_values() -> None:
    registry = CollectorRegistry()
    served_metrics(registry)
    samples = parse_metrics(generate_latest(registry).decode())
    assert metric(samples, "predictor_requests_total", model="digits") == 3
    assert (
        metric(samples, "predictor_requests_total", model="digits", code="503", protocol="v2") == 1
    )
    assert metric(samples, "predictor_request_duration_seconds_count", protocol="grpc") == 1
    assert metric(samples, "predictor_batch_size_count", model="digits") == 2
    assert metric(samples, "predictor_batch_size_sum", model="digits") == 7
    assert metric(samples, "predictor_batch_size_bucket", model="digits", le="1.0") == 1
    assert metric(samples, "predictor_batch_size_bucket", model="digits", le="8.0") == 2
    assert metric(samples, "predictor_queue_wait_seconds_count", model="digits") == 7
    # only successful batches count device time
    assert metric(samples, "predictor_inference_duration_seconds_count", device="cpu") == 1
    assert metric(samples, "predictor_inference_duration_seconds_count", device="cpu/1") == 0
    assert metric(samples, "predictor_queue_depth", model="resnet") == 3
    assert metric(samples, "predictor_inflight_requests", model="resnet") == 5
    assert metric(samples, "predictor_consecutive_engine_failures", model="digits") == 0
    assert metric(samples, "predictor_max_batch_size", model="digits") == 8
    assert metric(samples, "predictor_queue_capacity", model="digits") == 24
    info = {lbl for (name, lbl) in samples if name == "predictor_model_info"}
    assert (
        ("arch", "resnet18"),
        ("device", "cpu/1"),
        ("dtype", "float32"),
        ("model", "resnet"),
    ) in info
    assert len(info) == 4
    # every model-level series has a model label; refused connections are
    # counted before any model is known, so they are server-level
    server_level = {"predictor_refused_connections_total"}
    for name, labels in samples:
        if name.startswith("predictor_") and name not in server_level:
            assert "model" in dict(labels), name


def test_rejections_start_at_zero_for_every_reason() -> None:
    registry = CollectorRegistry()
    served_metrics(registry)
    samples = parse_metrics(generate_latest(registry).decode())
    for reason in REJECT_REASONS:
        expected = 1 if reason == "queue_full" else 0
        key = ("predictor_rejected_total", (("model", "digits"), ("reason", reason)))
        assert samples[key] == expected, reason
    assert metric(samples, "predictor_rejected_total", model="resnet") == 0
    assert (
        metric(samples, "predictor_rejected_total", model="_unknown", reason="unknown_model") == 1
    )


def test_zeroed_reasons_are_every_reason_the_errors_carry() -> None:
    def subclasses(cls: type[PredictorError]) -> list[type[PredictorError]]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    reasons = {cls.reason for cls in subclasses(PredictorError)}
    assert reasons == set(REJECT_REASONS)


def test_histogram_buckets_follow_the_settings() -> None:
    registry = CollectorRegistry()
    served_metrics(registry)
    samples = parse_metrics(generate_latest(registry).decode())

    def bounds(name: str) -> list[str]:
        found = {dict(lbl)["le"] for (n, lbl) in samples if n == name}
        return sorted(found, key=float)

    assert bounds("predictor_batch_size_bucket") == ["1.0", "2.0", "4.0", "8.0", "+Inf"]
    assert bounds("predictor_request_duration_seconds_bucket")[-2:] == ["2.0", "+Inf"]
    assert bounds("predictor_queue_wait_seconds_bucket")[-2:] == ["2.0", "+Inf"]
    assert bounds("predictor_inference_duration_seconds_bucket")[-2:] == ["2.0", "+Inf"]


# -- NVML ---------------------------------------------------------------------------------


@dataclass
class FakeDevice:
    """What the stand-in NVML reports for one GPU."""

    util_percent: int
    used_bytes: int
    total_bytes: int
    broken: bool = False


class FakeNvml:
    """The slice of ``pynvml`` the collector uses, over a list of fake devices."""

    def __init__(self, devices: Sequence[FakeDevice], init_error: Exception | None = None) -> None:
        self.devices = list(devices)
        self.init_error = init_error
        self.initialised = False

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.initialised = True

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        raise RuntimeError(f"no GPU with UUID {uuid}")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index >= len(self.devices):
            raise RuntimeError(f"NVML_ERROR_INVALID_ARGUMENT: no device {index}")
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        device = self._device(handle)
        return SimpleNamespace(gpu=device.util_percent, memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        device = self._device(handle)
        return SimpleNamespace(
            used=device.used_bytes,
            total=device.total_bytes,
            free=device.total_bytes - device.used_bytes,
        )

    def _device(self, handle: int) -> FakeDevice:
        device = self.devices[handle]
        if device.broken:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return device


def gpu_samples(collector: GpuCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return parse_metrics(generate_latest(registry).decode())


def test_gpu_series_present_per_device_with_nvml() -> None:
    nvml = FakeNvml([FakeDevice(37, 3 * GIB, 80 * GIB), FakeDevice(100, 79 * GIB, 80 * GIB)])
    samples = gpu_samples(GpuCollector([("cuda:0", 0), ("cuda:1", 1)], nvml=nvml))
    assert samples == {
        ("predictor_gpu_utilization_ratio", (("device", "cuda:0"),)): 0.37,
        ("predictor_gpu_utilization_ratio", (("device", "cuda:1"),)): 1.0,
        ("predictor_gpu_memory_used_bytes", (("device", "cuda:0"),)): 3 * GIB,
        ("predictor_gpu_memory_used_bytes", (("device", "cuda:1"),)): 79 * GIB,
        ("predictor_gpu_memory_total_bytes", (("device", "cuda:0"),)): 80 * GIB,
        ("predictor_gpu_memory_total_bytes", (("device", "cuda:1"),)): 80 * GIB,
    }


def test_gpu_series_follow_the_device_at_scrape_time() -> None:
    device = FakeDevice(10, GIB, 16 * GIB)
    collector = GpuCollector([("cuda:0", 0)], nvml=FakeNvml([device]))
    assert (
        gpu_samples(collector)[("predictor_gpu_utilization_ratio", (("device", "cuda:0"),))] == 0.1
    )
    device.util_percent, device.used_bytes = 90, 15 * GIB
    samples = gpu_samples(collector)
    assert samples[("predictor_gpu_utilization_ratio", (("device", "cuda:0"),))] == 0.9
    assert samples[("predictor_gpu_memory_used_bytes", (("device", "cuda:0"),))] == 15 * GIB


def test_a_failing_device_is_left_out_and_the_others_stay() -> None:
    nvml = FakeNvml([FakeDevice(50, GIB, 8 * GIB, broken=True), FakeDevice(20, GIB, 8 * GIB)])
    # cuda:2 has no NVML handle at all
    collector = GpuCollector([("cuda:0", 0), ("cuda:1", 1), ("cuda:2", 2)], nvml=nvml)
    devices = {dict(lbl)["device"] for (_, lbl) in gpu_samples(collector)}
    assert devices == {"cuda:1"}


@pytest.mark.parametrize(
    "collector",
    [
        pytest.param(lambda: GpuCollector([]), id="no-cuda-devices"),
        pytest.param(
            lambda: GpuCollector(
                [("cuda:0", 0)], nvml=FakeNvml([], init_error=OSError("no driver"))
            ),
            id="nvml-init-fails",
        ),
        pytest.param(
            lambda: GpuCollector(
                [("cuda:0", 0)], nvml=FakeNvml([FakeDevice(1, 1, 1, broken=True)])
            ),
            id="every-read-fails",
        ),
    ],
)
def test_gpu_series_absent_not_zero(collector: Any) -> None:
    built = collector()
    assert gpu_samples(built) == {}
    assert "predictor_gpu" not in generate_latest(_registry_with(built)).decode()


def _registry_with(collector: GpuCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def test_real_nvml_without_a_gpu_gives_no_series() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: covered by test_real_nvml_reports_the_gpu")
    assert gpu_samples(GpuCollector([("cuda:0", 0)])) == {}


@pytest.mark.gpu
def test_real_nvml_reports_the_gpu() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    samples = gpu_samples(GpuCollector([("cuda:0", 0)]))
    key = (("device", "cuda:0"),)
    assert 0 <= samples[("predictor_gpu_utilization_ratio", key)] <= 1
    total = samples[("predictor_gpu_memory_total_bytes", key)]
    assert 0 < samples[("predictor_gpu_memory_used_bytes", key)] <= total
    assert total > GIB


# -- promtool -----------------------------------------------------------------------------


def test_exposition_passes_promtool_check_metrics() -> None:
    registry = CollectorRegistry()
    served_metrics(registry)
    registry.register(
        GpuCollector([("cuda:0", 0)], nvml=FakeNvml([FakeDevice(37, 3 * GIB, 80 * GIB)]))
    )
    text = generate_latest(registry).decode()
    assert "predictor_gpu_memory_used_bytes" in text
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_promtool_check_metrics_does_flag_bad_names() -> None:
    # the check above is only worth something if promtool lints what it is fed
    bad = (
        "# HELP predictor_latency_ms latency\n"
        "# TYPE predictor_latency_ms counter\n"
        "predictor_latency_ms 1\n"
    )
    result = promtool("check", "metrics", stdin=bad)
    assert result.returncode != 0
    assert "predictor_latency_ms" in result.stdout + result.stderr
