"""Training-time augmentation: real-microphone conditions applied to clean synthetic speech.

The corpus is clean TTS speech with a -70 dBFS floor, so a model trained on it opens the mouth on
noise and in silence, depends on the input gain and has never heard a room. `augment` puts the
clip through a random room, background noise (coloured or babble), a microphone's bandwidth and
colour, a random input level (sometimes clipped, sometimes with a DC offset), and sometimes
replaces the silence before and after the speech with exact digital zeros (a noise gate, as OBS or
NVIDIA Broadcast send) or with noise alone.

Every step keeps the clip's length and timing (the room's direct path is at lag 0 and the
microphone filters are zero-phase), so the labels and the phone alignment stay valid. numpy only;
one FFT transfer carries both the room and the microphone. Deterministic for a given
`np.random.Generator` state.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .visemes import is_pause

SR = 16000
FRAME = 320  # 20 ms: the frame of the active-level measure
ACTIVE_RANGE_DB = 30.0  # frames this far below the loudest frame count as inactive
PEAK_MAX = 0.99  # where the gain stage stops when no clipping is drawn
FALLBACK_LEVEL_DB = -30.0  # reference for a clip with no speech energy at all
_FILTER_PAD = 512  # samples kept free for the zero-phase filters' ringing in the FFT buffer

Span = tuple[int, int]
Range = tuple[float, float]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each effect; ranges are drawn uniformly."""

    p_clean: float = 0.2  # only the level changes: clean speech stays in the mix
    # room
    p_reverb: float = 0.5
    rt60_s: Range = (0.1, 0.8)
    drr_db: Range = (0.0, 15.0)  # direct-to-reverberant energy ratio: distant laptop .. headset
    # background noise; SNR = speech active level - noise RMS over the clip
    p_noise: float = 0.6
    snr_db: Range = (0.0, 40.0)
    noise_slope: Range = (0.0, 2.0)  # PSD ~ f^-slope: 0 white, 1 pink, 2 brown
    p_babble: float = 0.3  # when other clips are given
    babble_voices: tuple[int, int] = (3, 6)
    babble_snr_db: Range = (10.0, 40.0)
    # microphone and bandwidth
    p_lowpass: float = 0.4
    lowpass_hz: Range = (4000.0, 8000.0)  # 8-16 kHz sample-rate bandwidth
    p_highpass: float = 0.5
    highpass_hz: Range = (50.0, 200.0)
    p_tilt: float = 0.5
    tilt_db_per_octave: float = 1.5  # drawn in +-this
    tilt_max_db: float = 9.0
    # input level
    level_dbfs: Range = (-50.0, 0.0)  # active speech level
    p_clip: float = 0.05
    clip_overdrive_db: Range = (1.0, 12.0)  # peak driven this far over full scale
    p_dc: float = 0.1
    dc_max: float = 0.01
    # silence outside the speech span
    p_noise_only: float = 0.1
    p_gate: float = 0.15
    gate_margin_s: Range = (0.02, 0.15)  # a gate's hold/release after (and attack before) speech


DEFAULT_CONFIG = AugmentConfig()


@dataclass(frozen=True)
class Mic:
    """A microphone and its channel: bandwidth (low-pass), rumble cut (high-pass), colour (tilt)."""

    lowpass_hz: float | None = None
    highpass_hz: float | None = None
    tilt_db_per_octave: float = 0.0
    tilt_max_db: float = 9.0

    def response(self, freqs: np.ndarray) -> np.ndarray:
        """Zero-phase magnitude response on an FFT grid, so filtering does not shift the audio."""
        gain = np.ones_like(freqs)
        if self.lowpass_hz is not None:
            gain *= lowpass_response(freqs, self.lowpass_hz)
        if self.highpass_hz is not None:
            gain *= highpass_response(freqs, self.highpass_hz)
        if self.tilt_db_per_octave:
            gain *= tilt_response(freqs, self.tilt_db_per_octave, self.tilt_max_db)
        return gain


def lowpass_response(freqs: np.ndarray, cutoff_hz: float) -> np.ndarray:
    """Flat to 0.9 x cutoff, raised-cosine to zero at the cutoff: a resampler's steep band edge
    (an 8 kHz-rate stream has nothing above 4 kHz), smooth enough to ring only a few ms."""
    start = 0.9 * cutoff_hz
    x = np.clip((freqs - start) / (cutoff_hz - start), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * x))


def highpass_response(freqs: np.ndarray, cutoff_hz: float) -> np.ndarray:
    """Second-order Butterworth magnitude: the rumble and wind cut of real microphones."""
    r2 = (freqs / cutoff_hz) ** 2
    return r2 / np.sqrt(1.0 + r2 * r2)


def tilt_response(freqs: np.ndarray, db_per_octave: float, max_db: float) -> np.ndarray:
    """A gentle spectral tilt around 1 kHz (dull or bright microphone), bounded to +-max_db."""
    octaves = np.log2(np.maximum(freqs, 50.0) / 1000.0)
    return 10.0 ** (np.clip(db_per_octave * octaves, -max_db, max_db) / 20.0)


# --- measures -----------------------------------------------------------------------------


def speech_span(alignment: Sequence[Sequence] | None, length: int) -> Span | None:
    """Samples from the first non-pause phone's start to the last one's end; None when unknown."""
    if not alignment:
        return None
    events = [(float(s), float(e)) for s, e, phone in alignment if not is_pause(str(phone))]
    if not events:
        return None
    start = max(0, int(math.floor(min(s for s, _ in events) * SR)))
    end = min(length, int(math.ceil(max(e for _, e in events) * SR)))
    return (start, end) if start < end else None


def active_level_db(audio: np.ndarray, span: Span | None = None) -> float:
    """Active speech level (dBFS RMS): 20 ms frames within 30 dB of the loudest one, inside the
    speech span when known. Pauses and the silence around speech do not dilute it."""
    x = np.asarray(audio, dtype=np.float64)
    if span is not None:
        x = x[span[0]:span[1]]
    if len(x) == 0:
        return -math.inf
    if len(x) < FRAME:
        power = np.array([np.mean(x * x)])
    else:
        frames = x[: len(x) // FRAME * FRAME].reshape(-1, FRAME)
        power = np.einsum("ij,ij->i", frames, frames) / FRAME
    top = float(power.max())
    if top <= 0.0:
        return -math.inf
    return 10.0 * math.log10(float(power[power >= top * 10 ** (-ACTIVE_RANGE_DB / 10)].mean()))


def rms_db(audio: np.ndarray) -> float:
    """Plain RMS level in dBFS (-inf for silence)."""
    x = np.asarray(audio, dtype=np.float64)
    power = float(np.einsum("i,i->", x, x)) / max(len(x), 1)  # not np.dot: no BLAS threads
    return 10.0 * math.log10(power) if power > 0.0 else -math.inf


# --- room ---------------------------------------------------------------------------------


def room_impulse_response(rng: np.random.Generator, rt60_s: float, drr_db: float) -> np.ndarray:
    """Direct path at lag 0 (no delay: timing kept), a few early reflections in the first 20 ms
    and an exponentially decaying noise tail that falls 60 dB in rt60_s; the reflections and tail
    together are scaled to the direct-to-reverberant ratio."""
    n = max(int(rt60_s * SR), 64)
    env = np.exp(-math.log(1000.0) * np.arange(n) / (rt60_s * SR))  # amplitude: -60 dB at rt60
    tail = rng.standard_normal(n) * env
    onset = min(n, int(0.005 * SR))  # the diffuse field builds up over the first few ms
    tail[:onset] *= np.linspace(0.0, 1.0, onset)
    count = int(rng.integers(3, 9))
    where = rng.integers(int(0.001 * SR), min(n, int(0.02 * SR)), count)
    tail[where] += rng.choice((-1.0, 1.0), count) * rng.uniform(2.0, 6.0, count) * env[where]
    tail[0] = 0.0
    tail *= math.sqrt(10 ** (-drr_db / 10) / float(np.einsum("i,i->", tail, tail)))
    tail[0] = 1.0
    return tail


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolution with a room, cut to the input's length (the direct path stays in place)."""
    x = np.asarray(audio, dtype=np.float64)
    return Channel(len(x), rir, None).apply(x)


def colour(audio: np.ndarray, mic: Mic) -> np.ndarray:
    """A microphone's bandwidth and colour, zero-phase, same length."""
    x = np.asarray(audio, dtype=np.float64)
    return Channel(len(x), None, mic).apply(x)


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: pocketfft is several times faster on such sizes."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


class Channel:
    """Room and microphone of one clip as one FFT-domain transfer, computed once and shared by
    the speech, the babble and the noise (all of a clip's signals go through the same chain).
    The buffer is long enough that the room's tail and the filters' ringing never wrap into the
    kept samples."""

    def __init__(self, length: int, rir: np.ndarray | None, mic: Mic | None) -> None:
        self.length = length
        pad = 0 if rir is None and mic is None else (len(rir) if rir is not None else 0) + _FILTER_PAD
        self.nfft = _fast_len(max(length, 2) + pad)
        self.freqs = np.fft.rfftfreq(self.nfft, 1.0 / SR)
        self.mic = mic.response(self.freqs) if mic is not None else None
        transfer = np.fft.rfft(rir, self.nfft) if rir is not None else None
        if self.mic is not None:
            transfer = self.mic if transfer is None else transfer * self.mic
        self.transfer = transfer

    def apply(self, x: np.ndarray) -> np.ndarray:
        """x through the room and the microphone, same length, direct path at lag 0."""
        if self.transfer is None:
            return x
        return np.fft.irfft(np.fft.rfft(x, self.nfft) * self.transfer, self.nfft)[:self.length]


# --- noise --------------------------------------------------------------------------------


def coloured_noise(length: int, slope: float, rng: np.random.Generator, channel: Channel | None = None) -> np.ndarray:
    """Unit-RMS stationary noise with PSD ~ f^-slope (fans, hiss, rumble), shaped in the frequency
    domain, through the channel's microphone when given (a room does not colour diffuse noise)."""
    channel = channel if channel is not None else Channel(length, None, None)
    freqs = channel.freqs
    shape = np.maximum(freqs, 20.0) ** (-slope / 2.0)
    shape[0] = 0.0
    if channel.mic is not None:
        shape *= channel.mic
    spec = rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))
    noise = np.fft.irfft(spec * shape, channel.nfft)[:length]
    return _unit(noise)


def babble(others: Sequence[np.ndarray], length: int, voices: int, rng: np.random.Generator) -> np.ndarray | None:
    """Unit-RMS sum of `voices` other clips, each at a random offset (looped when short) and
    +-4 dB apart: people talking in the background. None when no clip has any sound."""
    total = np.zeros(length)
    for index in rng.integers(0, len(others), voices):
        clip = np.asarray(others[int(index)], dtype=np.float64).reshape(-1)
        if len(clip) == 0:
            continue
        if len(clip) < length:
            clip = np.resize(np.roll(clip, int(rng.integers(0, len(clip)))), length)
        else:
            start = int(rng.integers(0, len(clip) - length + 1))
            clip = clip[start:start + length]
        level = rms_db(clip)
        if math.isfinite(level):
            total += clip * 10 ** ((rng.uniform(-4.0, 4.0) - level) / 20)
    return _unit(total) if np.any(total) else None


def _unit(x: np.ndarray) -> np.ndarray:
    level = rms_db(x)
    return x * 10 ** (-level / 20) if math.isfinite(level) else x


# --- silence outside the speech -------------------------------------------------------------


def outside_weights(length: int, span: Span, lead_margin: int | None,
                    trail_margin: int | None) -> list[tuple[slice, np.ndarray]]:
    """Weights over the silence before and/or after the speech span: 1 at the span, a linear fade
    over the margin (a gate's attack/release), exactly 0 beyond. The span is never in a slice."""
    start, end = span
    parts = []
    if lead_margin is not None and start > 0:
        i = np.arange(start, dtype=np.float64)
        parts.append((slice(0, start), np.clip((i - (start - lead_margin)) / lead_margin, 0.0, 1.0)))
    if trail_margin is not None and end < length:
        i = np.arange(end, length, dtype=np.float64)
        parts.append((slice(end, length), np.clip((end + trail_margin - i) / trail_margin, 0.0, 1.0)))
    return parts


def gate_silence(audio: np.ndarray, span: Span, lead_margin: int | None, trail_margin: int | None) -> np.ndarray:
    """Exact digital zeros before and/or after the speech, as software noise gates send."""
    out = np.array(audio, copy=True)
    for where, weight in outside_weights(len(out), span, lead_margin, trail_margin):
        out[where] = out[where] * weight + 0.0  # + 0.0 turns -0.0 into the +0.0 a gate sends
    return out


def noise_only(audio: np.ndarray, noise: np.ndarray, span: Span, lead_margin: int | None,
               trail_margin: int | None) -> np.ndarray:
    """The silence before and/or after the speech replaced by noise alone (no speech, no room
    tail, no corpus floor): stretches the mouth must stay shut through."""
    out = np.array(audio, copy=True)
    for where, weight in outside_weights(len(out), span, lead_margin, trail_margin):
        out[where] = out[where] * weight + noise[where] * (1.0 - weight)
    return out


# --- the pipeline -------------------------------------------------------------------------


def augment(audio: np.ndarray, alignment: Sequence[Sequence] | None, rng: np.random.Generator,
            others: Sequence[np.ndarray] | None = None, config: AugmentConfig = DEFAULT_CONFIG) -> np.ndarray:
    """One random real-microphone version of a 16 kHz clip: float32, same length and timing.

    alignment: [[start_s, end_s, phone], ...] (pauses start with "_"), for the speech span; without
    it the silence steps are skipped and the level is measured over the whole clip.
    others: audio of other clips, the material of babble noise.
    """
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    span = speech_span(alignment, n)
    if rng.random() < config.p_clean:
        gain = _gain(x, _level_of(x, span), *_draw_level(rng, config, allow_clip=False))
        return np.clip(x * gain, -1.0, 1.0).astype(np.float32)

    rir = _draw_room(rng, config)
    mic = _draw_mic(rng, config)
    channel = Channel(n, rir, mic)
    speech = channel.apply(x)
    level = _level_of(speech, span)
    noise = _draw_noise(n, level, rng, config, others, channel)
    mix = speech + noise if noise is not None else speech
    target_db, overdrive_db = _draw_level(rng, config, allow_clip=True)
    dc = rng.uniform(-config.dc_max, config.dc_max) if rng.random() < config.p_dc else 0.0
    if span is not None and rng.random() < config.p_noise_only:
        lead, trail = _draw_margins(rng, config)
        if noise is None:
            snr = rng.uniform(*config.snr_db)
            noise = coloured_noise(n, rng.uniform(*config.noise_slope), rng, channel) * 10 ** ((level - snr) / 20)
        mix = noise_only(mix, noise, span, lead, trail)
    out = mix * _gain(mix, level, target_db, overdrive_db)
    out += dc
    np.clip(out, -1.0, 1.0, out=out)
    if span is not None and rng.random() < config.p_gate:
        out = gate_silence(out, span, *_draw_margins(rng, config))
    return out.astype(np.float32)


def light_augment(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The first recipe's augmentation (the bundled model's): a random gain of +-4 dB and a faint
    noise floor 35-60 dB below full scale."""
    gain = 10 ** (rng.uniform(-4, 4) / 20)
    noise = rng.standard_normal(len(audio)).astype(np.float32) * 10 ** (-rng.uniform(35, 60) / 20)
    return np.clip(audio * gain + noise, -1.0, 1.0).astype(np.float32)


def _level_of(speech: np.ndarray, span: Span | None) -> float:
    level = active_level_db(speech, span)
    return level if math.isfinite(level) else FALLBACK_LEVEL_DB


def _draw_room(rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray | None:
    if rng.random() >= cfg.p_reverb:
        return None
    return room_impulse_response(rng, rng.uniform(*cfg.rt60_s), rng.uniform(*cfg.drr_db))


def _draw_mic(rng: np.random.Generator, cfg: AugmentConfig) -> Mic | None:
    lowpass = rng.uniform(*cfg.lowpass_hz) if rng.random() < cfg.p_lowpass else None
    if lowpass is not None and lowpass >= SR / 2 * 0.99:
        lowpass = None  # a 16 kHz-rate channel: nothing to cut
    highpass = rng.uniform(*cfg.highpass_hz) if rng.random() < cfg.p_highpass else None
    tilt = rng.uniform(-cfg.tilt_db_per_octave, cfg.tilt_db_per_octave) if rng.random() < cfg.p_tilt else 0.0
    if lowpass is None and highpass is None and tilt == 0.0:
        return None
    return Mic(lowpass, highpass, tilt, cfg.tilt_max_db)


def _draw_noise(n: int, level: float, rng: np.random.Generator, cfg: AugmentConfig,
                others: Sequence[np.ndarray] | None, channel: Channel) -> np.ndarray | None:
    """Coloured noise and/or babble, each at its own SNR below the speech's active level.
    Babble is speech in the same room, so it goes through the room and the microphone."""
    noise = None
    if rng.random() < cfg.p_noise:
        slope = rng.uniform(*cfg.noise_slope)
        noise = coloured_noise(n, slope, rng, channel) * 10 ** ((level - rng.uniform(*cfg.snr_db)) / 20)
    if others is not None and len(others) > 0 and rng.random() < cfg.p_babble:
        voices = int(rng.integers(cfg.babble_voices[0], cfg.babble_voices[1] + 1))
        talk = babble(others, n, voices, rng)
        if talk is not None:
            talk = _unit(channel.apply(talk)) * 10 ** ((level - rng.uniform(*cfg.babble_snr_db)) / 20)
            noise = talk if noise is None else noise + talk
    return noise


def _draw_level(rng: np.random.Generator, cfg: AugmentConfig, allow_clip: bool) -> tuple[float, float | None]:
    """The speech's active level in dBFS and, on a clipping draw, how far over full scale."""
    target_db = rng.uniform(*cfg.level_dbfs)
    clip = allow_clip and rng.random() < cfg.p_clip
    return target_db, (rng.uniform(*cfg.clip_overdrive_db) if clip else None)


def _gain(mix: np.ndarray, level: float, target_db: float, overdrive_db: float | None) -> float:
    """Gain that puts the speech's active level at target_db. Without a clipping draw the gain
    stage stops at a peak of 0.99 (a user who set the gain to avoid clipping); with one the peak
    is driven over full scale and the caller's clip to +-1 is real clipping."""
    gain = 10 ** ((target_db - level) / 20)
    peak = float(np.max(np.abs(mix))) * gain
    if peak <= 0.0:
        return gain
    if overdrive_db is not None:
        return gain * 10 ** (overdrive_db / 20) / peak
    return gain * min(1.0, PEAK_MAX / peak)


def _draw_margins(rng: np.random.Generator, cfg: AugmentConfig) -> tuple[int | None, int | None]:
    """Which side(s) of the speech (before, after, both) and the fade margin of each, in samples."""
    side = int(rng.integers(0, 3))
    lead = max(1, int(rng.uniform(*cfg.gate_margin_s) * SR))
    trail = max(1, int(rng.uniform(*cfg.gate_margin_s) * SR))
    return (lead if side != 1 else None), (trail if side != 0 else None)
