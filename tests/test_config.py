"""Settings: flags beat env vars beat defaults; bad values exit 2 with one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from predictor.cli import build_parser
from predictor.config import Settings, SettingsError, env_name, flag_name, known_fields
from predictor.config_sources import check_paths, settings_from
from tests.support import DIGITS, ROOT


def resolve(flags: dict[str, str | None], env: dict[str, str] | None = None) -> Settings:
    raw: dict[str, str | None] = dict.fromkeys(known_fields())
    raw.update(flags)
    settings = settings_from(raw, env or {})
    check_paths(settings)
    return settings


def test_defaults() -> None:
    settings = resolve({"model_dir": str(DIGITS)})
    assert (settings.http_port, settings.grpc_port) == (8080, 8081)
    assert settings.max_body_bytes == 32 * 1024 * 1024
    assert settings.max_image_pixels == 40_000_000
    assert settings.request_timeout_ms == 30_000
    assert settings.drain_timeout_s == 25
    assert settings.devices == "auto"
    assert settings.auth_token() is None
    assert Settings().model_dir == Path("models")  # the CLI's default model directory


def test_env_vars_set_every_option_and_flags_win() -> None:
    env = {
        env_name("model_dir"): str(DIGITS),
        env_name("max_batch_size"): "8",
        env_name("max_batch_delay_ms"): "2.5",
        env_name("devices"): "cpu,cpu",
        env_name("dtype"): "bfloat16",
        env_name("enable_grpc"): "false",
    }
    settings = resolve({"max_batch_size": "16"}, env)
    assert settings.max_batch_size == 16  # flag beats env
    assert settings.max_batch_delay_ms == 2.5
    assert settings.device_list() == ["cpu", "cpu"]
    assert settings.dtype == "bfloat16"
    assert settings.enable_grpc is False


def test_help_lists_every_setting_with_its_env_var_and_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in known_fields():
        assert f"{flag_name(field)} " in text, field
        assert f"[env PREDICTOR_{field.upper()}; default " in text, field


def test_auth_token_is_stripped(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("  s3cret\n")
    assert (
        resolve({"model_dir": str(DIGITS), "auth_token_file": str(token)}).auth_token() == "s3cret"
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"max_batch_delay_ms": "-1"}, "--max-batch-delay-ms must be in 0..10000"),
        ({"devices": "tpu:0"}, "unknown device 'tpu:0'"),
        (
            {"model_dir": "/nonexistent/models"},
            "--model-dir /nonexistent/models is not a directory",
        ),
        ({"max_batch_size": "64", "queue_capacity": "16"}, "must be >= --max-batch-size"),
        ({"http_port": "9000", "grpc_port": "9000"}, "must differ"),
        ({"max_batch_size": "many"}, "--max-batch-size: invalid value 'many'"),
        ({"dtype": "int8"}, "--dtype must be one of"),
        ({"max_body_bytes": "10"}, "--max-body-bytes must be >= 1024"),
        (
            {"request_timeout_ms": "5", "max_batch_delay_ms": "5"},
            "must be below --request-timeout-ms",
        ),
        ({"auth_token_file": "/nonexistent/token"}, "is not a readable file"),
        ({"model_control": "poll"}, "--model-control must be one of none, explicit"),
        ({"load_models": "a,,b"}, "--load-models must be all, none or a comma-separated"),
        ({"load_models": "none"}, "--load-models none serves nothing unless"),
        ({"docs": "maybe"}, "--docs: invalid value 'maybe'"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(flags: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("[", r"\[")):
        resolve({"model_dir": str(DIGITS), **flags})


def test_model_management_settings() -> None:
    defaults = resolve({"model_dir": str(DIGITS)})
    assert (defaults.model_control, defaults.load_models, defaults.docs) == ("none", "all", True)
    assert defaults.models_to_load() is None
    explicit = resolve(
        {"model_dir": str(DIGITS), "model_control": "explicit", "load_models": "none"}
    )
    assert explicit.models_to_load() == []
    named = resolve({"model_dir": str(DIGITS)}, {"PREDICTOR_LOAD_MODELS": "digits,resnet-50"})
    assert named.models_to_load() == ["digits", "resnet-50"]


def test_cli_refuses_a_model_to_load_that_is_not_there() -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "predictor", "serve"),
            *("--model-dir", str(DIGITS.parent), "--load-models", "digits,nope"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    assert "--load-models: no model directory for nope" in result.stderr
    assert "Traceback" not in result.stderr


def test_env_var_errors_name_the_variable() -> None:
    with pytest.raises(SettingsError, match="PREDICTOR_HTTP_PORT: invalid value 'x'"):
        resolve({"model_dir": str(DIGITS)}, {"PREDICTOR_HTTP_PORT": "x"})


def test_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "predictor", "serve", "--max-batch-delay-ms", "-1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gpu-predictor serve: error: --max-batch-delay-ms must be in 0..10000 (got -1)"
    ]


def test_cli_refuses_an_unavailable_device() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "predictor",
            "serve",
            "--model-dir",
            str(DIGITS),
            "--devices",
            "cuda:99",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    assert "unknown device cuda:99" in result.stderr
    assert "Traceback" not in result.stderr


def test_available_cpus_honours_a_cgroup_quota(tmp_path: Path) -> None:
    import os

    from predictor.cpus import available_cpus

    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a 1.5-CPU limit
    assert available_cpus(tmp_path) == min(affinity, 2)
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(v1) == 1


def test_kserve_runtime_args_are_accepted_in_kserve_spelling(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """KServe's runtimes pass --model_name={{.Name}} --model_dir=/mnt/models --http_port=8080."""
    args = build_parser().parse_args(
        ["serve", "--model-dir", "/elsewhere", "--model_name=resnet-prod",
         f"--model_dir={DIGITS}", "--http_port=8090", "--grpc_port", "8091"]
    )  # fmt: skip
    settings = settings_from(args, {})
    assert settings.model_name == "resnet-prod"
    assert settings.model_dir == DIGITS  # the later flag wins, whichever spelling
    assert (settings.http_port, settings.grpc_port) == (8090, 8091)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    shown = capsys.readouterr().out
    assert "--model-name" in shown
    assert "--model_name" not in shown  # accepted, not advertised twice
