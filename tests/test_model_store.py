"""Model directories: discovery and naming, manifest validation, safe weight loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from predictor.store import archs
from predictor.store.manifest import ModelStoreError, discover, read_manifest
from predictor.store.weights import load_module
from predictor.tasks.registry import engine_for
from tests.support import DIGITS


def copy_digits(target: Path) -> Path:
    shutil.copytree(DIGITS, target, ignore=shutil.ignore_patterns("samples", "*.py"))
    return target


def edit_manifest(directory: Path, **changes: object) -> None:
    manifest = json.loads((directory / "model.json").read_text())
    manifest.update(changes)
    (directory / "model.json").write_text(json.dumps(manifest))


def test_single_model_directory_takes_its_name_or_model_name(tmp_path: Path) -> None:
    single = copy_digits(tmp_path / "mnt" / "models")
    assert [s.name for s in discover(single)] == ["models"]
    assert [s.name for s in discover(single, "mnist-like")] == ["mnist-like"]


def test_folder_of_models_serves_each_under_its_directory_name(tmp_path: Path) -> None:
    copy_digits(tmp_path / "b-digits")
    copy_digits(tmp_path / "a-digits")
    (tmp_path / "not-a-model").mkdir()
    assert [s.name for s in discover(tmp_path)] == ["a-digits", "b-digits"]
    with pytest.raises(ModelStoreError, match="needs a single model"):
        discover(tmp_path, "renamed")


def test_one_model_in_a_folder_can_be_renamed(tmp_path: Path) -> None:
    copy_digits(tmp_path / "digits")
    assert [s.name for s in discover(tmp_path, "classifier")] == ["classifier"]


def test_empty_folder_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match=r"no model found .*model\.json"):
        discover(tmp_path)


def test_digits_manifest_is_parsed() -> None:
    spec = read_manifest(DIGITS, "digits")
    assert spec.input.color == "L"
    assert spec.input.crop == (32, 32)
    assert spec.labels == tuple(str(d) for d in range(10))
    assert spec.top_k == 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task": "segmentation"}, "task 'segmentation' is not supported"),
        ({"input": {"color": "CMYK", "crop": 32}}, "input.color"),
        ({"input": {"crop": 32, "mean": [0.1, 0.2]}}, "mean/std need 3 values"),
        ({"input": {"crop": 0}}, "input.crop"),
        ({"program": "model.pt2"}, "exactly one of"),
        ({"top_k": 0}, "top_k must be >= 1"),
        ({"labels": "missing.txt"}, "does not exist"),
        ({"weights": "../../../../../etc/passwd"}, "escapes the model directory"),
    ],
)
def test_invalid_manifests_are_refused_with_the_reason(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    directory = copy_digits(tmp_path / "digits")
    edit_manifest(directory, **changes)
    with pytest.raises(ModelStoreError, match=message):
        read_manifest(directory, "digits")


def test_unusable_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match="not usable in a URL"):
        read_manifest(copy_digits(tmp_path / "d"), "bad/name")


def test_weights_that_do_not_fit_give_a_clear_error(tmp_path: Path) -> None:
    directory = copy_digits(tmp_path / "digits")
    torch.save({"unexpected": torch.zeros(3)}, directory / "weights.pt")
    with pytest.raises(ModelStoreError, match="cannot load weights"):
        load_module(read_manifest(directory, "digits"))


def probabilities(directory: Path, pixels: list[np.ndarray]) -> np.ndarray:
    spec = read_manifest(directory, "m")
    engine = engine_for(spec, load_module(spec), "cpu", "float32", 8, jit=False)
    return np.stack(engine.infer(pixels))


def test_safetensors_and_exported_program_load_to_the_same_model(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    pixels = [np.full((32, 32, 1), v, np.uint8) for v in (0, 90, 200)]
    expected = probabilities(DIGITS, pixels)

    st = copy_digits(tmp_path / "st")
    state = torch.load(DIGITS / "weights.pt", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(st / "weights.safetensors"))
    edit_manifest(st, weights="weights.safetensors")
    np.testing.assert_allclose(probabilities(st, pixels), expected, atol=1e-6)

    exported = copy_digits(tmp_path / "exported")
    module = archs.build("digits_cnn", num_classes=10)
    module.load_state_dict(state)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        module.eval(), (torch.zeros(2, 1, 32, 32),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(exported / "model.pt2"))
    manifest = json.loads((exported / "model.json").read_text())
    for key in ("arch", "arch_kwargs", "weights"):
        manifest.pop(key)
    manifest["program"] = "model.pt2"
    (exported / "model.json").write_text(json.dumps(manifest))
    np.testing.assert_allclose(probabilities(exported, pixels), expected, atol=1e-5)


def test_jit_can_be_switched_off_per_model(tmp_path: Path) -> None:
    directory = copy_digits(tmp_path / "digits")
    assert read_manifest(directory, "d").jit
    edit_manifest(directory, jit=False)
    assert not read_manifest(directory, "d").jit
    edit_manifest(directory, jit="no")
    with pytest.raises(ModelStoreError, match="jit must be true or false"):
        read_manifest(directory, "d")
