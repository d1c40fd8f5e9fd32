"""The 24 synthetic persons and the 8 emotions: how each sounds and how each looks.

A person is an espeak-ng voice (variant, accent, base pitch, rate, range) plus a face style
(articulation gain, resting smile or frown, left/right asymmetry, brow activity, jaw-vs-lips
emphasis), fixed by the person index alone so every corpus agrees on who person 7 is.

An emotion is a prosody change (rate, pitch, range, volume, pauses), a deterministic audio
colouring that a small model can hear whatever the voice (sad is low-passed, angry saturated,
fearful trembles at 6 Hz, ...), a lower-face articulation gain and a facial expression. Level 1
applies the full change from neutral, level 0 about half of it (`STRENGTH`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torchaudio.functional as AF

from . import blendshapes
from .config import RAVDESS_EMOTIONS
from .espeak import Voice
from .visemes import FPS, JAW_GROUP, expand

PERSONS = 24
STRENGTH = (0.5, 1.0)  # level 0, level 1
SAMPLE_RATE = 16000
TREMOLO_HZ = 6.0
ONSET_S = 0.3  # the expression builds up over the first 0.3 s of speech
RELEASE_S = 0.4  # and relaxes over 0.4 s after the last phoneme
_NO_LOWPASS_HZ = 7600.0  # "no low-pass" end of the level interpolation, near 16 kHz Nyquist

# espeak-ng voice (language + variant) per person; even indices female, odd male.
_VOICES = (
    "en-us+f3", "en-us+m3", "en+f1", "en-us+m1", "en-us+f2", "en+m2", "en-us+Annie", "en-us+m4",
    "en-us+f4", "en-us+Andy", "en+f5", "en-us+m6", "en-us+belinda", "en+m7", "en-us+steph",
    "en-us+robert", "en-us+aunty", "en-us+Mike", "en+Alicia", "en-us+klatt3", "en-us+anika",
    "en+m5", "en-us+shelby", "en-us+david",
)


@dataclass(frozen=True)
class Person:
    index: int
    voice: str
    pitch: int  # espeak-ng base pitch, 0..100
    rate: int  # words per minute
    range: int  # espeak-ng pitch range, 0..100
    articulation: float  # gain on visemes, 0.8..1.25
    smile: float  # resting mouth: > 0 smile, < 0 frown
    asymmetry: float  # Left channels x (1 + a), Right x (1 - a)
    brows: float  # gain on brow movement
    jaw_emphasis: float  # jaw group x (1 + e), lip group x (1 - e)


def _spread(low: float, high: float, attribute: int) -> np.ndarray:
    """PERSONS values evenly covering [low, high], shuffled by a fixed per-attribute permutation."""
    return np.linspace(low, high, PERSONS)[np.random.default_rng([0xFACE, attribute]).permutation(PERSONS)]


_PITCH = _spread(36, 64, 0)
_RATE = _spread(150, 195, 1)
_RANGE = _spread(40, 62, 2)
_ARTICULATION = _spread(0.8, 1.25, 3)
_SMILE = _spread(-0.08, 0.12, 4)
_ASYMMETRY = _spread(-0.12, 0.12, 5)
_BROWS = _spread(0.6, 1.4, 6)
_JAW_EMPHASIS = _spread(-0.2, 0.2, 7)


def person(index: int) -> Person:
    """Person `index` (0..23): the same voice and face style in every corpus."""
    if not 0 <= index < PERSONS:
        raise ValueError(f"person must be 0..{PERSONS - 1}, got {index}")
    return Person(index, _VOICES[index], int(round(_PITCH[index])), int(round(_RATE[index])),
                  int(round(_RANGE[index])), round(float(_ARTICULATION[index]), 3),
                  round(float(_SMILE[index]), 3), round(float(_ASYMMETRY[index]), 3),
                  round(float(_BROWS[index]), 3), round(float(_JAW_EMPHASIS[index]), 3))


@dataclass(frozen=True)
class Emotion:
    """Deviations from neutral at full level (level 1)."""

    name: str
    rate: float = 1.0  # x the person's rate
    pitch: float = 0.0  # + espeak pitch
    range: float = 0.0  # + espeak pitch range
    volume: float = 1.0  # x espeak volume
    wordgap: float = 0.0  # + pause between words (10 ms units)
    lowpass_hz: float | None = None  # darker voice
    shelf_db: float = 0.0  # treble shelf above 3 kHz: brighter voice
    peak: tuple[float, float, float] | None = None  # (Hz, dB, Q) resonance: nasal, gasp, presence
    drive: float = 0.0  # tanh saturation: strained voice
    tremolo: float = 0.0  # amplitude modulation depth at TREMOLO_HZ: trembling voice
    breath: float = 0.0  # breath noise relative to the speech envelope: soft voice
    articulation: float = 1.0  # x viseme amplitude
    brow_raise: float = 1.0  # x speech-driven brow raises
    face: dict[str, float] = field(default_factory=dict)  # expression (L/R names set both sides)


EMOTIONS: dict[str, Emotion] = {e.name: e for e in (
    Emotion("neutral"),
    Emotion("calm", rate=0.85, pitch=-5, range=-22, volume=0.8, wordgap=2, lowpass_hz=4500, breath=0.12,
            articulation=0.9, brow_raise=0.6,
            face={"mouthSmile": 0.12, "eyeSquint": 0.12, "eyeBlink": 0.08, "browInnerUp": 0.05}),
    Emotion("happy", rate=1.12, pitch=16, range=30, volume=1.1, shelf_db=12.0, articulation=1.05,
            brow_raise=1.2,
            face={"mouthSmile": 0.6, "mouthDimple": 0.2, "cheekSquint": 0.55, "eyeSquint": 0.4,
                  "browOuterUp": 0.1}),
    Emotion("sad", rate=0.72, pitch=-12, range=-28, volume=0.6, wordgap=4, lowpass_hz=1400,
            articulation=0.75, brow_raise=0.5,
            face={"browInnerUp": 0.6, "browDown": 0.15, "mouthFrown": 0.45, "mouthShrugLower": 0.2,
                  "mouthPress": 0.1, "eyeLookDown": 0.15, "eyeBlink": 0.12}),
    Emotion("angry", rate=1.12, pitch=5, range=18, volume=1.6, peak=(2000.0, 6.0, 1.0), drive=4.0,
            articulation=1.25, brow_raise=0.6,
            face={"browDown": 0.65, "eyeSquint": 0.35, "noseSneer": 0.3, "mouthPress": 0.25,
                  "jawForward": 0.1, "mouthUpperUp": 0.1}),
    Emotion("fearful", rate=1.3, pitch=20, range=-8, volume=0.9, tremolo=0.7, articulation=0.95,
            face={"browInnerUp": 0.65, "browOuterUp": 0.35, "eyeWide": 0.6, "mouthStretch": 0.4,
                  "mouthFrown": 0.1}),
    Emotion("disgusted", rate=0.8, pitch=-8, range=8, volume=0.95, wordgap=2, peak=(1000.0, 12.0, 2.0),
            articulation=0.9, brow_raise=0.7,
            face={"noseSneer": 0.6, "mouthUpperUp": 0.4, "browDown": 0.35, "eyeSquint": 0.3,
                  "cheekSquint": 0.25, "mouthFrown": 0.2, "mouthShrugUpper": 0.2}),
    Emotion("surprised", rate=0.95, pitch=26, range=50, volume=1.2, peak=(4500.0, 14.0, 2.0),
            articulation=1.25, brow_raise=1.4,
            face={"browInnerUp": 0.55, "browOuterUp": 0.65, "eyeWide": 0.7, "jawOpen": 0.12,
                  "mouthFunnel": 0.1}),
)}
assert tuple(EMOTIONS) == RAVDESS_EMOTIONS


def _toward(full: float, neutral: float, strength: float) -> float:
    return neutral + strength * (full - neutral)


def voice(who: Person, emotion: Emotion, strength: float, rng: np.random.Generator) -> Voice:
    """The espeak-ng voice for a person speaking with an emotion, with a little take-to-take jitter."""
    rate = who.rate * _toward(emotion.rate, 1.0, strength) * rng.uniform(0.97, 1.03)
    pitch = who.pitch + strength * emotion.pitch + rng.uniform(-2.0, 2.0)
    pitch_range = who.range + strength * emotion.range + rng.uniform(-3.0, 3.0)
    return Voice(
        name=who.voice,
        rate=int(np.clip(round(rate), 80, 450)),
        pitch=int(np.clip(round(pitch), 0, 100)),
        range=int(np.clip(round(pitch_range), 0, 100)),
        volume=int(np.clip(round(100 * _toward(emotion.volume, 1.0, strength)), 10, 200)),
        wordgap=int(round(strength * emotion.wordgap)),
    )


def colour(audio: np.ndarray, emotion: Emotion, strength: float, rng: np.random.Generator,
           sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Apply the emotion's audio colouring to float32 mono speech, scaled by `strength`."""
    x = torch.from_numpy(audio.astype(np.float64))
    if emotion.lowpass_hz is not None:
        cutoff = float(np.exp(_toward(np.log(emotion.lowpass_hz), np.log(_NO_LOWPASS_HZ), strength)))
        x = AF.lowpass_biquad(AF.lowpass_biquad(x, sample_rate, cutoff), sample_rate, cutoff)
    if emotion.shelf_db:
        x = AF.treble_biquad(x, sample_rate, strength * emotion.shelf_db, central_freq=3000.0)
    if emotion.peak is not None:
        hz, db, q = emotion.peak
        x = AF.equalizer_biquad(x, sample_rate, hz, strength * db, q)
    y = x.numpy()
    if emotion.breath:
        envelope = _envelope(y, sample_rate)
        noise = torch.from_numpy(rng.standard_normal(len(y)))
        noise = AF.highpass_biquad(noise, sample_rate, 1500.0).numpy()
        y = y + strength * emotion.breath * envelope * noise
    if emotion.tremolo:
        t = np.arange(len(y)) / sample_rate
        depth = strength * emotion.tremolo
        y = y * (1.0 - depth / 2 + depth / 2 * np.sin(2 * np.pi * TREMOLO_HZ * t + rng.uniform(0, 2 * np.pi)))
    if emotion.drive:
        peak = float(np.max(np.abs(y))) or 1.0
        drive = strength * emotion.drive
        y = peak * np.tanh(drive * y / peak) / np.tanh(drive)
    return y.astype(np.float32)


def _envelope(y: np.ndarray, sample_rate: int, window_s: float = 0.02) -> np.ndarray:
    """Smoothed magnitude: where the breath noise follows the speech."""
    width = max(1, int(window_s * sample_rate))
    return np.convolve(np.abs(y), np.ones(width) / width, mode="same")


def _ramp(t: np.ndarray, start: float, end: float) -> np.ndarray:
    """0 before `start`, 1 after `end`, smoothstep between."""
    x = np.clip((t - start) / max(end - start, 1e-6), 0.0, 1.0)
    return x * x * (3 - 2 * x)


_BROW_RAISE = expand({"browInnerUp": 0.18, "browOuterUp": 0.25})
_JAW = np.isin(blendshapes.NAMES, JAW_GROUP)
_BROW = np.array([n.startswith("brow") for n in blendshapes.NAMES])
_LEFT = np.array([n.endswith("Left") for n in blendshapes.NAMES])
_RIGHT = np.array([n.endswith("Right") for n in blendshapes.NAMES])


def face(lower: np.ndarray, who: Person, emotion: Emotion, strength: float, speech_start: float,
         speech_end: float, accents: list[tuple[float, float]], fps: int = FPS) -> np.ndarray:
    """Combine viseme curves with the person's style and the emotion's expression into (T, 52).

    `accents` are (time, prominence 0..1) of stressed syllables, which raise the brows.
    """
    frames = lower.shape[0]
    t = np.arange(frames) / fps
    gain = who.articulation * _toward(emotion.articulation, 1.0, strength)
    emphasis = np.where(_JAW, 1.0 + who.jaw_emphasis, 1.0 - who.jaw_emphasis)
    out = lower * gain * emphasis

    onset = _ramp(t, speech_start, speech_start + ONSET_S)
    envelope = onset * (1.0 - _ramp(t, speech_end, speech_end + RELEASE_S))
    expression = expand(emotion.face) * strength
    expression[_BROW] *= who.brows
    out += envelope[:, None] * expression[None, :]

    raises = np.zeros(frames)
    for when, prominence in accents:
        raises += prominence * np.exp(-0.5 * ((t - when) / 0.08) ** 2)
    raise_gain = who.brows * _toward(emotion.brow_raise, 1.0, strength)
    out += np.clip(raises, 0.0, 1.6)[:, None] * raise_gain * _BROW_RAISE[None, :]

    resting = expand({"mouthSmile": max(who.smile, 0.0), "mouthFrown": max(-who.smile, 0.0)})
    out += resting[None, :]
    out[:, _LEFT] *= 1.0 + who.asymmetry
    out[:, _RIGHT] *= 1.0 - who.asymmetry
    return np.clip(out, 0.0, 1.0).astype(np.float32)
