"""`emotalk-bench`: step latency, real-time factor, concurrent streams, memory and streaming gap.

Speech is fed the way a microphone delivers it, one hop per stream per step, and only the step
(decode of every stream's hop in one batch, frames collected) is timed. The streaming gap is the
relative rise of lip_mae of the streamed output over offline `emotalk-infer` (the model's own
look-ahead, whole clip), on the test split of a corpus.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.artifact import read_manifest
from ..engine.backends import BACKENDS
from ..engine.engine import Controls, Engine, bundled_engine_has
from ..engine.interface import ENCODER_FRAME_MS
from ..training.audio import read_audio
from ..training.checkpoint import load_model
from ..training.model_files import SAMPLE_SPEECH, model_hash, resolve_checkpoint
from ..training.corpus import generate
from ..training.data import ClipInfo, by_split, load_folder, read_labels
from ..training.errors import UserError, add_debug_flag, run_cli
from ..training.offline import infer
from ..training.metrics import lip_mae
from ..training.model import EmoTalk

PROG = "emotalk-bench"
WARMUP_STEPS = 20
SEARCH_SECONDS = 2.0  # audio per stream for each batch size tried by the stream-count search
STREAM_LIMIT = 4096


def current_rss_mb() -> float:
    """Resident memory now (Linux /proc), or the process's peak where /proc is absent."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def speech(seconds: float, sample_rate: int) -> np.ndarray:
    """`seconds` of real speech: the bundled voice clip, repeated."""
    clip = read_audio(SAMPLE_SPEECH, sample_rate)
    return np.take(clip, np.arange(int(seconds * sample_rate)), mode="wrap")


def time_steps(engine: Engine, streams: int, seconds: float, track_memory: bool = False) -> dict[str, Any]:
    """Feed `streams` streams hop by hop with `seconds` of speech each; time every step.

    The voice clip is read hop by hop, wrapping around, so an hour of input costs no memory."""
    clip = read_audio(SAMPLE_SPEECH, engine.sample_rate)
    hop = engine.hop_samples
    steps = WARMUP_STEPS + int(seconds * engine.sample_rate) // hop
    group = [engine.create_stream() for _ in range(streams)]
    times = np.zeros(steps - WARMUP_STEPS)  # preallocated: the bench's own memory stays flat too
    delays = np.full(steps, np.nan)  # first stream's last frame of each step
    peak = current_rss_mb()
    try:
        for n in range(steps):
            block = np.take(clip, np.arange(n * hop, (n + 1) * hop), mode="wrap")
            for stream in group:
                stream.accept_waveform(engine.sample_rate, block)
            began = time.perf_counter()
            engine.step(group)
            frames = [list(stream.frames()) for stream in group]
            elapsed = time.perf_counter() - began
            if n >= WARMUP_STEPS:
                times[n - WARMUP_STEPS] = elapsed * 1000.0
                if frames[0]:
                    consumed = (n + 1) * hop - engine.preroll  # the step's hops start `preroll` early
                    delays[n] = (consumed / engine.sample_rate - frames[0][0].time) * 1000.0
                if track_memory and n % 50 == 0:
                    peak = max(peak, current_rss_mb())
    finally:
        for stream in group:
            stream.close()
    ms, delays = times, delays[np.isfinite(delays)]
    return {
        "step_ms_p50": float(np.percentile(ms, 50)), "step_ms_p95": float(np.percentile(ms, 95)),
        "step_ms_p99": float(np.percentile(ms, 99)), "step_ms_mean": float(ms.mean()),
        "rtf": float(ms.mean() / engine.hop_ms), "steps": len(ms),
        "frame_delay_ms_mean": float(delays.mean()) if len(delays) else None,
        "frame_delay_ms_max": float(delays.max()) if len(delays) else None,
        "peak_rss_mb": max(peak, current_rss_mb()),
    }


def max_realtime_streams(engine: Engine, progress: bool) -> int:
    """Largest batch of streams whose step p95 stays within the hop (every hop decoded in time)."""
    def realtime(n: int) -> bool:
        p95 = time_steps(engine, n, SEARCH_SECONDS)["step_ms_p95"]
        if progress:
            print(f"{PROG}: {n} streams: step p95 {p95:.2f} ms (hop {engine.hop_ms} ms)", file=sys.stderr)
        return p95 <= engine.hop_ms

    good, bad = 0, None
    n = 1
    while n <= STREAM_LIMIT:
        if not realtime(n):
            bad = n
            break
        good, n = n, n * 2
    if bad is None:
        return good
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if realtime(middle) else (good, middle)
    return good


def gap_clips(data: Path | None, hours: float, progress: bool) -> tuple[list[ClipInfo], tempfile.TemporaryDirectory | None]:
    """The test split of `data`, or of a fresh corpus (seed 2, never used for training)."""
    scratch = None
    if data is None:
        scratch = tempfile.TemporaryDirectory(prefix="emotalk-bench-")
        data = Path(scratch.name)
        if progress:
            print(f"{PROG}: generating a {hours} h test corpus (seed 2) for the streaming gap", file=sys.stderr)
        generate(data, hours, seed=2, workers=2, overwrite=True, progress=False)
    clips = by_split(load_folder(data), "test")
    if not clips:
        raise UserError(f"{data} has no test split: give a corpus folder made by emotalk-corpus")
    return clips, scratch


def streaming_gap(engine: Engine, model: EmoTalk, clips: list[ClipInfo]) -> dict[str, Any]:
    """lip_mae of the engine's streamed output vs offline inference, on the same clips and controls."""
    cfg = model.cfg
    audio = [read_audio(c.wav, cfg.sample_rate) for c in clips]
    labels = [read_labels(c.labels) for c in clips]
    controls = [Controls(level=float(c.level), person=c.person, emotion="auto") for c in clips]  # as infer()
    streamed = engine.process(audio, controls)
    offline = [infer(model, a, level=float(c.level), person=c.person)[0] for a, c in zip(audio, clips)]

    def pooled(preds: list[np.ndarray]) -> float:
        n = [min(len(p), len(y)) for p, y in zip(preds, labels)]
        return lip_mae(np.concatenate([p[:k] for p, k in zip(preds, n)]), np.concatenate([y[:k] for y, k in zip(labels, n)]))

    stream_mae, offline_mae = pooled(streamed), pooled(offline)
    return {"streaming_gap": stream_mae / offline_mae - 1.0, "lip_mae_streaming": stream_mae,
            "lip_mae_offline": offline_mae, "gap_clips": len(clips),
            "offline_lookahead_ms": cfg.lookahead * ENCODER_FRAME_MS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Benchmark the streaming engine on real speech.")
    parser.add_argument("--model", default="default",
                        help="'default' or a checkpoint folder: streamed directly, and the offline reference for the gap")
    parser.add_argument("--engine", type=Path, default=None, help="an exported engine artifact folder (emotalk-export)")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="torch, onnxruntime or tensorrt (default, as in every command: onnxruntime for the "
                             "bundled model at its own hop and look-ahead and for --engine (or the artifact's own), "
                             "torch for a checkpoint)")
    parser.add_argument("--hop-ms", type=int, default=20, help="with --model: audio per step (default: 20)")
    parser.add_argument("--lookahead-ms", type=int, default=None, help="with --model: look-ahead (default: the model's)")
    parser.add_argument("--streams", type=int, default=1, help="streams decoded together per step (default: 1)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of speech per stream (default: 20)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the backend (default: 1 for onnxruntime, PyTorch's own for torch)")
    parser.add_argument("--device", default="cpu", help="torch backend device, cpu or cuda (default: cpu)")
    parser.add_argument("--data", type=Path, default=None,
                        help="corpus folder whose test split measures the gap (default: a fresh 0.2 h corpus, seed 2)")
    parser.add_argument("--gap-hours", type=float, default=0.2, help="size of that fresh corpus (default: 0.2)")
    parser.add_argument("--no-gap", action="store_true", help="skip the streaming-gap measurement")
    parser.add_argument("--no-search", action="store_true", help="skip the search for the most real-time streams")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--startup", action="store_true",
                        help="instead: the runtime's startup and footprint (--help time, first packet, peak RSS, torch imported)")
    parser.add_argument("--venv-size", action="store_true",
                        help="with --startup: also pip install . into a fresh venv and report its size (needs the index or pip's cache)")
    add_debug_flag(parser)
    return parser


def load_engine(args: argparse.Namespace) -> tuple[Engine, str]:
    """The engine to time, and the checkpoint folder of its model (the offline reference)."""
    reference = resolve_checkpoint(args.model)
    if args.engine is not None:
        engine = Engine.from_artifact(args.engine, args.backend, threads=args.threads)
        if not args.no_gap and read_manifest(args.engine).source_sha256 != model_hash(reference):
            raise UserError(f"{args.engine} was exported from another checkpoint than --model {args.model}: "
                            f"pass the source checkpoint with --model, or use --no-gap")
        return engine, reference
    # The default of Engine.load, which every other command uses.
    bundled = args.model == "default" and bundled_engine_has(args.hop_ms, args.lookahead_ms)
    backend = args.backend or ("onnxruntime" if bundled else "torch")
    if backend == "torch":
        return Engine.from_checkpoint(args.model, backend, args.hop_ms, args.lookahead_ms, args.device,
                                      args.threads), reference
    # Export in a child process, so the exporter's memory does not count in this one's RSS.
    folder = Path(tempfile.mkdtemp(prefix="emotalk-bench-engine-"))
    command = [sys.executable, "-m", "emotalk_stream.engine.export", "--model", str(reference), "--out", str(folder),
               "--backend", "tensorrt" if backend == "tensorrt" else "onnxruntime", "--hop-ms", str(args.hop_ms)]
    if args.lookahead_ms is not None:
        command += ["--lookahead-ms", str(args.lookahead_ms)]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "emotalk-export failed")
        return Engine.from_artifact(folder, backend, threads=args.threads), reference
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(args: argparse.Namespace) -> None:
    if args.startup:
        from .startup import run_startup  # measures fresh child processes; needs no engine here

        run_startup(args.json, args.venv_size)
        return
    if args.streams < 1 or not args.seconds > 0:
        raise UserError("--streams must be at least 1 and --seconds more than 0")
    progress = not args.json or sys.stderr.isatty()
    engine, reference = load_engine(args)
    result: dict[str, Any] = {"backend": engine.backend.name, "model": str(args.engine or args.model), "hop_ms": engine.hop_ms,
                              "lookahead_ms": engine.lookahead_ms, "streams": args.streams, "seconds": args.seconds,
                              "threads": args.threads}
    result.update(time_steps(engine, args.streams, args.seconds, track_memory=True))
    result["max_realtime_streams"] = None if args.no_search else max_realtime_streams(engine, progress)
    result["streaming_gap"] = None
    if not args.no_gap:
        clips, scratch = gap_clips(args.data, args.gap_hours, progress)
        try:
            result.update(streaming_gap(engine, load_model(reference), clips))
        finally:
            if scratch is not None:
                scratch.cleanup()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    gap = result["streaming_gap"]
    print(f"{result['backend']}: {args.streams} stream(s), hop {engine.hop_ms} ms, look-ahead {engine.lookahead_ms} ms: "
          f"step p50 {result['step_ms_p50']:.2f} / p95 {result['step_ms_p95']:.2f} / p99 {result['step_ms_p99']:.2f} ms, "
          f"RTF {result['rtf']:.3f}, peak RSS {result['peak_rss_mb']:.0f} MB, "
          f"real-time streams {result['max_realtime_streams']}, "
          f"streaming gap {'n/a' if gap is None else f'{100 * gap:+.1f}%'}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, _run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
