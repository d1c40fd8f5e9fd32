"""`emotalk-stream`: a voice from a microphone, a file or a pipe to avatars, live.

    emotalk-stream --mic default --osc 127.0.0.1:9000
    emotalk-stream --wav speech.wav --livelink 127.0.0.1:11111 --ws 127.0.0.1:8765
    ffmpeg -i talk.mp3 -f s16le -ac 1 -ar 16000 - | emotalk-stream --stdin --record face.csv

This module holds the arguments only, so that --help and --version answer at once; `launch.py`
builds and runs the streamer from them.
"""
from __future__ import annotations

import argparse
import signal
import sys

from ..engine.backends import BACKENDS
from ..training.blendshapes import REGIONS
from ..training.config import OFFICIAL_EMOTIONS, RAVDESS_EMOTIONS
from ..training.control_values import DEFAULT_EMOTION_HELP
from ..training.errors import add_debug_flag, run_cli
from . import console as console_module
from .config import default_path as default_config_path, settle
from .face import MAX_MOTION, FaceSettings
from .ifacialmocap import DEFAULT_PORT as IFACIALMOCAP_PORT
from .osc_sink import DEFAULT_SHAPES, SHAPES
from .presets import PRESETS, describe

PROG = console_module.PROG
TOKEN_ENV = "EMOTALK_TOKEN"  # --token's default, kept out of `ps`
# what stops a stream or the server cleanly: Ctrl-C, `kill`, Windows' Ctrl-Break (also raised as its console closes)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, name))
EPILOG = f"""\
emotions for --emotion LABEL[:STRENGTH] (or auto: from the voice), by model:
  default:  {", ".join(RAVDESS_EMOTIONS)}
  official: {", ".join(OFFICIAL_EMOTIONS)}
  disgust(ed), fear(ful) and surprise(d) may be spelled either way

examples:
  emotalk-stream --list-devices                             # the microphones
  emotalk-stream --mic default --osc 127.0.0.1:39539        # VSeeFace (VMC)
  emotalk-stream --mic default --livelink 127.0.0.1:11111   # Unreal Engine
  emotalk-stream --mic default --ws 8765 --emotion auto     # a browser page
  emotalk-stream --wav talk.wav --no-pace --record face.csv # a file to a take
  ffmpeg -i in.mp3 -f s16le -ac 1 -ar 16000 - | emotalk-stream --stdin --ws 8765
"""


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The model and engine options, the same for every command that streams (`emotalk-serve` too)."""
    model = p.add_argument_group("model")
    model.add_argument("--model", default="default", metavar="default|PATH",
                       help="default: the bundled model on ONNX Runtime; or a checkpoint folder (needs the train extra)")
    model.add_argument("--engine", metavar="DIR", help="an engine exported by emotalk-export (instead of --model)")
    model.add_argument("--backend", choices=BACKENDS, help="onnxruntime for the bundled model and --engine (their "
                       "default), torch for a checkpoint (its default)")
    model.add_argument("--lookahead-ms", type=int, metavar="MS", help="future audio the model waits for (default the "
                       "model's own, 0 for the bundled model; another value needs the train extra)")
    model.add_argument("--threads", type=int, default=1, metavar="N", help="CPU threads for the engine (default 1)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                                description="Stream 52 ARKit blendshapes with emotion from a voice to VTuber apps "
                                "(OSC/VMC),\nUnreal Engine (Live Link Face) and browsers (WebSocket).")
    src = p.add_argument_group("audio source (one of)")
    one = src.add_mutually_exclusive_group()
    one.add_argument("--mic", metavar="NAME|INDEX|default", help="a microphone (see --list-devices)")
    one.add_argument("--wav", metavar="FILE", help="an audio file, played at the speed of a microphone")
    one.add_argument("--stdin", action="store_true", help="raw PCM on standard input (TTS, ffmpeg)")
    one.add_argument("--list-devices", action="store_true", help="list the microphones and exit")
    src.add_argument("--no-pace", action="store_true", help="--wav as fast as possible instead of in real time")
    src.add_argument("--exit-on-device-loss", action="store_true",
                     help="stop when the microphone goes away (default: neutral face, wait for it to come back)")
    # No defaults here: given with --mic or --wav they are refused, not ignored (launch.make_source).
    src.add_argument("--stdin-format", choices=("s16le", "f32le"), help="--stdin sample format (default s16le)")
    src.add_argument("--stdin-rate", type=int, metavar="HZ", help="--stdin sample rate (default 16000)")
    src.add_argument("--stdin-channels", type=int, metavar="N", help="--stdin channels, mixed down (default 1)")

    add_model_options(p)

    out = p.add_argument_group("outputs (any number)")
    out.add_argument("--osc", action="append", default=[], metavar="HOST:PORT", help="OSC over UDP, e.g. 127.0.0.1:39539 for VSeeFace")
    out.add_argument("--osc-format", action="append", choices=("vmc", "arkit"), default=[],
                     help="vmc: VMC perfect-sync names + VRM presets (default); arkit: /emotalk/arkit, 52 floats; "
                          "once for every --osc, or once per --osc in the same order")
    out.add_argument("--vmc-shapes", choices=SHAPES, default=DEFAULT_SHAPES,
                     help="what a vmc frame carries: both (default), perfectsync (the 52 ARKit names, for "
                          "perfect-sync avatars) or presets (the VRM presets A I U E O, blinks, emotions)")
    out.add_argument("--vmc-unbundled", action="store_true",
                     help="each vmc message in a datagram of its own, for receivers that cannot read OSC bundles")
    out.add_argument("--ifacialmocap", action="append", default=[], metavar="HOST[:PORT]",
                     help=f"iFacialMocap UDP text (port {IFACIALMOCAP_PORT} by default), a perfect-sync source for "
                          "VSeeFace, VMagicMirror, Warudo and VNyan")
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
    out.add_argument("--avatar", metavar="FILE.vrm", help="a VRM model (0.x or 1.0) for the --ws viewer page to show "
                     "in 3D instead of its drawn face (a model can also be dropped on the page)")
    out.add_argument("--record", action="append", default=[], metavar="FILE.csv|FILE.npy", help="record the frames")
    out.add_argument("--control", metavar="[HOST:]PORT", help="accept live controls over OSC (/emotalk/emotion "
                     "...); HOST defaults to 127.0.0.1 (OSC has no authentication)")

    face = p.add_argument_group("face")
    face.add_argument("--fps", type=int, choices=(30, 60), default=30, help="output frame rate (60 is interpolated)")
    face.add_argument("--emotion", default=None, metavar="auto|LABEL[:S]",
                      help=f"auto (from the voice) or e.g. happy:0.7 (default: {DEFAULT_EMOTION_HELP})")
    face.add_argument("--no-voice-gate", action="store_true",
                      help="leave the jaw and lips to the model where no voice is heard (by default a voice-activity "
                           "detector closes them in silence and noise)")
    face.add_argument("--no-vocal-effort", action="store_true",
                      help="leave the jaw's opening to the model (by default it opens wider where the voice is "
                           "louder than its speaker's usual)")
    face.add_argument("--level", default=None, metavar="low|high|FLOAT|voice",
                      help="emotion level; voice: following the voice's arousal (default: voice for a calm or neutral "
                           "face, high for another emotion or auto)")
    face.add_argument("--person", default="0", metavar="N", help="speaking style, 0-23 (default 0)")
    face.add_argument("--smoothing", type=float, default=0.0, metavar="SECONDS", help="causal smoothing time constant (default 0: off)")
    face.add_argument("--no-blink", action="store_true", help="no procedural blinks")
    face.add_argument("--head-motion", type=float, default=FaceSettings.head_motion, metavar="AMOUNT",
                      help=f"speech-driven nods, tilts and sway of the head: 0 off, 1 natural (default), up to "
                           f"{MAX_MOTION:g}")
    face.add_argument("--eye-motion", type=float, default=FaceSettings.eye_motion, metavar="AMOUNT",
                      help=f"gaze holds and saccades of the eyes: 0 off, 1 natural (default), up to {MAX_MOTION:g}")
    face.add_argument("--gain", action="append", default=[], metavar="REGION=FACTOR",
                      help=f"scale a face region, repeatable: {', '.join(REGIONS)}")
    face.add_argument("--seed", type=int, default=0, help="seed of the blinks and of the head and eye motion")

    settings = p.add_argument_group("settings (built-in defaults < --preset < config file < --profile < "
                                    "command line)")
    settings.add_argument("--preset", choices=PRESETS, metavar="APP", help="the outputs an app needs: " + "; ".join(
        f"{name}: {describe(preset)}" for name, preset in PRESETS.items()))
    settings.add_argument("--config", metavar="FILE", help="a TOML file of options (keys are the long options "
                          f"without --); default: {default_config_path()} if it exists")
    settings.add_argument("--profile", metavar="NAME", help="also apply the config file's [profile.NAME] table")

    p.add_argument("--quiet", action="store_true", help="no status line or info messages, warnings only")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return run_cli(PROG, lambda args: run(args, argv), build_parser(), argv)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from .launch import stream  # the engine, the sources and the sinks: only once the arguments parse
    settle(args, argv, build_parser)  # the preset and the config file under what `argv` says
    with console_module.native_stderr_diverted(keep=args.debug):
        return stream(args)


if __name__ == "__main__":
    sys.exit(main())
