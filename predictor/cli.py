"""The ``gpu-predictor`` command: ``serve`` and ``export``.

Arguments are parsed and validated here, in :func:`main`; nothing is wired at import.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from predictor import __version__
from predictor.config import SettingsError
from predictor.config_sources import add_serve_arguments, check_paths, settings_from


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser with its ``serve`` and ``export`` subcommands."""
    parser = argparse.ArgumentParser(
        prog="gpu-predictor",
        description="GPU image-inference server: a KServe predictor with dynamic batching.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve the models of a model directory over KServe v1/v2 REST and gRPC",
        description="Serve every model found under --model-dir. Every flag can also be set "
        "through its PREDICTOR_* environment variable; flags win.",
    )
    add_serve_arguments(serve)
    export = commands.add_parser(
        "export",
        help="write a model directory for a torchvision classifier or detector",
        description="Write model.json, weights and labels for ARCH into --output.",
    )
    export.add_argument(
        "arch",
        metavar="ARCH",
        help="a classifier (e.g. resnet18, mobilenet_v3_small) or a detector (e.g. "
        "fasterrcnn_mobilenet_v3_large_fpn, retinanet_resnet50_fpn_v2, ssd300_vgg16)",
    )
    export.add_argument("--output", required=True, type=Path, metavar="DIR")
    export.add_argument(
        "--weights",
        default="DEFAULT",
        metavar="DEFAULT|none|FILE",
        help="DEFAULT: torchvision's pretrained weights (downloaded); none: random; "
        "FILE: a local state dict (.pt/.pth/.safetensors)",
    )
    export.add_argument(
        "--format",
        choices=("state-dict", "exported-program"),
        default="state-dict",
        help="state-dict (weights.pt, loaded with weights_only=True) or a torch.export "
        "program (model.pt2, dynamic batch dimension)",
    )
    export.add_argument("--top-k", type=int, default=5, help="a classifier's default top_k")
    export.add_argument(
        "--score-threshold",
        type=float,
        default=0.5,
        help="a detector's default score threshold (0..1)",
    )
    export.add_argument(
        "--max-detections", type=int, default=100, help="a detector's default detections per image"
    )
    return parser


@contextlib.contextmanager
def _bare_argv() -> Iterator[None]:
    """Hide our arguments from KServe, whose import parses ``sys.argv`` on its own."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` by default.

    Returns:
        The exit code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            settings = settings_from(args)
            check_paths(settings)
        except SettingsError as exc:
            parser.exit(2, f"gpu-predictor serve: error: {exc}\n")
        logging.basicConfig(
            level=settings.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        with _bare_argv():
            from predictor import server
            from predictor.runtime.devices import DeviceError
            from predictor.store.manifest import ModelStoreError
        try:
            return server.serve(settings)
        except (DeviceError, ModelStoreError) as exc:
            parser.exit(2, f"gpu-predictor serve: error: {exc}\n")
    if args.command == "export":
        logging.basicConfig(level="INFO", format="%(message)s")
        from predictor.store.export import ExportError, export_model
        from predictor.store.spec import Thresholds

        try:
            thresholds = Thresholds(args.score_threshold, args.max_detections)
        except ValueError as exc:
            parser.exit(
                2, f"gpu-predictor export: error: --score-threshold/--max-detections: {exc}\n"
            )
        try:
            export_model(args.arch, args.output, args.weights, args.format, args.top_k, thresholds)
        except ExportError as exc:
            parser.exit(2, f"gpu-predictor export: error: {exc}\n")
        return 0
    parser.print_help()
    return 2
