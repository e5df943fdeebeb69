"""Engine and the classification runner: batched results equal single results,
normalisation paths agree, OOM splits, traces are checked against eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from predictor.runtime.devices import DeviceError, resolve_devices, resolve_dtype
from predictor.runtime.engine import Engine, warmup_sizes
from predictor.store.manifest import read_manifest
from predictor.store.spec import InputSpec
from predictor.store.weights import load_module
from predictor.tasks.classification_runner import ClassificationRunner
from predictor.tasks.registry import engine_for
from tests.support import DIGITS

CUDA = torch.cuda.is_available()


class Rows:
    """An engine whose results are stacked into one array (classification rows)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def infer(self, items: list[np.ndarray]) -> np.ndarray:
        return np.stack(self.engine.infer(items))

    def run(self, items: list[np.ndarray]) -> np.ndarray:
        return np.stack(self.engine.run(items))


def make_engine(
    module: nn.Module,
    spec: InputSpec,
    device: str = "cpu",
    dtype: str = "float32",
    max_batch: int = 16,
    jit: bool = False,
) -> Engine:
    torch_dtype = resolve_dtype(dtype, device)
    runner = ClassificationRunner(module, spec, device, torch_dtype, max_batch, jit, True)
    return Engine(runner, device, torch_dtype, max_batch)


def digits_engine(device: str = "cpu", dtype: str = "float32", max_batch: int = 16) -> Engine:
    spec = read_manifest(DIGITS, "digits")
    return make_engine(load_module(spec), spec.input, device, dtype, max_batch)


def random_digits(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 1), dtype=np.uint8) for _ in range(count)]


def test_batched_results_equal_one_at_a_time() -> None:
    engine = digits_engine()
    images = random_digits(16)
    batched = Rows(engine).infer(images)
    single = np.concatenate([Rows(engine).infer([image]) for image in images])
    assert batched.shape == (16, 10)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert engine.batches_run == 17
    assert engine.items_run == 32


def test_preprocessed_float_tensors_give_the_same_result_as_pixels() -> None:
    engine = Rows(digits_engine())
    spec = read_manifest(DIGITS, "digits").input
    images = random_digits(3, seed=1)
    tensors = [
        (
            (img.transpose(2, 0, 1) / 255.0 - np.array(spec.mean)[:, None, None])
            / np.array(spec.std)[:, None, None]
        ).astype(np.float32)
        for img in images
    ]
    np.testing.assert_allclose(engine.infer(tensors), engine.infer(images), atol=1e-5)
    mixed = engine.infer([images[0], tensors[1], images[2]])
    np.testing.assert_allclose(mixed, engine.infer(images), atol=1e-5)


class OomAbove(nn.Module):
    """Raises CUDA's out-of-memory error for batches larger than ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.seen: list[int] = []
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return torch.stack([x.mean(dim=(1, 2, 3)), -x.mean(dim=(1, 2, 3))], dim=1) * self.scale


def test_out_of_memory_splits_the_batch_in_halves() -> None:
    spec = InputSpec("L", 4, (4, 4), (0.0,), (1.0,))
    built = make_engine(OomAbove(limit=2), spec, max_batch=8)
    runner = built.runner
    assert isinstance(runner, ClassificationRunner)
    module = runner.pipeline.network
    assert isinstance(module, OomAbove)
    engine = Rows(built)
    images = [np.full((4, 4, 1), v, np.uint8) for v in range(0, 80, 10)]
    result = engine.run(images)
    assert result.shape == (8, 2)
    assert module.seen == [8, 4, 2, 2, 4, 2, 2]
    expected = np.concatenate([engine.infer([image]) for image in images])
    np.testing.assert_allclose(result, expected, atol=1e-6)


def test_out_of_memory_on_a_single_item_is_raised() -> None:
    spec = InputSpec("L", 4, (4, 4), (0.0,), (1.0,))
    engine = make_engine(OomAbove(limit=0), spec, max_batch=4)
    with pytest.raises(torch.OutOfMemoryError):
        engine.run([np.zeros((4, 4, 1), np.uint8)] * 2)


def test_batch_larger_than_configured_is_refused() -> None:
    with pytest.raises(ValueError, match=r"1\.\.2"):
        digits_engine(max_batch=2).infer(random_digits(3))


def test_devices_and_dtypes_resolve() -> None:
    expected_auto = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if CUDA else ["cpu"]
    assert resolve_devices(["auto"]) == expected_auto
    assert resolve_devices(["cpu", "cpu"]) == ["cpu", "cpu"]
    with pytest.raises(DeviceError, match="unknown device cuda:99"):
        resolve_devices(["cuda:99"])
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda:0") == torch.float16
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16


def test_warmup_covers_every_size_the_engine_will_see() -> None:
    assert warmup_sizes(32, "cpu") == [1, 2, 4, 8, 16, 32]
    assert warmup_sizes(24, "cpu") == [1, 2, 4, 8, 16, 24]
    assert warmup_sizes(8, "cuda:0") == list(range(1, 9))
    engine = digits_engine(max_batch=4)
    engine.warmup()
    assert engine.batches_run == 0  # warm-up batches are not counted as served work


def test_bfloat16_on_cpu_stays_close_to_float32() -> None:
    images = random_digits(4, seed=3)
    reference = Rows(digits_engine()).infer(images)
    low = Rows(digits_engine(dtype="bfloat16")).infer(images)
    assert (low.argmax(1) == reference.argmax(1)).all()
    np.testing.assert_allclose(low, reference, atol=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_cuda_engine_matches_cpu(dtype: str) -> None:
    images = random_digits(16, seed=4)
    reference = Rows(digits_engine()).infer(images)
    built = digits_engine("cuda:0", dtype)
    built.warmup()
    engine = Rows(built)
    result = engine.infer(images)
    assert (result.argmax(1) == reference.argmax(1)).all()
    np.testing.assert_allclose(result, reference, atol=0.02 if dtype != "float32" else 1e-4)
    np.testing.assert_allclose(engine.infer(images[:3]), result[:3], atol=0.02)


def test_warmup_measures_throughput_and_picks_the_knee() -> None:
    engine = digits_engine(max_batch=8)
    engine.warmup()
    assert sorted(engine.throughput) == [1, 2, 4, 8]
    assert all(rate > 0 for rate in engine.throughput.values())
    best = max(engine.throughput.values())
    chosen = engine.best_batch_size()
    assert engine.throughput[chosen] >= 0.97 * best
    assert all(engine.throughput[size] < 0.97 * best for size in engine.throughput if size < chosen)


def test_best_batch_size_prefers_the_smallest_size_near_the_best() -> None:
    engine = digits_engine(max_batch=32)
    assert engine.best_batch_size() == 32  # nothing measured yet: the configured maximum
    engine.throughput = {1: 100.0, 2: 180.0, 4: 300.0, 8: 395.0, 16: 400.0, 32: 380.0}
    assert engine.best_batch_size() == 8  # within 3% of 400, and smaller than 16
    engine.throughput = {1: 10.0, 2: 19.0, 4: 40.0, 8: 90.0}  # a GPU-like curve
    assert engine.best_batch_size() == 8


def test_traced_pipeline_matches_eager() -> None:
    spec = read_manifest(DIGITS, "digits")
    built = engine_for(spec, load_module(spec), "cpu", "float32", 8, jit=True)
    assert built.jit
    traced, eager = Rows(built), Rows(digits_engine())
    images = random_digits(8, seed=5)
    np.testing.assert_allclose(traced.infer(images), eager.infer(images), atol=1e-5)
    np.testing.assert_allclose(traced.infer(images[:3]), eager.infer(images[:3]), atol=1e-5)


class BatchDependent(nn.Module):
    """Python control flow on the batch size: a trace would bake in one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3))
        if x.shape[0] > 1:
            return torch.stack([mean, -mean], dim=1) * self.scale
        return torch.stack([-mean, mean], dim=1) * self.scale


class ValueDependent(BatchDependent):
    """Python control flow on tensor values: the tracer warns, so tracing is refused."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.mean() > 1000):
            raise RuntimeError("never")
        return super().forward(x)


@pytest.mark.parametrize("module", [BatchDependent(), ValueDependent()], ids=["batch", "value"])
def test_untraceable_models_run_eagerly(module: nn.Module) -> None:
    spec = InputSpec("L", 4, (4, 4), (0.0,), (1.0,))
    engine = make_engine(module, spec, max_batch=4, jit=True)
    assert not engine.jit  # the check against eager (or the tracer's warning) refused the trace
    single = Rows(engine).infer([np.full((4, 4, 1), 100, np.uint8)])
    assert single[0, 1] > single[0, 0]  # the batch-of-one branch ran
