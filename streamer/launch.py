"""From `emotalk-stream`'s parsed arguments to a running streamer: everything the user can get
wrong is checked first (source, addresses, files, controls), then the model loads, the sinks open
and the audio flows until its end, Ctrl-C or SIGTERM."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..engine import Controls, Engine
from ..engine.artifact import MANIFEST_FILE, is_artifact
from ..training.blendshapes import REGIONS
from ..training.errors import UserError
from . import console as console_module
from .address import parse_address, parse_listen_address
from .cli import STOP_SIGNALS, TOKEN_ENV
from .controls import ControlBoard
from .face import FaceSettings, check_motion, check_smoothing
from .ifacialmocap import DEFAULT_PORT as IFACIALMOCAP_PORT
from .ifacialmocap_sink import IFacialMocapSink
from .livelink import LiveLinkSink
from .osc_control import OscControlServer
from .osc_sink import DEFAULT_SHAPES, OscSink
from .pipeline import Streamer, Summary
from .recorder import Recorder
from .sink import Sink
from .sources import MicSource, Source, StdinSource, WavSource, list_devices
from .websocket_sink import WebSocketSink, read_avatar

log = logging.getLogger("emotalk_stream.streamer.cli")  # the command's logger, as in every message it prints


def stream(args: argparse.Namespace) -> int:
    if args.list_devices:
        print(list_devices())
        return 0
    console = console_module.install(args.quiet)
    # Everything the user can get wrong is checked before the model loads.
    source = make_source(args)
    outputs = parse_outputs(args)
    face = FaceSettings(smoothing=check_smoothing(args.smoothing, "--smoothing"), blink=not args.no_blink,
                        head_motion=check_motion(args.head_motion, "--head-motion"),
                        eye_motion=check_motion(args.eye_motion, "--eye-motion"))
    if args.seed < 0:
        raise UserError(f"--seed {args.seed} is negative: give a whole number from 0 up")
    controls = Controls(level=args.level, person=args.person, emotion=args.emotion, gains=parse_gains(args.gain),
                        voice_gate=not args.no_voice_gate, vocal_effort=not args.no_vocal_effort)
    control_address = parse_listen_address(args.control, "--control") if args.control else None
    source.check()
    engine = load_engine(args)
    board = ControlBoard(engine, controls, face)
    sinks = make_sinks(outputs, args, board)
    opened: list[Sink] = []
    control: OscControlServer | None = None
    try:
        for sink in sinks:
            sink.open()
            opened.append(sink)
        if control_address is not None:
            control = OscControlServer(*control_address, board)
            control.open()
        if args.wait_for_client:
            wait_for_client(sinks)
        streamer = Streamer(source, engine, board, sinks, args.fps, console, args.seed, args.exit_on_device_loss)
        log.info("streaming %s at %d fps to %s (Ctrl-C stops)", describe_source(args, source), args.fps,
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
    ws = next(s for s in sinks if isinstance(s, WebSocketSink))  # parse_outputs made sure of one
    log.info("waiting for a client at %s (Ctrl-C stops)", ws.url)
    while ws.clients == 0:
        time.sleep(0.05)


def make_source(args: argparse.Namespace) -> Source:
    pcm = {key: value for key, value in (("fmt", args.stdin_format), ("rate", args.stdin_rate),
                                         ("channels", args.stdin_channels)) if value is not None}
    if pcm and (args.mic is not None or args.wav is not None):
        given = [f"--stdin-{'format' if key == 'fmt' else key}" for key in pcm]
        source, what = ("--mic", "microphone") if args.mic is not None else ("--wav", "file")
        raise UserError(f"{', '.join(given)} only describe{'s' if len(given) == 1 else ''} the raw PCM of --stdin; "
                        f"{source} uses the {what}'s own format, rate and channels: leave "
                        f"{'it' if len(given) == 1 else 'them'} out")
    if args.mic is not None:
        return MicSource(args.mic)
    if args.wav is not None:
        return WavSource(args.wav, pace=not args.no_pace)
    if args.stdin:
        return StdinSource(**pcm)
    raise UserError("no audio source: give --mic default (or a name from --list-devices), --wav FILE or --stdin")


def describe_source(args: argparse.Namespace, source: Source) -> str:
    if isinstance(source, StdinSource):
        return f"stdin ({source.fmt}, {source.rate} Hz)"
    if args.mic is not None:
        return f"microphone {args.mic!r}"
    return f"{args.wav}" + (" (as fast as possible)" if args.no_pace else "")


@dataclass
class Outputs:
    """The outputs the command line asks for, checked; none is opened yet."""

    sinks: list[Sink]  # every output but the WebSocket server, which needs the control board
    ws: tuple[str, int] | None
    token: str | None


def parse_outputs(args: argparse.Namespace) -> Outputs:
    """Every output's address, format and file name, checked before any socket is opened or model loaded."""
    if not (args.osc or args.ifacialmocap or args.livelink or args.ws or args.record):
        raise UserError("nothing to send to: add --osc HOST:PORT, --ifacialmocap HOST, --livelink HOST:PORT, "
                        "--ws HOST:PORT or --record FILE, or --preset APP")
    formats = args.osc_format or ["vmc"]
    if len(formats) not in (1, len(args.osc)):
        raise UserError(f"{len(formats)} --osc-format for {len(args.osc)} --osc: give one format for all, "
                        f"or one per --osc in the same order")
    formats = formats * len(args.osc) if len(formats) == 1 else formats
    if (args.vmc_shapes != DEFAULT_SHAPES or args.vmc_unbundled) and "vmc" not in formats:
        raise UserError("--vmc-shapes and --vmc-unbundled shape VMC output: add --osc HOST:PORT in the vmc format "
                        "(the default), or leave them out")
    if (args.token or args.allow_origin) and not args.ws:
        raise UserError("--token and --allow-origin protect the WebSocket server: add --ws [HOST:]PORT")
    if args.wait_for_client and not args.ws:
        raise UserError("--wait-for-client waits for a WebSocket client: add --ws [HOST:]PORT")
    if args.avatar and not args.ws:
        raise UserError("--avatar is shown by the viewer page: add --ws [HOST:]PORT")
    if args.avatar:
        read_avatar(args.avatar, 4)
    sinks: list[Sink] = [OscSink(*parse_address(a, "--osc"), f, args.vmc_shapes, not args.vmc_unbundled)
                         for a, f in zip(args.osc, formats)]
    sinks += [IFacialMocapSink(*parse_address(a, "--ifacialmocap", default_port=IFACIALMOCAP_PORT))
              for a in args.ifacialmocap]
    sinks += [LiveLinkSink(*parse_address(a, "--livelink"), args.subject) for a in args.livelink]
    sinks += [Recorder(path) for path in args.record]
    return Outputs(sinks, parse_listen_address(args.ws, "--ws") if args.ws else None,
                   args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None)


def make_sinks(outputs: Outputs, args: argparse.Namespace, board: ControlBoard) -> list[Sink]:
    """The checked outputs and the WebSocket server, which serves the live controls too."""
    if outputs.ws is None:
        return outputs.sinks
    return [*outputs.sinks, WebSocketSink(*outputs.ws, board, token=outputs.token, allowed_origins=args.allow_origin,
                                          avatar=args.avatar, audio=args.wav)]


def load_engine(args: argparse.Namespace) -> Engine:
    if args.engine:
        if args.lookahead_ms is not None:
            raise UserError("--lookahead-ms is for a checkpoint (--model); an engine artifact has its own: "
                            "export another one with emotalk-export --lookahead-ms")
        if not is_artifact(args.engine):
            raise UserError(f"--engine {args.engine} is not an engine artifact (no {MANIFEST_FILE}): export one with "
                            "emotalk-export --out DIR, or pass a checkpoint folder with --model")
        return Engine.from_artifact(args.engine, args.backend, threads=args.threads)
    return Engine.load(args.model, args.backend, lookahead_ms=args.lookahead_ms, threads=args.threads)


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


def with_signals(body: Callable[[threading.Event], Summary]) -> Summary:
    """Run `body(stop)` with Ctrl-C, SIGTERM and Ctrl-Break setting `stop`; a second Ctrl-C exits at once."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            os._exit(130)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        return body(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def report(summary: Summary) -> None:
    if summary.ahead_of_real_time:  # e.g. a file piped into --stdin: sound-to-packet time is its backlog
        latency = ", latency not measured (the input came faster than real time and waited in a queue)"
    elif summary.latency_ms is None:
        latency = ""
    else:
        latency = f", latency p50 {summary.latency_ms[0]:.0f} ms p95 {summary.latency_ms[1]:.0f} ms"
    errors = "" if not summary.errors else ", send errors " + ", ".join(
        f"{count} to {name}" for name, count in summary.errors.items())
    how = "stopped" if summary.stopped else "end of input"
    log.info("%s: %d frames for %.2f s of audio%s, %d dropped, %d overruns%s", how, summary.frames,
             summary.audio_seconds, latency, summary.drops, summary.overruns, errors)

