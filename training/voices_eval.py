"""`emotalk-eval --voices`: a model on real human recordings (training/voices.py), through the
streaming engine, as a user gets it (`Controls()`, the defaults; `--emotion` and
`--no-voice-gate` and `--no-vocal-effort` change them).

Every figure is a pure function of (weights, audio, phones) below; `evaluate_voices` runs the engine
and `format_report` prints. Weights are (T, 52) in EmoTalk order at `fps` (30); frame k shows the
audio at time k / fps. The figures, per clip and overall:

- **bilabial closure** (`bilabial_closure`): the share of /p b m/ phones during which the lips
  close. The lips of a frame are closed when the lip aperture jawOpen - mouthClose is at most
  `CLOSED_APERTURE` (0.05): ARKit's mouthClose shuts the lips over an open jaw, so mouthClose
  rising to within 0.05 of jawOpen closes them whatever the jaw does, and a jaw at rest (jawOpen
  <= 0.05) has them closed too. A phone [start, end) counts as closed when at least one frame whose
  time lies in [start - half a frame, end + half a frame] is closed (every phone has one such
  frame). Other lip shapes (mouthLowerDown, mouthUpperUp, funnel) are not part of the aperture.
  Overall: closed phones / phones, over every clip with phone timings.
- **jawOpen against loudness** (`jaw_loudness_r`): Pearson r between jawOpen and the loudness
  envelope: the RMS amplitude (linear) of the audio in a 1/fps window centred on each frame's time.
  0 where either is constant. Overall: the mean of the speech clips' r.
- **digital silence** (`jaw_digital_silence_p90`): each speech clip is streamed again after 1 s of
  exact zeros (what a noise gate sends); the 90th percentile of jawOpen over the frames of those
  zeros, leaving out the last 100 ms, where a model with look-ahead may anticipate the first sound.
  Overall: the p90 over all those frames.
- **room silence** (`jaw_room_silence_p90`): p90 of jawOpen over the quiet stretches of the
  recordings: frames at least `SPEECH_MARGIN_S` (100 ms) from any speech, speech being every frame
  whose envelope is within `SPEECH_FLOOR_DB` (25 dB) of the clip's loudest frame and every
  non-silence phone where the clip has phone timings; frames whose window is exact zeros are digital
  silence, not room silence, and left out. None for a clip without such frames. Overall: the p90 over
  all of them.
- **noise without a voice** (`jaw_noise_p90`): p90 of jawOpen over every frame of alsa's `Noise.wav`
  and of `NOISE_SECONDS` (3 s) of Gaussian white noise at `NOISE_DBFS` (-30 dBFS RMS, seed 0).
- **24 dB quieter** (`quiet_r`, `quiet_ratio`): the clip scaled by 10^(-24/20), streamed again:
  Pearson r between its jawOpen and the original's, and mean jawOpen quiet / mean jawOpen original
  (None where the original never opens). Overall: the mean r over speech clips, and the ratio of the
  pooled means.
- **closing after speech** (`close_after_speech_s`): seconds from the end of a clip's last spoken
  phone to the first frame after it with closed lips (as for bilabial closure). Overall: the median
  over the clips with phone timings that have a frame after the voice.
- **emotion on calm speech** (`emotion`, `emotion_p`): the engine's (calibrated) emotion of the voice
  over the whole clip, argmax and probability; `emotion_shown`, `emotion_shown_p`: what the face
  shows, the override label and its strength where the controls name one, else the voice's.
  Overall `confident_not_calm`: how many speech clips show an emotion other than neutral or calm
  with p >= 0.5 (every recording is calm or neutral read speech); `detected_not_calm` counts the
  voice's own, which `--emotion auto` would show.
- **largest upper-face weight** (`upper_max`, `upper_max_channel`): the largest weight of the
  expressive upper face over the clip's frames: brows, cheeks, nose, eyeSquint and eyeWide (blinks
  and gaze are not expressions and are left out). Overall: the largest over speech clips.

The targets are issue 11's for the next bundled model (`TARGETS`); `meets` says which hold.
"""
from __future__ import annotations

import argparse
import json
import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.arousal import decoder_levels
from .audio import read_audio
from .blendshapes import INDEX, NAMES
from .calibration import expected_calibration_error
from .control_values import FOLLOW_VOICE, parse_emotion
from .data import ClipInfo, read_alignment
from .errors import UserError
from .voices import SILENCE, Aligner, Clip, Phone, find_clips, phones

FPS = 30
SAMPLE_RATE = 16000
JAW_OPEN, MOUTH_CLOSE = INDEX["jawOpen"], INDEX["mouthClose"]
BILABIALS = frozenset({"p", "b", "m"})
CLOSED_APERTURE = 0.05  # jawOpen - mouthClose at or below this: the lips touch
PREFIX_S = 1.0  # exact zeros before each clip for the digital-silence figure
ANTICIPATION_S = 0.1  # the end of the zeros left out: a model may anticipate the first sound
SPEECH_FLOOR_DB = 25.0  # frames within this of the clip's loudest frame are speech
SPEECH_MARGIN_S = 0.1  # room silence keeps this far from any speech
QUIET_DB = 24.0
NOISE_SECONDS, NOISE_DBFS, NOISE_SEED = 3.0, -30.0, 0
CALM = ("neutral", "calm")
BATCH = 8  # streams decoded side by side
CONFIDENT = 0.5
UPPER_EXPRESSION: tuple[int, ...] = tuple(
    i for i, n in enumerate(NAMES) if n.startswith(("brow", "cheek", "nose", "eyeSquint", "eyeWide")))

# Issue 11's targets: (lowest allowed, highest allowed); None = unbounded.
TARGETS: dict[str, tuple[float | None, float | None]] = {
    "bilabial_closure": (0.85, None),
    "jaw_loudness_r": (0.7, None),
    "jaw_digital_silence_p90": (None, 0.03),
    "jaw_room_silence_p90": (None, 0.03),
    "jaw_noise_p90": (None, 0.05),
    "quiet_r": (0.9, None),
    "quiet_ratio": (0.8, 1.25),
    "close_after_speech_s": (None, 0.1),
    "upper_max": (None, 0.15),
    "confident_not_calm": (None, 0),
}


# -- the figures: pure functions ------------------------------------------------------------------

def _weights(weights: np.ndarray) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != len(NAMES):
        raise ValueError(f"weights of shape {weights.shape}: expected (frames, {len(NAMES)})")
    return weights


def frame_times(frames: int, fps: int = FPS) -> np.ndarray:
    """The time (s) each frame shows: k / fps."""
    return np.arange(frames) / fps


def loudness_envelope(audio: np.ndarray, frames: int, sample_rate: int = SAMPLE_RATE, fps: int = FPS) -> np.ndarray:
    """Linear RMS of the audio in a 1/fps window centred on each frame's time (zeros outside it)."""
    audio = np.asarray(audio, dtype=np.float64)
    centres = frame_times(frames, fps) * sample_rate
    half = sample_rate / fps / 2
    starts, ends = np.round(centres - half).astype(np.int64), np.round(centres + half).astype(np.int64)
    lengths = np.maximum(ends - starts, 1)
    squares = np.concatenate([[0.0], np.cumsum(audio * audio)])
    inside = squares[np.clip(ends, 0, audio.size)] - squares[np.clip(starts, 0, audio.size)]
    return np.sqrt(np.maximum(inside, 0.0) / lengths)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r; 0 where either side is constant (it follows nothing)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"pearson of shapes {x.shape} and {y.shape}")
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 1e-12 else 0.0


def p90(values: np.ndarray) -> float | None:
    """The 90th percentile (numpy's linear interpolation); None for no values."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.percentile(values, 90)) if values.size else None


def lips_closed(weights: np.ndarray) -> np.ndarray:
    """(T,) bool: the lip aperture jawOpen - mouthClose is at most CLOSED_APERTURE."""
    weights = _weights(weights)
    return weights[:, JAW_OPEN] - weights[:, MOUTH_CLOSE] <= CLOSED_APERTURE + 1e-9


def bilabial_closure(weights: np.ndarray, phone_list: Sequence[Phone], fps: int = FPS) -> tuple[int, int]:
    """(closed, bilabials): how many /p b m/ phones have a closed-lip frame within half a frame of
    the phone, and how many /p b m/ phones there are (phones past the last frame excluded)."""
    closed = lips_closed(weights)
    times = frame_times(len(closed), fps)
    half = 0.5 / fps
    count = shut = 0
    for phone in phone_list:
        if phone.label not in BILABIALS:
            continue
        inside = (times >= phone.start - half - 1e-9) & (times <= phone.end + half + 1e-9)
        if not inside.any():
            continue
        count += 1
        shut += int(closed[inside].any())
    return shut, count


def close_after_speech(weights: np.ndarray, phone_list: Sequence[Phone], fps: int = FPS) -> float | None:
    """Seconds from the end of the last spoken phone to the first frame after it with closed lips;
    None when the clip ends first (no frame shows the silence after the voice)."""
    spoken = [p for p in phone_list if p.label != SILENCE]
    if not spoken:
        return None
    end = spoken[-1].end
    times = frame_times(len(weights), fps)
    after = np.flatnonzero((times >= end) & lips_closed(weights))
    return float(times[after[0]] - end) if after.size else None


def jaw_loudness_r(weights: np.ndarray, audio: np.ndarray, sample_rate: int = SAMPLE_RATE, fps: int = FPS) -> float:
    """Pearson r of jawOpen and the loudness envelope over the clip's frames."""
    weights = _weights(weights)
    return pearson(weights[:, JAW_OPEN], loudness_envelope(audio, len(weights), sample_rate, fps))


def speech_frames(audio: np.ndarray, frames: int, phone_list: Sequence[Phone] | None = None,
                  sample_rate: int = SAMPLE_RATE, fps: int = FPS) -> np.ndarray:
    """(T,) bool: frames within SPEECH_MARGIN_S of speech (a frame within SPEECH_FLOOR_DB of the
    loudest, or inside a non-silence phone)."""
    envelope = loudness_envelope(audio, frames, sample_rate, fps)
    speech = np.zeros(frames, dtype=bool)
    if envelope.size and envelope.max() > 0:
        db = 20 * np.log10(np.maximum(envelope, 1e-12))
        speech |= db >= db.max() - SPEECH_FLOOR_DB
    times = frame_times(frames, fps)
    for phone in phone_list or ():
        if phone.label != SILENCE:
            speech |= (times >= phone.start) & (times < phone.end)
    reach = round(SPEECH_MARGIN_S * fps)
    near = speech.copy()
    for shift in range(1, reach + 1):
        near[shift:] |= speech[:-shift]
        near[:-shift] |= speech[shift:]
    return near


def room_silence_frames(audio: np.ndarray, frames: int, phone_list: Sequence[Phone] | None = None,
                        sample_rate: int = SAMPLE_RATE, fps: int = FPS) -> np.ndarray:
    """(T,) bool: the quiet stretches of a recording: away from speech, and not exact zeros."""
    envelope = loudness_envelope(audio, frames, sample_rate, fps)
    return ~speech_frames(audio, frames, phone_list, sample_rate, fps) & (envelope > 0)


def digital_silence_frames(frames: int, prefix_s: float = PREFIX_S, fps: int = FPS) -> np.ndarray:
    """(T,) bool: the frames of a run that shows only the leading zeros (their last ANTICIPATION_S
    left out)."""
    return frame_times(frames, fps) < prefix_s - ANTICIPATION_S - 1e-9


def quieter(weights: np.ndarray, quiet_weights: np.ndarray) -> tuple[float, float | None]:
    """(r, ratio) of the quiet clip's jawOpen against the original's: Pearson r, and mean quiet /
    mean original (None where the original never opens)."""
    jaw, quiet = _weights(weights)[:, JAW_OPEN], _weights(quiet_weights)[:, JAW_OPEN]
    if jaw.shape != quiet.shape:
        raise ValueError(f"{jaw.shape[0]} frames and {quiet.shape[0]} quiet frames")
    mean = float(jaw.mean()) if jaw.size else 0.0
    return pearson(jaw, quiet), (float(quiet.mean()) / mean if mean > 1e-12 else None)


def top_emotion(probabilities: np.ndarray | None, labels: Sequence[str]) -> tuple[str | None, float | None]:
    """(label, probability) of the most probable emotion; (None, None) without probabilities."""
    if probabilities is None:
        return None, None
    probabilities = np.asarray(probabilities, dtype=np.float64)
    best = int(np.argmax(probabilities))
    return labels[best], float(probabilities[best])


def upper_max(weights: np.ndarray) -> tuple[float, str]:
    """(value, channel name) of the largest expressive upper-face weight over all frames."""
    weights = _weights(weights)
    if not len(weights):
        return 0.0, NAMES[UPPER_EXPRESSION[0]]
    upper = weights[:, UPPER_EXPRESSION]
    frame, column = np.unravel_index(int(np.argmax(upper)), upper.shape)
    return float(upper[frame, column]), NAMES[UPPER_EXPRESSION[column]]


def meets(overall: dict[str, Any]) -> dict[str, bool]:
    """Which of TARGETS the overall figures reach."""
    result = {}
    for key, (low, high) in TARGETS.items():
        value = overall.get(key)
        result[key] = value is not None and (low is None or value >= low) and (high is None or value <= high)
    return result


def confident_not_calm(rows: Sequence[dict[str, Any]], key: str) -> int:
    """Clips whose `key` emotion is neither neutral nor calm at p >= CONFIDENT."""
    return sum(1 for r in rows if r[key] is not None and r[key] not in CALM and r[f"{key}_p"] >= CONFIDENT)


def white_noise(seconds: float = NOISE_SECONDS, dbfs: float = NOISE_DBFS, seed: int = NOISE_SEED,
                sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Gaussian white noise at `dbfs` RMS, the same for a seed."""
    noise = np.random.default_rng(seed).standard_normal(round(seconds * sample_rate))
    return (noise * 10 ** (dbfs / 20)).astype(np.float32)


# -- running a model --------------------------------------------------------------------------------

@dataclass
class _Item:
    clip: Clip
    audio: np.ndarray
    phones: list[Phone] | None
    phones_from: str | None


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _median(values: Sequence[float | None]) -> float | None:
    """The median of the known values (an aligner's error on one clip moves it little)."""
    known = [v for v in values if v is not None]
    return _round(float(np.median(known)), 3) if known else None


def _process(engine: Any, runs: Sequence[np.ndarray], controls: Any,
             batch: int = BATCH) -> list[tuple[np.ndarray, Any]]:
    """`engine.process_with_emotion` on `runs`, in batches of similar lengths (a batch of dozens of
    streams of mixed lengths costs twice the CPU: their states are gathered and scattered each step)."""
    order = sorted(range(len(runs)), key=lambda i: len(runs[i]))
    outputs: list[Any] = [None] * len(runs)
    for start in range(0, len(order), batch):
        chosen = order[start:start + batch]
        for i, output in zip(chosen, engine.process_with_emotion([runs[i] for i in chosen], controls)):
            outputs[i] = output
    return outputs


def corpus_closure(engine: Any, clips: Sequence[ClipInfo], controls: Any = None) -> dict[str, Any]:
    """Bilabial closure on a corpus's clips (their phone timings are exact) through `engine` at
    `controls` (default: `Controls()`). On the held-out synthetic voices it ranks training runs as
    the real recordings do (docs/results.md#a-timed-rebuild-from-nothing), without touching them."""
    from ..engine import Controls

    timed = [c for c in clips if c.align is not None]
    audio = [read_audio(c.wav, SAMPLE_RATE) for c in timed]
    shut = total = 0
    for clip, (weights, _) in zip(timed, _process(engine, audio, controls or Controls())):
        closed, count = bilabial_closure(weights, [Phone(label, start, end)
                                                   for start, end, label in read_alignment(clip.align)])
        shut, total = shut + closed, total + count
    return {"bilabial_closure": _round(shut / total, 3) if total else None, "bilabials": total}


def speaker_stream_emotion(engine: Any, clips: Sequence[ClipInfo], seed: int = 0) -> dict[str, Any]:
    """The emotion a stream reports as its voice's feeling changes: each voice's labelled clips (a
    clip without one, espeak-ng's, is its person's voice) played back to back in a `seed`ed random
    order as one stream through `engine`, read at each clip's end (to within a hop): the share read
    right, per voice and in all, and the readings' expected calibration error. A reading that
    rests on everything since the stream began scores near chance here on long streams while
    scoring clips alone as well (docs/model.md#the-voices-recent-emotion)."""
    labels = engine.cfg.emotion_labels
    voices: dict[str, list[ClipInfo]] = {}
    for clip in clips:
        if clip.emotion in labels:
            voices.setdefault(clip.voice or f"person {clip.person}", []).append(clip)
    rng = np.random.default_rng(seed)
    names = sorted(voices)
    playlists = [[voices[name][i] for i in rng.permutation(len(voices[name]))] for name in names]
    streams = [engine.create_stream() for _ in playlists]
    right = [0] * len(playlists)
    readings, truths = [], []
    for turn in range(max(map(len, playlists), default=0)):
        playing = [i for i, playlist in enumerate(playlists) if turn < len(playlist)]
        for i in playing:
            streams[i].accept_waveform(SAMPLE_RATE, read_audio(playlists[i][turn].wav, SAMPLE_RATE))
        while ready := [streams[i] for i in playing if engine.is_ready(streams[i])]:
            engine.step(ready)
        for i in playing:
            deque(streams[i].frames(), maxlen=0)  # forgotten: only the emotion is read
            probabilities = streams[i].emotion_probabilities()
            right[i] += probabilities is not None and labels[int(probabilities.argmax())] == playlists[i][turn].emotion
            if probabilities is not None:
                readings.append(probabilities)
                truths.append(labels.index(playlists[i][turn].emotion))
    for stream in streams:
        stream.close()
    per_voice = {name: _round(right[i] / len(playlists[i]), 3) for i, name in enumerate(names)}
    ece = expected_calibration_error(np.stack(readings), np.array(truths)) if readings else None
    return {"stream_emotion_accuracy": _round(sum(right) / max(1, sum(map(len, playlists))), 3),
            "stream_emotion_accuracy_by_voice": per_voice, "stream_emotion_ece": _round(ece, 3)}


def evaluate_voices(engine: Any, clips: Sequence[Clip], noise_seconds: float = NOISE_SECONDS,
                    controls: Any = None) -> dict[str, Any]:
    """Run `engine` (an `emotalk_stream.engine.Engine`) on `clips` and the synthetic white noise with
    `controls` (default: the engine's defaults); the per-clip and overall figures, the targets and
    which are met."""
    from ..engine import Controls  # the engine package imports this one's siblings: import late

    controls = controls or Controls()
    override, strength = parse_emotion(engine.emotion_setting(controls), engine.cfg.emotion_labels)
    level = engine.level_setting(controls)

    if engine.cfg.fps != FPS or engine.sample_rate != SAMPLE_RATE:
        raise UserError(f"the voices evaluation is for {FPS} fps at {SAMPLE_RATE} Hz, not {engine.cfg.fps} fps "
                        f"at {engine.sample_rate} Hz")
    aligner: list[Aligner] = []

    def make_aligner() -> Aligner:
        if not aligner:
            aligner.append(Aligner())
        return aligner[0]

    items = []
    for clip in clips:
        audio = clip.read()
        found, source = phones(clip, audio, make_aligner) if clip.kind == "speech" else (None, None)
        items.append(_Item(clip, audio, found, source))
    noise = Clip("synthetic/white_noise", "synthetic", Path("-"), "noise", None,
                 f"generated here (Gaussian, {NOISE_DBFS:g} dBFS, seed {NOISE_SEED})")
    items.append(_Item(noise, white_noise(noise_seconds), None, None))

    speech = [i for i in items if i.clip.kind == "speech"]
    gain = np.float32(10 ** (-QUIET_DB / 20))
    prefix = np.zeros(round(PREFIX_S * SAMPLE_RATE), dtype=np.float32)
    runs = ([i.audio for i in items] + [i.audio * gain for i in speech]
            + [np.concatenate([prefix, i.audio]) for i in speech])
    outputs = _process(engine, runs, controls)
    plain = outputs[:len(items)]
    quiet = outputs[len(items):len(items) + len(speech)]
    prefixed = outputs[len(items) + len(speech):]
    labels = tuple(engine.cfg.emotion_labels)

    rows: list[dict[str, Any]] = []
    pooled: dict[str, list[np.ndarray]] = {"digital": [], "room": [], "noise": [], "jaw": [], "quiet": [], "level": []}
    closed = bilabials = 0
    by_clip = {id(item): k for k, item in enumerate(speech)}
    for item, (weights, probabilities) in zip(items, plain):
        clip, audio = item.clip, item.audio
        label, probability = top_emotion(probabilities, labels)
        top, channel = upper_max(weights)
        row: dict[str, Any] = {"name": clip.name, "source": clip.source, "kind": clip.kind, "licence": clip.licence,
                               "seconds": _round(len(audio) / SAMPLE_RATE, 3), "frames": len(weights),
                               "jaw_mean": _round(weights[:, JAW_OPEN].mean() if len(weights) else 0.0)}
        if clip.kind == "noise":
            pooled["noise"].append(weights[:, JAW_OPEN])
            row["jaw_noise_p90"] = _round(p90(weights[:, JAW_OPEN]))
        else:
            k = by_clip[id(item)]
            row["phones_from"] = item.phones_from
            if item.phones is not None:
                shut, count = bilabial_closure(weights, item.phones)
                closed, bilabials = closed + shut, bilabials + count
                row.update(bilabials=count, bilabials_closed=shut,
                           bilabial_closure=_round(shut / count) if count else None,
                           close_after_speech_s=_round(close_after_speech(weights, item.phones), 3))
            else:
                row.update(bilabials=None, bilabials_closed=None, bilabial_closure=None, close_after_speech_s=None)
            row["jaw_loudness_r"] = _round(jaw_loudness_r(weights, audio))
            lead = prefixed[k][0]
            zeros = lead[digital_silence_frames(len(lead)), JAW_OPEN]
            pooled["digital"].append(zeros)
            row["jaw_digital_silence_p90"] = _round(p90(zeros))
            room = weights[room_silence_frames(audio, len(weights), item.phones), JAW_OPEN]
            pooled["room"].append(room)
            row.update(room_silence_frames=int(room.size), jaw_room_silence_p90=_round(p90(room)))
            r, ratio = quieter(weights, quiet[k][0])
            pooled["jaw"].append(weights[:, JAW_OPEN])
            pooled["quiet"].append(quiet[k][0][:, JAW_OPEN])
            row.update(quiet_r=_round(r), quiet_ratio=_round(ratio))
            # the emotion level each frame was decoded at: the calm face's follows the voice's arousal
            levels = (decoder_levels(audio, len(weights), FPS, SAMPLE_RATE) if level == FOLLOW_VOICE
                      else np.full(len(weights), level))
            pooled["level"].append(levels)
            row["level_mean"] = _round(levels.mean() if len(levels) else 0.0)
        shown, shown_p = (labels[override], strength) if override is not None else (label, probability)
        row.update(emotion=label, emotion_p=_round(probability), emotion_shown=shown, emotion_shown_p=_round(shown_p),
                   upper_max=_round(top), upper_max_channel=channel)
        rows.append(row)

    speech_rows = [r for r in rows if r["kind"] == "speech"]
    jaw, quiet_jaw = np.concatenate(pooled["jaw"]), np.concatenate(pooled["quiet"])
    loudest = max(speech_rows, key=lambda r: r["upper_max"])
    emotions = Counter(r["emotion"] for r in speech_rows)
    overall: dict[str, Any] = {
        "speech_clips": len(speech_rows),
        "noise_clips": len(rows) - len(speech_rows),
        "speech_seconds": _round(sum(r["seconds"] for r in speech_rows), 2),
        "bilabials": bilabials,
        "bilabial_closure": _round(closed / bilabials) if bilabials else None,
        "jaw_loudness_r": _round(np.mean([r["jaw_loudness_r"] for r in speech_rows])),
        "jaw_digital_silence_p90": _round(p90(np.concatenate(pooled["digital"]))),
        "room_silence_frames": int(sum(r.size for r in pooled["room"])),
        "jaw_room_silence_p90": _round(p90(np.concatenate(pooled["room"]))),
        "jaw_noise_p90": _round(p90(np.concatenate(pooled["noise"]))),
        "quiet_r": _round(np.mean([r["quiet_r"] for r in speech_rows])),
        "quiet_ratio": _round(quiet_jaw.mean() / jaw.mean()) if jaw.mean() > 1e-12 else None,
        "close_after_speech_s": _median([r["close_after_speech_s"] for r in speech_rows]),
        "confident_not_calm": confident_not_calm(speech_rows, "emotion_shown"),
        "detected_not_calm": confident_not_calm(speech_rows, "emotion"),
        "emotions": dict(emotions.most_common()),
        "upper_max": loudest["upper_max"],
        "upper_max_channel": loudest["upper_max_channel"],
        "upper_max_clip": loudest["name"],
        "upper_max_median": _round(np.median([r["upper_max"] for r in speech_rows])),
        "level_mean": _round(np.concatenate(pooled["level"]).mean()),
        "level_p90": _round(p90(np.concatenate(pooled["level"]))),
    }
    return {"fps": FPS, "hop_ms": engine.hop_ms, "lookahead_ms": engine.lookahead_ms,
            "controls": {"emotion": engine.emotion_setting(controls), "level": level, "voice_gate": controls.voice_gate,
                         "vocal_effort": controls.vocal_effort},
            "emotion_labels": list(labels), "clips": rows, "overall": overall,
            "targets": {k: list(v) for k, v in TARGETS.items()}, "meets": meets(overall)}


# -- the report -----------------------------------------------------------------------------------

def _cell(value: Any, width: int) -> str:
    text = "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
    return text.rjust(width)


def target_text(key: str) -> str:
    low, high = TARGETS[key]
    if low is not None and high is not None:
        return f"{low:g}-{high:g}"
    return f">= {low:g}" if low is not None else f"<= {high:g}"


def format_report(result: dict[str, Any]) -> str:
    """Per clip, then overall beside the targets."""
    lines = [f"{result['model']}: {result['overall']['speech_clips']} speech clips "
             f"({result['overall']['speech_seconds']} s), {result['overall']['noise_clips']} without a voice; "
             f"hop {result['hop_ms']} ms, look-ahead {result['lookahead_ms']} ms",
             f"{'clip':<22}{'s':>6}{'closure':>9}{'r loud':>8}{'digital':>8}{'room':>7}{'noise':>7}"
             f"{'r -24dB':>8}{'ratio':>7}  {'emotion':<16}{'upper max':>10}"]
    for row in result["clips"]:
        closure = f"{row['bilabials_closed']}/{row['bilabials']}" if row.get("bilabials") else "-"
        emotion = f"{row['emotion']} {row['emotion_p']:.2f}" if row["emotion"] else "-"
        lines.append(f"{row['name']:<22}{row['seconds']:>6.2f}{closure:>9}{_cell(row.get('jaw_loudness_r'), 8)}"
                     f"{_cell(row.get('jaw_digital_silence_p90'), 8)}{_cell(row.get('jaw_room_silence_p90'), 7)}"
                     f"{_cell(row.get('jaw_noise_p90'), 7)}{_cell(row.get('quiet_r'), 8)}"
                     f"{_cell(row.get('quiet_ratio'), 7)}  {emotion:<16}{_cell(row['upper_max'], 10)} "
                     f"{row['upper_max_channel']}")
    overall = result["overall"]
    lines.append(f"{'overall':<26}{'measured':>10}{'target':>12}")
    for key in TARGETS:
        mark = "ok" if result["meets"][key] else "MISSED"
        lines.append(f"{key:<26}{_cell(overall[key], 10)}{target_text(key):>12}  {mark}")
    lines.append(f"emotions on calm speech: {overall['emotions']}; largest upper-face weight "
                 f"{overall['upper_max_channel']} in {overall['upper_max_clip']}")
    lines.append(f"emotion level ({result['controls']['level']}) on calm speech: mean {overall['level_mean']:.3f}, "
                 f"p90 {overall['level_p90']:.3f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    """`emotalk-eval --voices`: the engine from --engine or --model, the report on stdout."""
    from ..engine import Controls, Engine

    if getattr(args, "templates", None) is not None:
        raise UserError("--templates scores vertices of a data split; --voices has no ground-truth faces")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit} must be at least 1")
    if args.engine is not None and str(args.model) != "default":
        raise UserError("give --model or --engine, not both")
    clips = find_clips(args.voices_cache)
    if args.limit is not None:
        speech = [c for c in clips if c.kind == "speech"][:args.limit]
        clips = speech + [c for c in clips if c.kind != "speech"]
    if args.engine is not None:
        engine, name = Engine.from_artifact(args.engine), str(args.engine)
    else:
        engine = Engine.load(args.model, lookahead_ms=args.lookahead_ms, device=args.device)
        name = str(args.model)
    controls = Controls(emotion=args.emotion, voice_gate=not args.no_voice_gate, vocal_effort=not args.no_vocal_effort)
    engine.resolve_controls(controls)  # a bad --emotion fails here, before the recordings are read
    result = {"model": name, **evaluate_voices(engine, clips, controls=controls)}
    print(json.dumps(result) if args.json else format_report(result))
