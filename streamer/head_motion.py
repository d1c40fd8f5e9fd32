"""Speech-driven head motion and eye behaviour: the head's and the eyes' angles for every output frame.

Pure: frame times and the weights the face shows go in, angles come out; no I/O (the sinks put them
on the wire). Everything runs on the audio clock (frame times) with seeded random draws, never the
wall clock, so a file streamed with `--no-pace` moves the head exactly as a live run of the same
audio would, and the same seed gives the same motion.

The speech signal is the frame's jawOpen: the voice-activity gate shuts the jaw where nobody speaks
(docs/model.md), so silence and noise leave the head still without an audio analysis of its own.

Head: a slow sway while speaking that fades out in silence; a small nod on each stressed syllable
(jawOpen rising well above its recent level; the nod starts as the syllable peaks, and grows with
how far it rose); a settling nod with a tilt where a phrase ends. Each
gesture is a smooth bump (sin^2) added to the sway, and a soft limit (tanh) keeps every angle under
its bound, so nothing jumps from one frame to the next.

Eyes: gaze holds of 0.5-3 s (shorter while speaking), each ended by a saccade of 25-60 ms to a new
point within a few degrees, about half of them back to the audience. As in people, a gaze shift
often comes with a blink: a blink (the frame's eyeBlink weights, procedural or the model's) brings the
next shift forward; and a phrase end brings the eyes back to the audience.

Angles are degrees, right-handed about the face's own axes as ARKit's face anchor has them (x to the
face's left, y up, z out of the face): pitch > 0 looks down, yaw > 0 turns to the face's own left,
roll > 0 tilts the head to its own right. Each output maps them to its protocol.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..training.blendshapes import INDEX
from ..training.blinks import BLINK_CHANNELS


@dataclass(frozen=True)
class Rotation:
    """Degrees about the face's own axes (see the module docstring); an eye's roll is always 0."""

    pitch: float = 0.0
    yaw: float = 0.0
    roll: float = 0.0


REST = Rotation()


@dataclass(frozen=True)
class Motion:
    """The head's and the eyes' rotations of one frame (both eyes look the same way).

    None where that motion is off (amount 0) and was already off the frame before: outputs that can
    leave it out (VMC) then send nothing, so the receiving app keeps its own (a camera's) head and eyes;
    the others send the rest pose.
    """

    head: Rotation | None = None
    eyes: Rotation | None = None


JAW = INDEX["jawOpen"]
RAMP_S = 0.3  # a live change of amount moves by 1 in this long, so the head never jumps to it

# The speech signal, from jawOpen (the bundled model opens it to 0.1-0.4 while speaking).
SPEAKING_JAW = 0.05  # above this the voice is speaking
ENVELOPE_S = (0.02, 0.12)  # time constants of the jaw's envelope as it opens, as it closes
BASELINE_S = 0.5  # the envelope's recent level
TALK_S = 0.7  # how fast the sway comes with speech and fades in silence
STRESS_RISE = 0.06  # the envelope this far above its recent level is a stressed syllable ...
STRESS_FULL = 0.2  # ... this far, a full nod
NOD_GAP_S = 0.25  # at most one nod per syllable
PAUSE_S = 0.3  # the jaw shut this long ends a phrase ...
PHRASE_MIN_S = 0.8  # ... of at least this much speech

# The head at amount 1, in degrees, as (pitch, yaw, roll).
HEAD_LIMIT = np.array([5.0, 6.0, 4.0])  # soft bounds: no angle reaches them
SWAY = np.array([0.8, 1.5, 1.0])  # each axis the mean of two sinusoids of these amplitudes ...
SWAY_HZ = (0.08, 0.3)  # ... at frequencies drawn from this range
NOD_PITCH = (1.5, 3.0)  # a full nod: down by this much ...
NOD_TURN_TILT = 0.6  # ... with a little turn and tilt (standard deviations)
NOD_S = (0.35, 0.55)
SETTLE_PITCH = (1.0, 2.5)  # a phrase end: a slower nod down ...
SETTLE_TILT = (1.0, 2.5)  # ... with a tilt to either side
SETTLE_S = (0.7, 1.0)

# The eyes at amount 1, in degrees.
GAZE_PITCH = (-3.0, 4.0)  # gaze points within these (up, down) ...
GAZE_YAW = 6.0  # ... and +-this
GAZE_AT_AUDIENCE = 0.5  # the share of shifts back to the audience (straight ahead, within AUDIENCE_JITTER)
AUDIENCE_JITTER = 0.5
HOLD_S = (0.5, 3.0)  # a gaze hold lasts this long ...
HOLD_MEAN_S = (1.2, 2.0)  # ... on average while speaking, and in silence
BLINK_SHIFT = 0.5  # the chance that a blink after the shortest hold brings the gaze shift forward
LIDS_SHUT = 0.5
SACCADE_S = 0.025  # a saccade lasts this long, and SACCADE_S_PER_DEG more per degree (main sequence)
SACCADE_S_PER_DEG = 0.0025

_HEAD_STREAM, _EYE_STREAM = 1, 2  # random streams of a seed, apart from the blinks' (training/blinks.py)


def _follow(value: float, target: float, seconds: float, dt: float) -> float:
    """One step of a one-pole low-pass with time constant `seconds`."""
    return value + (1.0 - math.exp(-dt / seconds)) * (target - value)


class _Speech:
    """The jaw's envelope, how much the voice is speaking (0-1), and the events the head and eyes
    follow: a stressed syllable (its strength 0-1) and a phrase end."""

    def __init__(self, dt: float):
        self._dt = dt
        self.envelope = 0.0
        self._baseline = 0.0
        self.talk = 0.0
        self._armed = True
        self._rising: float | None = None  # how far a syllable has risen above the recent level so far
        self._last_nod = -math.inf
        self._voiced_since: float | None = None
        self._last_voiced = -math.inf

    def update(self, time: float, jaw: float) -> tuple[float | None, bool]:
        """(the strength of a stressed syllable peaking now or None, whether a phrase ended now)."""
        jaw = min(max(jaw, 0.0), 1.0)
        opening, closing = ENVELOPE_S
        self.envelope = _follow(self.envelope, jaw, opening if jaw > self.envelope else closing, self._dt)
        self._baseline = _follow(self._baseline, self.envelope, BASELINE_S, self._dt)
        speaking = self.envelope > SPEAKING_JAW
        self.talk = _follow(self.talk, float(speaking), TALK_S, self._dt)
        rise = self.envelope - self._baseline
        stress = None
        if self._rising is not None:  # a stressed syllable: nod as it peaks, by how far it rose
            if rise >= self._rising:
                self._rising = rise
            else:
                stress = min(self._rising / STRESS_FULL, 1.0)
                self._rising, self._last_nod = None, time
        elif rise > STRESS_RISE and self._armed and time - self._last_nod >= NOD_GAP_S:
            self._rising, self._armed = rise, False
        elif rise < STRESS_RISE / 2:
            self._armed = True
        phrase_end = False
        if speaking:
            if self._voiced_since is None:
                self._voiced_since = time
            self._last_voiced = time
        elif self._voiced_since is not None and time - self._last_voiced >= PAUSE_S:
            phrase_end = self._last_voiced - self._voiced_since >= PHRASE_MIN_S
            self._voiced_since = None
        return stress, phrase_end


@dataclass
class _Gesture:
    start: float
    duration: float
    peak: np.ndarray  # (pitch, yaw, roll) degrees at the middle

    def at(self, time: float) -> np.ndarray:
        u = (time - self.start) / self.duration
        return self.peak * (math.sin(math.pi * u) ** 2 if 0.0 <= u <= 1.0 else 0.0)


class _Head:
    """The head's (pitch, yaw, roll) at amount 1: sway, nods and phrase-end settles, soft-limited."""

    def __init__(self, rng: np.random.Generator):
        self._rng = rng
        self._hz = rng.uniform(*SWAY_HZ, size=(3, 2))
        self._phase = rng.uniform(0.0, 2.0 * math.pi, size=(3, 2))
        self._gestures: list[_Gesture] = []

    def angles(self, time: float, talk: float, stress: float | None, phrase_end: bool) -> np.ndarray:
        rng = self._rng
        if stress is not None:
            peak = stress * np.array([rng.uniform(*NOD_PITCH), *rng.normal(0.0, NOD_TURN_TILT, 2)])
            self._gestures.append(_Gesture(time, rng.uniform(*NOD_S), peak))
        if phrase_end:
            tilt = rng.uniform(*SETTLE_TILT) * rng.choice((-1.0, 1.0))
            peak = np.array([rng.uniform(*SETTLE_PITCH), rng.normal(0.0, NOD_TURN_TILT), tilt])
            self._gestures.append(_Gesture(time, rng.uniform(*SETTLE_S), peak))
        self._gestures = [g for g in self._gestures if time <= g.start + g.duration]
        waves = np.sin(2.0 * math.pi * self._hz * time + self._phase)
        raw = SWAY * talk * ((waves[:, 0] + waves[:, 1]) / 2)  # the mean of each axis's two waves
        for gesture in self._gestures:
            raw = raw + gesture.at(time)
        return HEAD_LIMIT * np.tanh(raw / HEAD_LIMIT)


class _Eyes:
    """The eyes' (pitch, yaw) at amount 1: gaze holds joined by saccades."""

    def __init__(self, rng: np.random.Generator):
        self._rng = rng
        self._from = self._to = np.zeros(2)
        self._start = self._duration = 0.0  # of the last saccade
        self._hold_until: float | None = None
        self._lids = 0.0

    def angles(self, time: float, speaking: bool, lids: float, phrase_end: bool) -> np.ndarray:
        if self._hold_until is None:
            self._hold_until = time + self._hold(speaking)
        settled = self._start + self._duration
        if time >= settled:
            blink = lids >= LIDS_SHUT > self._lids
            held_enough = time - settled >= HOLD_S[0]
            if time >= self._hold_until:
                self._shift(time, speaking, self._target())
            elif held_enough and phrase_end and np.abs(self._to).max() > AUDIENCE_JITTER:
                self._shift(time, speaking, np.zeros(2))  # back to the audience as the phrase ends
            elif held_enough and blink and self._rng.random() < BLINK_SHIFT:
                self._shift(time, speaking, self._target())
        self._lids = lids
        u = min((time - self._start) / self._duration, 1.0) if self._duration else 1.0
        return self._from + (10 * u**3 - 15 * u**4 + 6 * u**5) * (self._to - self._from)  # minimum jerk

    def _hold(self, speaking: bool) -> float:
        mean = HOLD_MEAN_S[0 if speaking else 1]
        return float(np.clip(self._rng.gamma(2.0, mean / 2.0), *HOLD_S))

    def _target(self) -> np.ndarray:
        rng = self._rng
        if rng.random() < GAZE_AT_AUDIENCE:
            return rng.uniform(-AUDIENCE_JITTER, AUDIENCE_JITTER, 2)
        return np.array([rng.uniform(*GAZE_PITCH), rng.uniform(-GAZE_YAW, GAZE_YAW)])

    def _shift(self, time: float, speaking: bool, target: np.ndarray) -> None:
        self._from, self._to = self._to, target
        self._start = time
        self._duration = SACCADE_S + SACCADE_S_PER_DEG * float(np.abs(target - self._from).max())
        self._hold_until = time + self._duration + self._hold(speaking)


class MotionModel:
    """Head and eye angles for frames at `fps`, called once per frame in time order; `seed` fixes
    every random draw (the amounts only scale the angles, so changing them never reshuffles it)."""

    def __init__(self, fps: int, seed: int = 0):
        self._dt = 1.0 / fps
        self._speech = _Speech(self._dt)
        self._head = _Head(np.random.default_rng([seed, _HEAD_STREAM]))
        self._eyes = _Eyes(np.random.default_rng([seed, _EYE_STREAM]))
        self._amounts: list[float] | None = None  # in effect, ramping towards the settings
        self._last = Motion()

    def __call__(self, time: float, weights: np.ndarray, head_amount: float, eye_amount: float) -> Motion:
        """The motion of the frame at `time` showing `weights` (52, EmoTalk order), at the given
        amounts (0 off, 1 natural; `face.check_motion`)."""
        stress, phrase_end = self._speech.update(time, float(weights[JAW]))
        head = self._head.angles(time, self._speech.talk, stress, phrase_end)
        left, right = BLINK_CHANNELS
        lids = float((weights[left] + weights[right]) / 2)
        eyes = self._eyes.angles(time, self._speech.talk > 0.5, lids, phrase_end)
        before = self._amounts or [head_amount, eye_amount]
        self._amounts = [_ramp(now, target, self._dt) for now, target in zip(before, (head_amount, eye_amount))]
        (head_now, eyes_now), (head_before, eyes_before) = self._amounts, before
        self._last = Motion(_scaled(head, head_now, head_before), _scaled(np.append(eyes, 0.0), eyes_now, eyes_before))
        return self._last

    def rest(self) -> Motion:
        """The motion of the neutral frame that ends a stream: at rest where the last frame had any."""
        return Motion(None if self._last.head is None else REST, None if self._last.eyes is None else REST)


def _ramp(now: float, target: float, dt: float) -> float:
    step = dt / RAMP_S
    return target if abs(target - now) <= step else now + math.copysign(step, target - now)


def _scaled(angles: np.ndarray, amount: float, before: float) -> Rotation | None:
    """`angles` (pitch, yaw, roll) times `amount`: exactly REST at 0, None once 0 was already in effect."""
    if amount == 0.0:
        return None if before == 0.0 else REST
    pitch, yaw, roll = (float(a) + 0.0 for a in amount * angles)  # + 0.0: no -0.0 in silence
    return Rotation(pitch, yaw, roll)
