"""The streaming API: one `Engine` serves many `Stream`s, one per speaker, decoded in batches.

    engine = Engine.from_artifact("default")                        # the bundled model on ONNX Runtime
    stream = engine.create_stream(Controls(emotion="happy:0.5"))
    stream.accept_waveform(16000, samples)                          # any amount, any time
    while engine.is_ready(stream):
        engine.step([stream])                                       # all ready streams in one batch
    for frame in stream.frames():                                   # index, audio time, 52 weights
        ...
    stream.input_finished()                                         # flush the tail

The shape follows sherpa-onnx's online recognizer. Frames are exactly those of offline
inference at the same look-ahead, whatever the hop or the batch (tests/test_engine.py).
"""
from __future__ import annotations

import heapq
import json
import math
import tempfile
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..training.blendshapes import COUNT, REGIONS
from ..training.calibration import softmax
from ..training.config import ModelConfig
from ..training.control_values import (
    FOLLOW_VOICE, auto_strength, check_prototype, default_emotion, default_level, parse_emotion, parse_level,
    parse_person,
)
from ..training.errors import UserError, require_training
from ..training.framing import frame_count
from ..training.input_level import LevelNormaliser, normalise_together
from ..training.model_files import DEFAULT_ENGINE
from . import artifact
from .arousal import LEVEL_MAX, Arousal, frame_pitch
from .backends import Backend, OnnxRuntimeBackend, batches, require_backend
from .interface import ENCODER_FRAME_MS, NEVER, PREROLL, audio_end_frame, frames_from_ms
from .rest_face import REST_SECONDS, relative_to_rest
from .vocal_effort import VocalEffort, apply_effort, frame_level, window
from .voice_activity import VoiceActivity, VoiceActivityModel, advance_all, gate_articulations

if TYPE_CHECKING:  # the model class only names a type here: the runtime never imports PyTorch
    from ..training.model import EmoTalk

PARALLEL_MIN = 12  # streams in each half of a step run on two threads; fewer are not worth a thread


@dataclass(frozen=True)
class Frame:
    """One finished frame: `weights` (52,) in [0, 1], EmoTalk order (`blendshapes.NAMES`), showing
    the audio at `time` = index / fps seconds from the stream's first sample."""

    index: int
    time: float
    weights: np.ndarray


@dataclass(frozen=True)
class Controls:
    """What the face does with the voice. Any of them may change between steps."""

    level: float | str | None = None  # emotion level: "low" (0), "high" (1), a blend, "voice"; None: `default_level`
    person: int = 0  # speaking style, one of the model's training speakers
    emotion: str | None = None  # "auto" (from the voice), LABEL[:STRENGTH] ("happy:0.7"), None: calm
    gains: Mapping[str, float] = field(default_factory=dict)  # region (mouth, jaw, brow, ...) -> factor
    voice_gate: bool = True  # close the jaw and lips where the voice-activity detector hears no speech
    rest_relative: bool = True  # show the face relative to the model's rest face (engine/rest_face.py)
    vocal_effort: bool = True  # open the jaw wider when the voice is louder than its usual (engine/vocal_effort.py)


@dataclass
class _Resolved:
    """Controls as the step's input rows."""

    level: float  # fixed, or where the voice's is 0
    follows_voice: bool  # the level follows the voice's arousal (engine/arousal.py)
    person: np.ndarray
    emotion: np.ndarray
    strength: float
    gains: np.ndarray | None
    voice_gate: bool
    rest: np.ndarray | None  # the rest face the frames are shown relative to (at level 0 where it follows the voice)
    rest_per_level: np.ndarray | None  # how the rest face moves per unit of a level that follows the voice
    vocal_effort: bool


class Stream:
    """One speaker's audio, state slot and finished frames. Create with `Engine.create_stream`."""

    def __init__(self, engine: "Engine", slot: int, controls: Controls):
        self._engine = engine
        self.slot = slot
        self._buffer = np.zeros(4 * engine.hop_samples, dtype=np.float32)
        self._start = 0  # first unread sample in the buffer
        self._pending = engine.preroll  # unread samples: the step's leading zeros, then the audio
        self._preroll_left = engine.preroll  # leading zeros not yet taken by a step
        self.samples_received = 0
        self.nonfinite_samples = 0
        self._finished = False
        self._total_frames: int | None = None
        self._audio_end = NEVER
        self.frames_decoded = 0
        self._frames: deque[Frame] = deque()
        # The model's input level control, run by the step on each hop's audio (all streams at once)
        self._gain_control = LevelNormaliser() if engine.cfg.input_level == "agc" else None
        self._voice = VoiceActivity(engine.voice_model)  # always runs, so the gate can be switched on live
        self._effort = VocalEffort(engine.cfg.fps)
        self._arousal = Arousal(engine.cfg.fps)
        self._heard = np.zeros(0, dtype=np.float32)  # the audio from the next frame's window on (vocal effort, arousal)
        self._heard_from = 0  # its first sample's index in the audio
        self.emotion_logits: np.ndarray | None = None
        self.error: str | None = None  # why the engine failed on this stream; it then stops
        self.closed = False
        self.controls = controls

    @property
    def controls(self) -> Controls:
        return self._controls

    @controls.setter
    def controls(self, controls: Controls) -> None:
        """Validate and apply new controls; a bad value raises `UserError` and keeps the old ones."""
        self._resolved = self._engine.resolve_controls(controls)
        self._controls = controls

    def accept_waveform(self, sample_rate: int, samples: np.ndarray | Sequence[float]) -> None:
        """Append mono float samples in [-1, 1] at the engine's rate (16 kHz)."""
        if self._finished:
            raise UserError("accept_waveform after input_finished: create a new stream for new audio")
        if sample_rate != self._engine.sample_rate:
            raise UserError(f"audio at {sample_rate} Hz: the engine takes {self._engine.sample_rate} Hz mono; "
                            f"resample it first (the streamer's sources do)")
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise UserError(f"audio of shape {samples.shape}: the engine takes one channel; mix down first")
        bad = ~np.isfinite(samples)
        if bad.any():  # NaN/inf from a broken source become silence, counted
            self.nonfinite_samples += int(bad.sum())
            samples = np.where(bad, 0.0, samples).astype(np.float32)
        self._voice.accept(samples, run=False)
        self._heard = np.concatenate([self._heard, samples]) if len(self._heard) else samples.copy()
        if self._start + self._pending + len(samples) > len(self._buffer):
            # Move the unread samples to the front (and grow), so each sample is copied O(1) times.
            size = max(len(self._buffer), 2 * (self._pending + len(samples)))
            kept = self._buffer[self._start:self._start + self._pending]
            self._buffer = np.concatenate([kept, np.zeros(size - self._pending, dtype=np.float32)])
            self._start = 0
        end = self._start + self._pending
        self._buffer[end:end + len(samples)] = samples
        self._pending += len(samples)
        self.samples_received += len(samples)

    def input_finished(self) -> None:
        """No more audio: the engine pads silence until the last frame of the audio is out."""
        if self._finished:
            return
        self._finished = True
        self._voice.finish(run=False)
        cfg = self._engine.cfg
        self._total_frames = frame_count(self.samples_received, cfg.sample_rate, cfg.fps)
        self._audio_end = audio_end_frame(self.samples_received, self._engine.lookahead_frames, cfg.fps, cfg.sample_rate)

    @property
    def pending_samples(self) -> int:
        """Samples received and not yet taken by a step."""
        return self._pending

    @property
    def done(self) -> bool:
        """No more frames will come: finished and every frame decoded, or failed (`error`)."""
        return self.error is not None or (self._finished and self.frames_decoded >= (self._total_frames or 0))

    def frames(self) -> Iterator[Frame]:
        """Yield (and forget) the frames finished so far, in order."""
        while self._frames:
            yield self._frames.popleft()

    def emotion_probabilities(self) -> np.ndarray | None:
        """The voice's recent emotion, over its last few seconds (`RECENT_S`; calibrated softmax
        over `engine.cfg.emotion_labels`), None before any step."""
        if self.emotion_logits is None:
            return None
        return softmax(self.emotion_logits, self._engine.cfg.emotion_temperature)

    def close(self) -> None:
        """Free the stream's state slot for another stream."""
        if not self.closed:
            self.closed = True
            self._engine._release(self.slot)

    # -- used by Engine.step --

    def _ready(self) -> bool:
        if self.closed or self.error is not None:
            return False
        return self._pending >= self._engine.hop_samples or (self._finished and not self.done)

    def _take_hop(self) -> tuple[np.ndarray, int]:
        """The next hop of samples (zero-padded past the end), and how many of the step's leading
        zeros it begins with."""
        hop = self._engine.hop_samples
        chunk = np.zeros(hop, dtype=np.float32)
        take = min(hop, self._pending)
        chunk[:take] = self._buffer[self._start:self._start + take]
        self._start += take
        self._pending -= take
        leading = min(self._preroll_left, take)
        self._preroll_left -= leading
        return chunk, leading

    def _level_input(self) -> float:
        """The emotion level the next step decodes at."""
        return self._arousal.level if self._resolved.follows_voice else self._resolved.level

    def _hear_frames(self, count: int) -> np.ndarray:
        """(count,) the vocal-effort factors of the next `count` frames, whose sound has been heard
        (the voice's arousal moves on with them); the audio before the frame after them is let go."""
        fps, rate = self._engine.cfg.fps, self._engine.sample_rate
        factors = np.ones(count, dtype=np.float32)
        for k in range(count):
            frame = self.frames_decoded + k
            db = frame_level(self._heard, self._heard_from, frame, fps, rate)
            factors[k] = self._effort.factor(db)
            self._arousal.hear(db, partial(frame_pitch, self._heard, self._heard_from, frame, fps, rate))
        keep_from = max(window(self.frames_decoded + count, fps, rate)[0], 0)
        self._heard = self._heard[keep_from - self._heard_from:]
        self._heard_from = keep_from
        return factors

    def _deliver(self, weights: np.ndarray, logits: np.ndarray) -> None:
        """Keep the step's finished frames, already shown as the controls ask (`Engine._shown`)."""
        fps = self._engine.cfg.fps
        for row in weights:
            index = self.frames_decoded
            self.frames_decoded += 1
            if self._total_frames is not None and index >= self._total_frames:
                continue  # padding past the end of the audio
            self._frames.append(Frame(index, index / fps, row.astype(np.float32, copy=True)))
        self.emotion_logits = logits


class Engine:
    """Batched streaming inference of one model on one backend."""

    def __init__(self, cfg: ModelConfig, backend: Backend, hop_frames: int, lookahead_frames: int,
                 prototypes: Sequence[str], preroll: int = 0):
        self.cfg = cfg
        self.backend = backend
        self.hop_frames = hop_frames
        self.lookahead_frames = lookahead_frames
        self.prototype_labels = tuple(prototypes)
        self.sample_rate = cfg.sample_rate
        self.hop_samples = hop_frames * ENCODER_FRAME_MS * cfg.sample_rate // 1000
        self.preroll = preroll  # zeros the step expects before a stream's first sample
        self.voice_model = VoiceActivityModel.shared()
        self._voice_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emotalk voice activity")
        self._step_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="emotalk step")
        # Whether a large step may use a second core (`_split`). Off where another process has that
        # core: emotalk-serve's workers, one per core, held 60 sessions without it and 47 with it.
        self.split_large_steps = True
        self._rest_faces: dict[tuple[float, int], np.ndarray] = {}
        self._rest_lock = threading.Lock()
        self._rest_engine: Engine | None = None
        # Free slots as a heap: a new stream takes the lowest, so the streams' state rows stay close
        # together (backends read consecutive rows in place, `backends.COVER_SPAN`).
        self._free: list[int] = []
        self._next_slot = 0

    @property
    def hop_ms(self) -> int:
        return self.hop_frames * ENCODER_FRAME_MS

    @property
    def lookahead_ms(self) -> int:
        return self.lookahead_frames * ENCODER_FRAME_MS

    # -- construction: an artifact needs only ONNX Runtime; a checkpoint needs PyTorch --

    @classmethod
    def from_artifact(cls, folder: str | Path = "default", backend: str | None = None,
                      threads: int | None = None) -> "Engine":
        """An engine artifact from emotalk-export ("default": the bundled model's, at the hop and
        look-ahead its manifest names) on ONNX Runtime, or on TensorRT where it holds a plan."""
        _check_threads(threads)
        folder = DEFAULT_ENGINE if str(folder) == "default" else Path(folder)
        if not artifact.is_artifact(folder):
            raise UserError(f"{folder} is not an engine artifact (no {artifact.MANIFEST_FILE}): export one with "
                            f"emotalk-export --out DIR, or pass a checkpoint folder as the model")
        manifest = artifact.read_manifest(folder)
        backend = backend or ("tensorrt" if manifest.backend == "tensorrt" else "onnxruntime")
        require_backend(backend)
        if backend == "torch":
            raise UserError(f"{folder} is an exported engine; the torch backend runs a checkpoint: "
                            f"pass the model folder (or 'default') instead")
        if backend == "tensorrt":
            if artifact.PLAN_FILE not in manifest.files:
                raise UserError(f"{folder} has no TensorRT plan: export it with --backend tensorrt")
            from .tensorrt_backend import TensorRTBackend
            runner: Backend = TensorRTBackend(folder / artifact.PLAN_FILE, manifest.step_interface, manifest.max_streams)
        else:
            runner = OnnxRuntimeBackend(folder / artifact.ONNX_FILE, manifest.step_interface, threads)
        return cls(manifest.config, runner, manifest.hop_frames, manifest.lookahead_frames, manifest.prototype_labels,
                   PREROLL)  # artifacts hold the exact `small` step

    @classmethod
    def from_checkpoint(cls, source: "str | Path | EmoTalk" = "default", backend: str = "torch", hop_ms: int = 20,
                        lookahead_ms: int | None = None, device: str = "cpu", threads: int | None = None) -> "Engine":
        """A checkpoint folder ("default": the bundled one) or an `EmoTalk` module, at any hop and
        look-ahead; needs PyTorch (the `train` extra). `torch` runs the step as a module (`small`
        exactly, `large` with sliding windows); `onnxruntime` exports `small` first (~10 s)."""
        _check_threads(threads)
        require_backend(backend)
        if backend == "tensorrt":
            raise UserError("the tensorrt backend runs an exported engine: build one with "
                            "`emotalk-export --backend tensorrt --out DIR` and load DIR")
        hop = frames_from_ms(hop_ms, "hop", 1)
        wanted = None if lookahead_ms is None else frames_from_ms(lookahead_ms, "look-ahead", 0)
        named = source if isinstance(source, (str, Path)) else "in memory"
        require_training(f"running the checkpoint {named} (the bundled engine, --model default at its own hop "
                         f"and look-ahead, runs without it)")
        from .torch_backend import checkpoint_model, prototype_labels, step_backend
        model, digest = checkpoint_model(source, device if backend == "torch" else "cpu")
        lookahead = model.cfg.lookahead if wanted is None else wanted
        if backend == "onnxruntime":
            if model.cfg.content.kind != "streaming":
                raise UserError(f"model family {model.cfg.family!r} streams with sliding windows on the torch "
                                f"backend only: use --backend torch")
            from .onnx_export import export_artifact
            with tempfile.TemporaryDirectory() as tmp:
                export_artifact(model, digest, Path(tmp), "onnx", hop_ms, lookahead * ENCODER_FRAME_MS)
                return cls.from_artifact(tmp, backend, threads)
        runner, preroll = step_backend(model, hop, lookahead, device, threads)
        return cls(model.cfg, runner, hop, lookahead, prototype_labels(model), preroll)

    @classmethod
    def load(cls, source: "str | Path | EmoTalk" = "default", backend: str | None = None, hop_ms: int | None = None,
             lookahead_ms: int | None = None, device: str = "cpu", threads: int | None = None) -> "Engine":
        """What a command's --model or --engine names. An artifact folder, or "default" at the bundled
        engine's hop and look-ahead on the CPU, runs on ONNX Runtime without PyTorch
        (`from_artifact`); anything else is a checkpoint (`from_checkpoint`, on torch unless
        `backend` says otherwise)."""
        if isinstance(source, (str, Path)) and artifact.is_artifact(source):
            if hop_ms is not None or lookahead_ms is not None:
                raise UserError(f"{source} is an exported engine with its own hop and look-ahead: export another "
                                f"with emotalk-export --hop-ms/--lookahead-ms, or pass a checkpoint")
            return cls.from_artifact(source, backend, threads)
        if str(source) == "default" and backend in (None, "onnxruntime") and device == "cpu" \
                and bundled_engine_has(hop_ms, lookahead_ms):
            return cls.from_artifact("default", backend, threads)
        return cls.from_checkpoint(source, backend or "torch", hop_ms or 20, lookahead_ms, device, threads)

    # -- streams --

    def create_stream(self, controls: Controls | None = None) -> Stream:
        slot = heapq.heappop(self._free) if self._free else self._claim()
        self.backend.reset(slot)
        return Stream(self, slot, controls or Controls())

    def _claim(self) -> int:
        self._next_slot += 1
        return self._next_slot - 1

    def _release(self, slot: int) -> None:
        heapq.heappush(self._free, slot)

    def resolve_controls(self, controls: Controls) -> _Resolved:
        """Check controls against this model and turn them into the step's input rows."""
        cfg = self.cfg
        setting = self.emotion_setting(controls)
        level = self.level_setting(controls)
        follows_voice = level == FOLLOW_VOICE
        level = 0.0 if follows_voice else level
        speaker = parse_person(controls.person, cfg.n_persons)
        person = np.zeros(cfg.n_persons, dtype=np.float32)
        person[speaker] = 1.0
        emotion = np.zeros(len(cfg.emotion_labels), dtype=np.float32)
        label, strength = parse_emotion(setting, cfg.emotion_labels)
        present = self.prototypes_present()
        if label is None:  # auto: the step shows the detected emotion over the calm face (EmoTalk.auto_target)
            strength = auto_strength(cfg.emotion_labels, present)
        else:
            check_prototype(present, cfg.emotion_labels, label)
            emotion[label] = 1.0
        gains = None
        if controls.gains:
            gains = np.ones(COUNT, dtype=np.float32)
            for region, gain in controls.gains.items():
                if region not in REGIONS:
                    raise UserError(f"unknown face region {region!r}: use one of {', '.join(REGIONS)}")
                if not (isinstance(gain, (int, float)) and math.isfinite(gain) and 0.0 <= gain <= 4.0):
                    raise UserError(f"gain {gain!r} for {region} is not a number from 0 to 4")
                gains[list(REGIONS[region])] *= float(gain)
        rest = per_level = None
        if controls.rest_relative:
            rest = self.rest_face(level, speaker)
            if follows_voice:
                per_level = (self.rest_face(LEVEL_MAX, speaker) - rest) / LEVEL_MAX
        return _Resolved(level, follows_voice, person, emotion, strength, gains, bool(controls.voice_gate), rest,
                         per_level, bool(controls.vocal_effort))

    def rest_face(self, level: float, person: int) -> np.ndarray:
        """(52,) the model's calm face on silence at this level and speaking style (engine/rest_face.py).

        Found once per (level, person) by streaming `REST_SECONDS` of zeros on a second backend of
        the same step, so it can be asked from any thread while this engine steps (about 0.2 s)."""
        key = (float(level), int(person))
        with self._rest_lock:
            if key not in self._rest_faces:
                if self._rest_engine is None:
                    self._rest_engine = Engine(self.cfg, self.backend.spare(), self.hop_frames, self.lookahead_frames,
                                               self.prototype_labels, self.preroll)
                calm = Controls(level=level, person=person, voice_gate=False, rest_relative=False)
                silence = np.zeros(int(REST_SECONDS * self.sample_rate), dtype=np.float32)
                self._rest_faces[key] = self._rest_engine.process([silence], calm)[0][-1]
            return self._rest_faces[key]

    def emotion_setting(self, controls: Controls) -> str:
        """The emotion control in effect: the one given, or this model's default (a calm face)."""
        if controls.emotion is not None:
            return controls.emotion
        return default_emotion(self.cfg.emotion_labels, self.prototypes_present())

    def prototypes_present(self) -> list[bool]:
        """For each emotion label, whether the model has its prototype (an override or `auto` blends towards it)."""
        return [name in self.prototype_labels for name in self.cfg.emotion_labels]

    def level_setting(self, controls: Controls) -> float | str:
        """The emotion level in effect: the one given, or the face's own (`default_level`); a number,
        or `FOLLOW_VOICE`."""
        return parse_level(default_level(self.emotion_setting(controls)) if controls.level is None else controls.level)

    # -- decoding --

    def is_ready(self, stream: Stream) -> bool:
        """True when `stream` has a hop of audio (or a tail to flush) for the next step."""
        return stream._ready()

    def step(self, streams: Sequence[Stream]) -> int:
        """Decode one hop of every ready stream in `streams`, batched; returns the frames finished.

        The voice-activity model runs on its own thread meanwhile: both release the GIL, so on two
        cores it costs the step no time (it is about half as heavy as the model's step). A large
        batch on a backend that takes concurrent runs is run as two halves on two threads: ONNX
        Runtime's part of a 48-stream step took 8 ms instead of 13 on two cores."""
        ready = {s.slot: s for s in streams if s._ready()}
        voices = self._voice_thread.submit(advance_all, [s._voice for s in ready.values()])
        runs = []  # (slots, streams, inputs) of each backend run
        try:
            for slots in self._split(batches(list(ready), self.backend.max_batch)):
                group = [ready[int(slot)] for slot in slots]
                controls = [s._resolved for s in group]
                hops, leading = zip(*(s._take_hop() for s in group))
                inputs = {
                    "audio": self._level_inputs(group, np.stack(hops), leading),
                    "level": np.array([s._level_input() for s in group], dtype=np.float32),
                    "person": np.stack([c.person for c in controls]),
                    "emotion": np.stack([c.emotion for c in controls]),
                    "emotion_strength": np.array([c.strength for c in controls], dtype=np.float32),
                    "audio_end": np.array([s._audio_end for s in group], dtype=np.int64),
                }
                runs.append((slots, group, inputs))
            if self.backend.concurrent_runs and len(runs) > 1:
                running = [self._step_threads.submit(self._run_isolated, *run) for run in runs]
                results = [result for future in running for result in future.result()]
            else:  # one at a time: a TensorRT context, for one, is not thread-safe
                results = [result for run in runs for result in self._run_isolated(*run)]
        finally:
            voices.result()  # the gate below reads its probabilities
        produced = 0
        for members, outputs in results:
            counts = [int(n) for n in outputs["n_frames"]]
            for stream, weights, logits in zip(members, self._shown(members, outputs["weights"], counts),
                                               outputs["emotion_logits"]):
                stream._deliver(weights, logits)
            produced += sum(counts)
        return produced

    def _split(self, runs: list[np.ndarray]) -> list[np.ndarray]:
        """Each run of at least `2 * PARALLEL_MIN` slots as two halves, where the backend can run
        them at once (the halves' slots are apart, so are the state rows they write)."""
        if not (self.backend.concurrent_runs and self.split_large_steps):
            return runs
        return [half for slots in runs
                for half in (np.array_split(slots, 2) if len(slots) >= 2 * PARALLEL_MIN else [slots])]

    def _shown(self, members: list[Stream], weights: np.ndarray, counts: list[int]) -> list[np.ndarray]:
        """Each stream's finished frames (B, slots, 52) -> (n, 52) as its controls show them:
        relative to its rest face, times its gains, the mouth closed where no voice is heard. One
        pass over the batch for each, not one per stream."""
        controls = [s._resolved for s in members]
        weights = weights if weights.flags.writeable else weights.copy()
        rest = [i for i, c in enumerate(controls) if c.rest is not None]
        if rest:
            faces = [controls[i].rest if controls[i].rest_per_level is None
                     else controls[i].rest + members[i]._arousal.level * controls[i].rest_per_level for i in rest]
            weights[rest] = relative_to_rest(weights[rest], np.stack(faces)[:, None])
        gained = [i for i, c in enumerate(controls) if c.gains is not None]
        if gained:
            gains = np.stack([controls[i].gains for i in gained])[:, None]
            weights[gained] = np.clip(weights[gained] * gains, 0.0, 1.0)
        shown = [weights[i, :n] for i, n in enumerate(counts)]
        for i, (c, n) in enumerate(zip(controls, counts)):
            factors = members[i]._hear_frames(n)  # every frame moves the speaker's level on
            if c.vocal_effort and n:
                apply_effort(shown[i], factors)
        gated = [i for i, (c, n) in enumerate(zip(controls, counts)) if c.voice_gate and n]
        if gated:
            frames = [np.arange(members[i].frames_decoded, members[i].frames_decoded + counts[i]) for i in gated]
            closed = gate_articulations([shown[i] for i in gated], [members[i]._voice.probabilities for i in gated],
                                        frames, self.cfg.fps, self.lookahead_ms)
            for i, weights_i in zip(gated, closed):
                shown[i] = weights_i
        return shown

    def _level_inputs(self, group: list[Stream], audio: np.ndarray, leading: Sequence[int]) -> np.ndarray:
        """Each stream's hop as the model hears it: through its input level control (`input_level
        = "agc"`), the streams at one place in their blocks in one batched pass. The step's
        leading zeros are not audio and skip it."""
        if self.cfg.input_level != "agc":
            return audio
        places: dict[tuple[int, int], list[int]] = {}
        for i, (stream, zeros) in enumerate(zip(group, leading)):
            places.setdefault((zeros, stream._gain_control.place), []).append(i)
        for (zeros, _), rows in places.items():
            audio[rows, zeros:] = normalise_together([group[i]._gain_control for i in rows], audio[rows, zeros:])
        return audio

    def _run_isolated(self, slots: np.ndarray, group: list[Stream],
                      inputs: dict[str, np.ndarray]) -> list[tuple[list[Stream], dict[str, np.ndarray]]]:
        """Run one batch; if it fails, each of its streams alone, so that a stream the backend
        cannot run fails alone (`stream.error`) and the others go on. States are only written by a
        run that succeeds."""
        try:
            return [(group, self.backend.run(slots, inputs))]
        except Exception as exc:  # noqa: BLE001 - any backend failure is confined to its streams
            if len(group) == 1:
                group[0].error = f"{type(exc).__name__}: {exc}"
                return []
        results = []
        for i, stream in enumerate(group):
            results += self._run_isolated(slots[i:i + 1], [stream], {k: v[i:i + 1] for k, v in inputs.items()})
        return results

    def process(self, clips: Sequence[np.ndarray], controls: Controls | Sequence[Controls] | None = None) -> list[np.ndarray]:
        """Stream whole clips (16 kHz mono) side by side, one stream each: (T, 52) per clip.

        `controls`: one for every clip, or one per clip."""
        return [weights for weights, _ in self.process_with_emotion(clips, controls)]

    def process_with_emotion(self, clips: Sequence[np.ndarray], controls: Controls | Sequence[Controls] | None = None
                             ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """As `process`, with each clip's voice emotion at its end, as its stream reports it (softmax
        over `cfg.emotion_labels`; None for a clip too short for a frame)."""
        each = controls if isinstance(controls, Sequence) else [controls] * len(clips)
        streams = [self.create_stream(c) for c in each]
        try:
            for stream, clip in zip(streams, clips):
                stream.accept_waveform(self.sample_rate, clip)
                stream.input_finished()
            while not all(s.done for s in streams):
                self.step(streams)
            failed = [s.error for s in streams if s.error is not None]
            if failed:
                raise RuntimeError(f"the engine failed on {len(failed)} of {len(streams)} clips: {failed[0]}")
            return [(np.stack([f.weights for f in s.frames()]) if s.frames_decoded else np.zeros((0, COUNT), np.float32),
                     s.emotion_probabilities()) for s in streams]
        finally:
            for stream in streams:
                stream.close()


def _check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise UserError(f"{threads} engine threads: give 1 or more (--threads N)")


def bundled_engine_has(hop_ms: int | None, lookahead_ms: int | None) -> bool:
    """Whether the bundled artifact was exported at these settings (None: whatever it has), so that
    "default" runs it without PyTorch."""
    try:
        manifest = json.loads((DEFAULT_ENGINE / artifact.MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False  # a missing artifact: the checkpoint path says what is needed
    return hop_ms in (None, manifest.get("hop_ms")) and lookahead_ms in (None, manifest.get("lookahead_ms"))
