"""`emotalk-stream`: a voice from a microphone, a file or a pipe to avatars, live.

    emotalk-stream --mic default --osc 127.0.0.1:9000
    emotalk-stream --wav speech.wav --livelink 127.0.0.1:11111 --ws 127.0.0.1:8765
    ffmpeg -i talk.mp3 -f s16le -ac 1 -ar 16000 - | emotalk-stream --stdin --record face.csv
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from ..engine import Controls, Engine
from ..engine.artifact import MANIFEST_FILE, is_artifact
from ..engine.backends import BACKENDS
from ..training.blendshapes import REGIONS
from ..training.errors import UserError, add_debug_flag, run_cli
from . import console as console_module
from .address import parse_address, parse_listen_address
from .controls import ControlBoard
from .face import MAX_SMOOTHING_S, FaceSettings
from .livelink import LiveLinkSink
from .osc_control import OscControlServer
from .osc_sink import OscSink
from .pipeline import Streamer, Summary
from .recorder import Recorder
from .sink import Sink
from .sources import MicSource, Source, StdinSource, WavSource, list_devices
from .websocket_sink import WebSocketSink

PROG = console_module.PROG
TOKEN_ENV = "EMOTALK_TOKEN"  # --token's default, kept out of `ps`
log = logging.getLogger("emotalk_stream.streamer.cli")  # also when run as __main__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Stream 52 ARKit blendshapes with emotion from a voice "
                                "to VTuber apps (OSC/VMC), Unreal Engine (Live Link Face) and browsers (WebSocket).")
    src = p.add_argument_group("audio source (one of)")
    one = src.add_mutually_exclusive_group()
    one.add_argument("--mic", metavar="NAME|INDEX|default", help="a microphone (see --list-devices)")
    one.add_argument("--wav", metavar="FILE", help="an audio file, played at the speed of a microphone")
    one.add_argument("--stdin", action="store_true", help="raw PCM on standard input (TTS, ffmpeg)")
    one.add_argument("--list-devices", action="store_true", help="list the microphones and exit")
    src.add_argument("--no-pace", action="store_true", help="--wav as fast as possible instead of in real time")
    src.add_argument("--exit-on-device-loss", action="store_true",
                     help="stop when the microphone goes away (default: neutral face, wait for it to come back)")
    src.add_argument("--stdin-format", choices=("s16le", "f32le"), default="s16le", help="--stdin sample format")
    src.add_argument("--stdin-rate", type=int, default=16000, metavar="HZ", help="--stdin sample rate (default 16000)")
    src.add_argument("--stdin-channels", type=int, default=1, metavar="N", help="--stdin channels, mixed down")

    model = p.add_argument_group("model")
    model.add_argument("--model", default="default", metavar="default|PATH", help="a checkpoint folder (default: bundled)")
    model.add_argument("--engine", metavar="DIR", help="an engine exported by emotalk-export (instead of --model)")
    model.add_argument("--backend", choices=BACKENDS, help="torch for a checkpoint (default), the artifact's own for --engine")
    model.add_argument("--lookahead-ms", type=int, metavar="MS", help="future audio the model waits for (checkpoint "
                       "only; default the model's own, 40)")
    model.add_argument("--threads", type=int, default=1, metavar="N", help="CPU threads for the engine (default 1)")

    out = p.add_argument_group("outputs (any number)")
    out.add_argument("--osc", action="append", default=[], metavar="HOST:PORT", help="OSC over UDP, e.g. 127.0.0.1:39539 for VSeeFace")
    out.add_argument("--osc-format", action="append", choices=("vmc", "arkit"), default=[],
                     help="vmc: VMC perfect-sync names + VRM presets (default); arkit: /emotalk/arkit, 52 floats; "
                          "once for every --osc, or once per --osc in the same order")
    out.add_argument("--livelink", action="append", default=[], metavar="HOST:PORT", help="Live Link Face UDP, e.g. 127.0.0.1:11111")
    out.add_argument("--subject", default="EmoTalk", help="Live Link subject name (default EmoTalk)")
    out.add_argument("--ws", metavar="[HOST:]PORT", help="WebSocket JSON frames + a viewer page at http://HOST:PORT/; "
                     "HOST defaults to 127.0.0.1 (this machine only), 0.0.0.0 is every network")
    out.add_argument("--token", metavar="TOKEN", help="--ws clients must send TOKEN (?token=TOKEN or Authorization: "
                     f"Bearer TOKEN); the viewer is then http://HOST:PORT/?token=TOKEN. Default: ${TOKEN_ENV}, "
                     "which keeps it out of the process list")
    out.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                     help="also let scripts of the web page at ORIGIN (e.g. http://localhost:3000) connect to --ws; "
                          "repeatable (the viewer's own origin always may)")
    out.add_argument("--wait-for-client", action="store_true",
                     help="start the input only once a --ws client is connected, so it sees every frame")
    out.add_argument("--record", action="append", default=[], metavar="FILE.csv|FILE.npy", help="record the frames")
    out.add_argument("--control", metavar="[HOST:]PORT", help="accept live controls over OSC (/emotalk/emotion "
                     "...); HOST defaults to 127.0.0.1 (OSC has no authentication)")

    face = p.add_argument_group("face")
    face.add_argument("--fps", type=int, choices=(30, 60), default=30, help="output frame rate (60 is interpolated)")
    face.add_argument("--emotion", default="auto", metavar="auto|LABEL[:S]", help="auto (from the voice) or e.g. happy:0.7")
    face.add_argument("--level", default="high", metavar="low|high|FLOAT", help="emotion level (default high)")
    face.add_argument("--person", default="0", metavar="N", help="speaking style, 0-23 (default 0)")
    face.add_argument("--smoothing", type=float, default=0.0, metavar="SECONDS", help="causal smoothing time constant (default 0: off)")
    face.add_argument("--no-blink", action="store_true", help="no procedural blinks")
    face.add_argument("--gain", action="append", default=[], metavar="REGION=FACTOR",
                      help=f"scale a face region, repeatable: {', '.join(REGIONS)}")
    face.add_argument("--seed", type=int, default=0, help="seed of the blink timing")

    p.add_argument("--quiet", action="store_true", help="no status line or info messages, warnings only")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, run, build_parser(), argv)


def run(args: argparse.Namespace) -> int:
    with console_module.native_stderr_diverted(keep=args.debug):
        return stream(args)


def stream(args: argparse.Namespace) -> int:
    if args.list_devices:
        print(list_devices())
        return 0
    console = console_module.install(args.quiet)
    source = make_source(args)
    outputs = [*args.osc, *args.livelink, *([args.ws] if args.ws else []), *args.record]
    if not outputs:
        raise UserError("nothing to send to: add --osc HOST:PORT, --livelink HOST:PORT, --ws HOST:PORT or --record FILE")
    face = FaceSettings(smoothing=check_smoothing(args.smoothing), blink=not args.no_blink)
    controls = Controls(level=args.level, person=args.person, emotion=args.emotion, gains=parse_gains(args.gain))
    engine = load_engine(args)
    board = ControlBoard(engine, controls, face)
    sinks = make_sinks(args, board)
    opened: list[Sink] = []
    control: OscControlServer | None = None
    try:
        for sink in sinks:
            sink.open()
            opened.append(sink)
        if args.control:
            control = OscControlServer(*parse_listen_address(args.control, "--control"), board)
            control.open()
        if args.wait_for_client:
            wait_for_client(sinks)
        streamer = Streamer(source, engine, board, sinks, args.fps, console, args.seed, args.exit_on_device_loss)
        log.info("streaming %s at %d fps to %s (Ctrl-C stops)", describe_source(args), args.fps,
                 ", ".join(s.name for s in sinks))
        summary = with_signals(streamer.run)
    finally:
        for sink in opened:
            sink.close()  # already closed with a neutral frame where streaming started
        if control is not None:
            control.close()
    report(summary)
    return 0


def wait_for_client(sinks: list[Sink]) -> None:
    """Hold the input until a WebSocket client is connected, so it sees the stream from frame 0."""
    ws = next((s for s in sinks if isinstance(s, WebSocketSink)), None)
    if ws is None:
        raise UserError("--wait-for-client waits for a WebSocket client: add --ws [HOST:]PORT")
    log.info("waiting for a client at %s (Ctrl-C stops)", ws.url)
    while ws.clients == 0:
        time.sleep(0.05)


def make_source(args: argparse.Namespace) -> Source:
    if args.mic is not None:
        return MicSource(args.mic)
    if args.wav is not None:
        return WavSource(args.wav, pace=not args.no_pace)
    if args.stdin:
        return StdinSource(args.stdin_format, args.stdin_rate, args.stdin_channels)
    raise UserError("no audio source: give --mic default (or a name from --list-devices), --wav FILE or --stdin")


def describe_source(args: argparse.Namespace) -> str:
    if args.mic is not None:
        return f"microphone {args.mic!r}"
    if args.wav is not None:
        return f"{args.wav}" + (" (as fast as possible)" if args.no_pace else "")
    return f"stdin ({args.stdin_format}, {args.stdin_rate} Hz)"


def make_sinks(args: argparse.Namespace, board: ControlBoard) -> list[Sink]:
    """Every sink, with every address checked before any socket is opened."""
    formats = args.osc_format or ["vmc"]
    if len(formats) not in (1, len(args.osc)):
        raise UserError(f"{len(formats)} --osc-format for {len(args.osc)} --osc: give one format for all, "
                        f"or one per --osc in the same order")
    formats = formats * len(args.osc) if len(formats) == 1 else formats
    sinks: list[Sink] = [OscSink(*parse_address(a, "--osc"), f) for a, f in zip(args.osc, formats)]
    sinks += [LiveLinkSink(*parse_address(a, "--livelink"), args.subject) for a in args.livelink]
    if (args.token or args.allow_origin) and not args.ws:
        raise UserError("--token and --allow-origin protect the WebSocket server: add --ws [HOST:]PORT")
    if args.ws:
        token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
        sinks.append(WebSocketSink(*parse_listen_address(args.ws, "--ws"), board, token=token,
                                   allowed_origins=args.allow_origin))
    sinks += [Recorder(path) for path in args.record]
    return sinks


def load_engine(args: argparse.Namespace) -> Engine:
    if args.engine:
        if args.lookahead_ms is not None:
            raise UserError("--lookahead-ms is for a checkpoint (--model); an engine artifact has its own: "
                            "export another one with emotalk-export --lookahead-ms")
        if not is_artifact(args.engine):
            raise UserError(f"--engine {args.engine} is not an engine artifact (no {MANIFEST_FILE}): export one with "
                            "emotalk-export --out DIR, or pass a checkpoint folder with --model")
        return Engine.load(args.engine, args.backend, threads=args.threads)
    return Engine.load(args.model, args.backend or "torch", lookahead_ms=args.lookahead_ms, threads=args.threads)


def parse_gains(items: list[str]) -> dict[str, float]:
    gains = {}
    for item in items:
        region, sep, value = item.partition("=")
        try:
            gains[region.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise UserError(f"--gain {item!r} is not REGION=FACTOR, e.g. --gain mouth=1.3 ({', '.join(REGIONS)})")
    return gains


def check_smoothing(seconds: float) -> float:
    if not 0.0 <= seconds <= MAX_SMOOTHING_S:
        raise UserError(f"--smoothing {seconds} is not a number of seconds from 0 to {MAX_SMOOTHING_S}")
    return seconds


def with_signals(body: Callable[[threading.Event], Summary]) -> Summary:
    """Run `body(stop)` with Ctrl-C and SIGTERM setting `stop`; a second Ctrl-C exits at once."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            os._exit(130)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return body(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def report(summary: Summary) -> None:
    latency = "" if summary.latency_ms is None else (
        f", latency p50 {summary.latency_ms[0]:.0f} ms p95 {summary.latency_ms[1]:.0f} ms")
    how = "stopped" if summary.stopped else "end of input"
    log.info("%s: %d frames for %.2f s of audio%s, %d dropped, %d overruns", how, summary.frames,
             summary.audio_seconds, latency, summary.drops, summary.overruns)


if __name__ == "__main__":
    sys.exit(main())
