"""Where settings come from: CLI flags, then ``PREDICTOR_*`` environment variables.

The flags and variables are generated from the fields of
:class:`~predictor.config.Settings` (each declared once, with its help and parser there);
paths the settings name are checked here, in ``main()``, not when settings are built.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from predictor.config import Settings, SettingsError, check, env_name, flag_name, parse_bool


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every setting to ``parser`` (defaults resolved later, see ``settings_from``).

    Each flag is also accepted in KServe's spelling, with underscores (``--model_name``,
    ``--model_dir``, ``--http_port``): the args KServe's serving runtimes pass.
    """
    for setting in fields(Settings):
        meta = setting.metadata
        metavar = meta["metavar"] or setting.name.split("_")[-1].upper()
        if meta["parse"] is parse_bool:
            metavar = "BOOL"
        parser.add_argument(
            flag_name(setting.name),
            dest=setting.name,
            default=None,
            metavar=metavar,
            help=f"{meta['help']} [env {env_name(setting.name)}; default {setting.default}]",
        )
        if "_" in setting.name:
            parser.add_argument(
                f"--{setting.name}", dest=setting.name, default=None, help=argparse.SUPPRESS
            )


def settings_from(
    args: argparse.Namespace | Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve flags, then env vars, then defaults, convert and validate.

    Args:
        args: parsed flags (values are raw strings, None when absent).
        environ: environment to read ``PREDICTOR_*`` from; ``os.environ`` by default.

    Returns:
        The validated settings.

    Raises:
        SettingsError: a value does not convert or fails validation.
    """
    env = os.environ if environ is None else environ
    raw = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    values: dict[str, Any] = {}
    for setting in fields(Settings):
        name, flag = setting.name, flag_name(setting.name)
        text = raw.get(name)
        source = flag
        if text is None and env_name(name) in env:
            text, source = env[env_name(name)], env_name(name)
        if text is None or (isinstance(text, str) and text == "" and source != flag):
            continue
        convert = setting.metadata["parse"]
        try:
            values[name] = convert(text) if isinstance(text, str) else text
        except ValueError as exc:
            raise SettingsError(f"{source}: invalid value {text!r} ({exc})") from None
    return Settings(**values)


def check_paths(settings: Settings) -> None:
    """Check what the settings name on disk (called by ``main()``, before serving).

    Raises:
        SettingsError: the model directory is missing, or the token file is missing or empty.
    """
    check(settings.model_dir.is_dir(), f"--model-dir {settings.model_dir} is not a directory")
    token = settings.auth_token_file
    if token is not None:
        check(token.is_file(), f"--auth-token-file {token} is not a readable file")
        check(bool(settings.auth_token()), f"--auth-token-file {token} is empty")
