"""`emotalk-export`: a checkpoint -> an engine artifact (ONNX, and a TensorRT plan when asked)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..training.errors import UserError, add_debug_flag, run_cli
from .interface import ENCODER_FRAME_MS
from .onnx_export import export_artifact
from .torch_backend import checkpoint_model

PROG = "emotalk-export"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Export the streaming step of a model as an engine artifact "
                               "(manifest.json + model.onnx [+ model.plan]).")
    parser.add_argument("--model", default="default", help="'default' (bundled) or a checkpoint folder")
    parser.add_argument("--out", type=Path, required=True, help="artifact folder to write")
    parser.add_argument("--backend", choices=("onnxruntime", "tensorrt"), default="onnxruntime",
                        help="onnxruntime (CPU; the default) or tensorrt (also builds a TensorRT plan; needs a GPU)")
    parser.add_argument("--hop-ms", type=int, default=20, help=f"audio per step, a multiple of {ENCODER_FRAME_MS} (default: 20)")
    parser.add_argument("--lookahead-ms", type=int, default=None,
                        help="future audio the model waits for, a multiple of 20 (default: the model's setting)")
    parser.add_argument("--fp16", action="store_true", help="TensorRT plan in FP16 (normalisation layers stay FP32)")
    parser.add_argument("--max-streams", type=int, default=64, help="largest batch of streams per step (default: 64)")
    add_debug_flag(parser)
    return parser


def _run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    model, digest = checkpoint_model(args.model, "cpu")
    if model.cfg.family != "small":
        raise UserError(f"model family {model.cfg.family!r} streams with sliding windows on the torch backend; "
                        f"only the streaming 'small' family exports to an engine artifact")
    lookahead_ms = model.cfg.lookahead * ENCODER_FRAME_MS if args.lookahead_ms is None else args.lookahead_ms
    kind = "tensorrt" if args.backend == "tensorrt" else "onnx"  # the manifest names the artifact's kind
    manifest = export_artifact(model, digest, args.out, kind, args.hop_ms, lookahead_ms,
                               args.fp16, args.max_streams)
    files = ", ".join(sorted(manifest.files))
    print(f"{PROG}: {args.out} ({files}; hop {manifest.hop_ms} ms, look-ahead {manifest.lookahead_ms} ms, "
          f"{manifest.precision}, up to {manifest.max_streams} streams per step) in "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, _run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
