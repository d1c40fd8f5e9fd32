"""Voice activity (Silero VAD on ONNX Runtime) to close the mouth where nobody speaks.

The face model opens the mouth on noise and in silence: it was never taught what is *not* speech.
Silero VAD was trained on real speech against real noise, so its per-chunk speech probability is a
better judge than any energy threshold. This module runs it without PyTorch (numpy + onnxruntime),
incrementally per stream, with the chunks of many streams batched into one call, and turns the
probabilities into a per-frame mouth gate in [0, 1] that is causal up to a caller-given horizon, so
streaming and offline give the same gate.

Model interface (Silero v5+, 16 kHz): each call takes a 512-sample chunk preceded by the last 64
samples of the previous chunk (zeros before the first), a recurrent state (2, batch, 128) starting
at zeros, and the sample rate; it returns one speech probability per row and the next state.
The model file is vendored in training/assets/silero_vad (SOURCE.md: origin and sha256).
"""
from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..training.blendshapes import ARTICULATION
from ..training.errors import UserError
from ..training.model_files import DEFAULT_MODEL

SAMPLE_RATE = 16000  # the only rate this wrapper feeds the model (the face model's rate too)
CHUNK = 512  # samples per model call at 16 kHz (32 ms): the size Silero v5 was trained on
CONTEXT = 64  # samples of the previous chunk the model sees before each chunk (v5 layout)
STATE_SHAPE = (2, 128)  # recurrent state per stream; the model's state input is (2, batch, 128)

MODEL_PATH = DEFAULT_MODEL.parent / "silero_vad" / "silero_vad.onnx"  # vendored; SOURCE.md beside it

# Gate constants. Hangover: speech probability stays credited this long after a chunk ends, so a
# short dip between syllables does not snap the mouth shut, yet the mouth closes within ~100 ms after
# the voice stops (Silero itself decays within one or two 32 ms chunks; + 60 ms hangover).
HANGOVER_S = 0.060
# Look-ahead: chunks starting up to this far after the frame count, so the mouth starts opening as
# speech starts rather than a chunk late. The engine passes its own look-ahead (none for the bundled
# model); chunks the caller has not got yet (ending after `available_until`) are never used anyway.
LOOKAHEAD_S = 0.040
# Probability -> gate: 0 at or below GATE_CLOSED_BELOW (silence and noise score ~0.01-0.05),
# 1 at or above GATE_OPEN_ABOVE (Silero's own default speech threshold), a smoothstep between,
# so a borderline chunk half-opens the mouth instead of making it flicker.
GATE_CLOSED_BELOW = 0.15
GATE_OPEN_ABOVE = 0.5

# Chunk indices come from seconds (frame times) by floor(); this absorbs the float error of
# e.g. 0.032 * 16000 / 512 = 0.99999... so a chunk ending exactly at a time counts as ended.
_INDEX_EPSILON = 1e-6


class VoiceActivityModel:
    """The vendored Silero VAD in one ONNX Runtime session, shared by every stream.

    One intra-op thread: a chunk is tiny (a few hundred microseconds), so threads would cost more in
    synchronisation than they save, and the face model needs the cores. Many streams are served by
    batching their chunks into one `run`.
    """

    _shared: VoiceActivityModel | None = None
    _shared_lock = threading.Lock()

    def __init__(self, path: str | Path | None = None):
        import onnxruntime as ort  # here, not at the top: importing the module stays cheap

        self.path = Path(path) if path is not None else MODEL_PATH
        if not self.path.is_file():
            raise UserError(f"the voice-activity model is missing ({self.path}): this install lacks the "
                            f"vendored Silero VAD; reinstall emotalk-stream (pip install .)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)

    @classmethod
    def shared(cls) -> VoiceActivityModel:
        """The process-wide instance, loaded on first use (sessions are safe to run from threads)."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def run(self, chunks: np.ndarray, contexts: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step for B streams: chunks (B, 512), contexts (B, 64) = each stream's previous 64
        samples, states (2, B, 128) -> (speech probabilities (B,), next states (2, B, 128))."""
        chunks = np.asarray(chunks, dtype=np.float32)
        contexts = np.asarray(contexts, dtype=np.float32)
        states = np.ascontiguousarray(states, dtype=np.float32)
        batch = chunks.shape[0]
        if chunks.shape != (batch, CHUNK) or contexts.shape != (batch, CONTEXT) or \
                states.shape != (STATE_SHAPE[0], batch, STATE_SHAPE[1]):
            raise ValueError(f"voice activity expects chunks (B, {CHUNK}), contexts (B, {CONTEXT}) and states "
                             f"(2, B, 128); got {chunks.shape}, {contexts.shape}, {states.shape}")
        if batch == 0:
            return np.zeros(0, np.float32), states.copy()
        window = np.concatenate([contexts, chunks], axis=1)
        probabilities, next_states = self.session.run(None, {"input": window, "state": states, "sr": self._rate})
        return np.asarray(probabilities, dtype=np.float32).reshape(batch), np.asarray(next_states, dtype=np.float32)


class VoiceActivity:
    """One stream's incremental detector: audio of any block size in, one probability per 512 samples.

    Audio is cut into chunks at fixed sample positions (chunk c = samples [512c, 512c + 512)), whatever
    the block sizes, and each chunk is run with the same context and state, so the probabilities are
    byte-identical to running the whole signal at once (tests/test_voice_activity.py).

    `accept(samples)` runs the ready chunks at once; `accept(samples, run=False)` only queues them, so
    a caller serving many streams can run every stream's ready chunks in batched calls with
    `advance_all(detectors)`.
    """

    def __init__(self, model: VoiceActivityModel | None = None):
        self.model = model if model is not None else VoiceActivityModel.shared()
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet run (complete chunks + a partial one)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._probabilities = np.zeros(64, dtype=np.float32)  # grows by doubling; the first `_count` are valid
        self._count = 0
        self.samples_received = 0
        self.finished = False

    def accept(self, samples: np.ndarray, run: bool = True) -> None:
        """Queue mono 16 kHz float samples (any length); with `run`, compute every complete chunk now."""
        if self.finished:
            raise RuntimeError("this voice-activity stream is finished; start a new one")
        block = np.asarray(samples, dtype=np.float32)
        if block.ndim > 1:
            raise ValueError(f"voice activity takes mono samples (N,), got shape {block.shape}: mix down first")
        block = block.reshape(-1)
        # A NaN or inf would poison the recurrent state for the rest of the stream: treat it as silence
        # (nan) or full scale (inf), as a sound card would clip it.
        if not np.isfinite(block).all():
            block = np.nan_to_num(block, nan=0.0, posinf=1.0, neginf=-1.0)
        self._pending = np.concatenate([self._pending, block]) if len(self._pending) else block.copy()
        self.samples_received += len(block)
        if run:
            advance_all([self])

    def finish(self, run: bool = True) -> None:
        """End of stream: zero-pad the last partial chunk so the tail is judged too."""
        if self.finished:
            return
        partial = len(self._pending) % CHUNK
        if partial:
            self._pending = np.concatenate([self._pending, np.zeros(CHUNK - partial, dtype=np.float32)])
        self.finished = True
        if run:
            advance_all([self])

    def ready_chunks(self) -> int:
        """Complete chunks queued and not yet run."""
        return len(self._pending) // CHUNK

    def next_input(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(chunk (512,), context (64,), state (2, 128)) for the oldest ready chunk, for a batched run."""
        if not self.ready_chunks():
            raise RuntimeError("no complete chunk is queued")
        return self._pending[:CHUNK], self._context, self._state

    def feed_result(self, probability: float, state: np.ndarray) -> None:
        """Take the model's result for the chunk `next_input` gave: record it and move on one chunk."""
        chunk = self._pending[:CHUNK]
        self._context = chunk[-CONTEXT:].copy()
        self._pending = self._pending[CHUNK:]
        self._state = np.array(state, dtype=np.float32, copy=True).reshape(STATE_SHAPE)
        if self._count == len(self._probabilities):
            self._probabilities = np.concatenate([self._probabilities, np.zeros_like(self._probabilities)])
        self._probabilities[self._count] = probability
        self._count += 1

    @property
    def probabilities(self) -> np.ndarray:
        """Speech probability per computed chunk (chunk c covers samples [512c, 512c + 512)); read-only."""
        view = self._probabilities[:self._count]
        view.flags.writeable = False
        return view


def advance_all(detectors: Iterable[VoiceActivity]) -> int:
    """Run every ready chunk of many streams, one batched model call per round (a round takes the
    oldest ready chunk of each stream that has one); returns the number of calls made.

    A stream's chunks must run in order (the state is recurrent), so rounds are as many as the
    largest backlog; with live streams that is usually one.
    """
    groups: dict[int, list[VoiceActivity]] = {}
    for detector in detectors:
        groups.setdefault(id(detector.model), []).append(detector)
    calls = 0
    for group in groups.values():
        model = group[0].model
        while True:
            ready = [d for d in group if d.ready_chunks()]
            if not ready:
                break
            inputs = [d.next_input() for d in ready]
            chunks = np.stack([i[0] for i in inputs])
            contexts = np.stack([i[1] for i in inputs])
            states = np.stack([i[2] for i in inputs], axis=1)
            probabilities, next_states = model.run(chunks, contexts, states)
            for row, detector in enumerate(ready):
                detector.feed_result(float(probabilities[row]), next_states[:, row])
            calls += 1
    return calls


def _chunk_position(seconds: np.ndarray) -> np.ndarray:
    """Time in seconds -> position in chunks (float), for floor()-based chunk indices."""
    return np.asarray(seconds, dtype=np.float64) * (SAMPLE_RATE / CHUNK) + _INDEX_EPSILON


def mouth_gate(probabilities: np.ndarray, frame_times: Sequence[float] | np.ndarray,
               available_until: Sequence[float] | np.ndarray | float, *,
               hangover: float = HANGOVER_S, lookahead: float = LOOKAHEAD_S,
               closed_below: float = GATE_CLOSED_BELOW, open_above: float = GATE_OPEN_ABOVE) -> np.ndarray:
    """Gate in [0, 1] per output frame: 0 closes the mouth (no speech), 1 leaves it as the model drew it.

    Frame k at `frame_times[k]` seconds takes the largest probability of the chunks that overlap
    [t - hangover, t + lookahead] AND end at or before `available_until[k]` (a caller passes the
    frame's time + its look-ahead: the gate then depends only on audio the frame may see, so a
    stream that has received that much audio gets exactly the offline gate). No such chunk: 0.
    """
    times = np.asarray(frame_times, dtype=np.float64).reshape(-1)
    horizon = np.broadcast_to(np.asarray(available_until, dtype=np.float64), times.shape)
    return mouth_gates([probabilities], [times], [horizon], hangover=hangover, lookahead=lookahead,
                       closed_below=closed_below, open_above=open_above)


def mouth_gates(probabilities: Sequence[np.ndarray], frame_times: Sequence[np.ndarray],
                available_until: Sequence[np.ndarray], *, hangover: float = HANGOVER_S,
                lookahead: float = LOOKAHEAD_S, closed_below: float = GATE_CLOSED_BELOW,
                open_above: float = GATE_OPEN_ABOVE) -> np.ndarray:
    """`mouth_gate` of many streams in one pass (the engine's step gates every stream at once):
    stream i's probabilities, its frames' times (increasing) and horizons; the gates of all
    frames, stream after stream."""
    if not open_above > closed_below:
        raise ValueError(f"open_above ({open_above}) must exceed closed_below ({closed_below})")
    counts = [len(t) for t in frame_times]
    if not sum(counts):
        return np.zeros(0, dtype=np.float32)
    times = np.concatenate(frame_times)
    # Chunk c spans [c, c + 1) in chunk units. It overlaps the window iff c + 1 > start and c <= end;
    # it is available iff c + 1 <= horizon.
    first = np.maximum(np.floor(_chunk_position(times - hangover)), 0).astype(np.int64)
    stop = np.floor(_chunk_position(times + lookahead)).astype(np.int64) + 1
    available = np.floor(_chunk_position(np.concatenate(available_until))).astype(np.int64)
    stop = np.minimum(np.minimum(stop, available), np.repeat([len(p) for p in probabilities], counts))
    # Only the chunks a stream's frames can reach take part: from its first frame's first chunk
    # (times increase) to the furthest stop, laid end to end.
    lows, highs, start = [], [], 0
    for count in counts:
        low = int(first[start]) if count else 0
        lows.append(low)
        highs.append(int(stop[start:start + count].max(initial=low)))
        start += count
    tails = [np.asarray(p, dtype=np.float32).reshape(-1)[low:high] for p, low, high in zip(probabilities, lows, highs)]
    flat = np.concatenate([*tails, np.zeros(1, np.float32)])
    base = np.repeat(np.cumsum([0, *map(len, tails)])[:-1] - np.asarray(lows), counts)
    width = int(np.max(stop - first, initial=0))
    best = np.zeros(len(times), dtype=np.float32)
    if width > 0:
        index = first[:, None] + np.arange(width)[None, :]
        valid = index < stop[:, None]
        values = np.where(valid, flat[np.where(valid, base[:, None] + index, len(flat) - 1)], 0.0)
        best = values.max(axis=1).astype(np.float32)
    ramp = np.clip((best - closed_below) / (open_above - closed_below), 0.0, 1.0)
    return (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)


def gate_articulation(weights: np.ndarray, probabilities: np.ndarray, frames: np.ndarray, fps: int,
                      lookahead_ms: int) -> np.ndarray:
    """`weights` (T, 52) of output frames `frames` with the jaw and lips closed by the mouth gate.

    A frame sees the audio up to its time + the model's look-ahead, and so does its gate: streaming
    (probabilities so far) and offline (`clip_probabilities`) give the same frames.
    """
    return gate_articulations([weights], [probabilities], [frames], fps, lookahead_ms)[0]


def gate_articulations(weights: Sequence[np.ndarray], probabilities: Sequence[np.ndarray],
                       frames: Sequence[np.ndarray], fps: int, lookahead_ms: int) -> list[np.ndarray]:
    """`gate_articulation` of many streams in one pass."""
    times = [np.asarray(f, dtype=np.float64) / fps for f in frames]
    lookahead = lookahead_ms / 1000
    gates = mouth_gates(probabilities, times, [t + lookahead for t in times], lookahead=lookahead)
    gated, start = [], 0
    for w in weights:
        out = w.copy()
        out[:, ARTICULATION] *= gates[start:start + len(w), None]
        gated.append(out)
        start += len(w)
    return gated


def clip_probabilities(audio: np.ndarray) -> np.ndarray:
    """A whole clip's speech probabilities, as a stream of it ends up with."""
    detector = VoiceActivity()
    detector.accept(audio, run=False)
    detector.finish()
    return detector.probabilities
