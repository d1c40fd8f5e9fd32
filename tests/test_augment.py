"""training/augment.py: same length and timing, determinism, and measured levels, SNRs, room decay,
bandwidth and digital silence."""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest

from training import augment as aug

SR = aug.SR
LEAD_S, SPEECH_S, TRAIL_S = 0.4, 1.2, 0.5
ALIGNMENT = [[0.0, LEAD_S, "_:"], [LEAD_S, 0.7, "h"], [0.7, 1.0, "@"], [1.0, 1.1, "_"],
             [1.1, LEAD_S + SPEECH_S, "oU"], [LEAD_S + SPEECH_S, LEAD_S + SPEECH_S + TRAIL_S, "_"]]
SPAN = (int(LEAD_S * SR), int(math.ceil((LEAD_S + SPEECH_S) * SR)))
# Every effect off: tests switch on the one they measure.
NOTHING = aug.AugmentConfig(p_clean=0.0, p_reverb=0.0, p_noise=0.0, p_babble=0.0, p_lowpass=0.0,
                            p_highpass=0.0, p_tilt=0.0, p_clip=0.0, p_dc=0.0, p_noise_only=0.0, p_gate=0.0)


def only(**changes) -> aug.AugmentConfig:
    return dataclasses.replace(NOTHING, **changes)


def speech_like(seed: int = 0, floor_db: float = -70.0) -> np.ndarray:
    """Voiced-like harmonic bursts inside the speech span, a faint noise floor around it."""
    return _speech_like(seed, floor_db).copy()


@functools.lru_cache(maxsize=None)
def _speech_like(seed: int, floor_db: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int((LEAD_S + SPEECH_S + TRAIL_S) * SR)
    t = np.arange(n) / SR
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.zeros(n)
    envelope[SPAN[0]:SPAN[1]] = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t[SPAN[0]:SPAN[1]]) ** 2
    x = 0.1 * voice * envelope + rng.standard_normal(n) * 10 ** (floor_db / 20)
    return x.astype(np.float32)


def others(count: int = 4) -> list[np.ndarray]:
    return [speech_like(seed) for seed in range(1, count + 1)]


def test_same_length_and_float32_for_any_input():
    rng = np.random.default_rng(1)
    config = aug.AugmentConfig(p_clean=0.0, p_reverb=1.0, p_noise=1.0, p_babble=1.0, p_noise_only=0.5, p_gate=0.5)
    for audio, alignment in [(speech_like(), ALIGNMENT), (speech_like()[:1000], ALIGNMENT),
                             (speech_like()[:5], None), (np.zeros(8000, np.float32), ALIGNMENT),
                             (speech_like().astype(np.float64), [[0.0, 0.2, "_"]])]:
        for _ in range(10):
            out = aug.augment(audio, alignment, rng, others() + [np.zeros(0, np.float32), np.ones(10)], config)
            assert out.dtype == np.float32 and out.shape == audio.shape
            assert np.all(np.isfinite(out)) and np.max(np.abs(out)) <= 1.0
    for _ in range(20):  # the defaults, with and without babble material
        out = aug.augment(speech_like(), ALIGNMENT, rng, others() if _ % 2 else None)
        assert out.dtype == np.float32 and out.shape == speech_like().shape
    assert aug.augment(np.zeros(0, np.float32), ALIGNMENT, rng).shape == (0,)


def test_deterministic_for_a_generator_state_and_different_across_seeds():
    audio, material = speech_like(), others()
    config = aug.AugmentConfig(p_clean=0.0)
    runs = [aug.augment(audio, ALIGNMENT, np.random.default_rng(seed), material, config) for seed in (7, 7, 8)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    # A sequence of draws from one generator repeats too.
    first, second = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(10):
        np.testing.assert_array_equal(aug.augment(audio, ALIGNMENT, first, material),
                                      aug.augment(audio, ALIGNMENT, second, material))


def test_clean_draw_changes_only_the_level():
    audio = speech_like().astype(np.float64)
    rng = np.random.default_rng(2)
    for _ in range(20):
        out = aug.augment(audio, ALIGNMENT, rng, others(), dataclasses.replace(aug.DEFAULT_CONFIG, p_clean=1.0))
        gain = np.dot(out, audio) / np.dot(audio, audio)
        np.testing.assert_allclose(out, gain * audio, atol=1e-6 * max(gain, 1e-3))


def test_speech_level_spans_minus_50_to_0_dbfs():
    """With no noise added the output's active level is the drawn one: inside -50..0 dBFS, over
    the whole range, never above full scale (the gain stage stops at a 0.99 peak)."""
    rng = np.random.default_rng(4)
    config = dataclasses.replace(aug.DEFAULT_CONFIG, p_noise=0.0, p_babble=0.0, p_dc=0.0, p_clip=0.0)
    levels = []
    for i in range(300):
        out = aug.augment(speech_like(i % 5), ALIGNMENT, rng, None, config)
        assert np.max(np.abs(out)) <= aug.PEAK_MAX + 1e-6
        levels.append(aug.active_level_db(out, SPAN))
    levels = np.array(levels)
    assert levels.min() >= -50.01 and levels.max() <= 0.0
    assert levels.min() < -45 and np.percentile(levels, 90) > -20  # the range is used, not a corner


def test_full_pipeline_level_stays_within_full_scale_and_near_the_range():
    """Defaults (noise, babble, rooms, gates): never louder than full scale; the level never far
    below -50 dBFS (noise can only add energy; the frame gate of the measure may take in noise
    frames); clipping draws really reach full scale."""
    rng = np.random.default_rng(5)
    material = others()
    clipped = 0
    for i in range(300):
        out = aug.augment(speech_like(i % 5), ALIGNMENT, rng, material)
        level = aug.active_level_db(out, SPAN)
        assert -54.0 <= level <= 0.0
        assert aug.rms_db(out) <= 0.0
        clipped += np.max(np.abs(out)) == 1.0
    assert 0 < clipped < 60  # p_clip 0.05 of the non-clean draws, plus DC on hot peaks
    config = only(p_clip=1.0)
    for _ in range(20):
        out = aug.augment(speech_like(), ALIGNMENT, rng, None, config)
        assert np.mean(np.abs(out) == 1.0) > 0  # really clipped, at exactly full scale


def test_snr_of_added_noise_is_within_range():
    """Measured as speech active level minus noise RMS, with the noise recovered from the output."""
    audio = speech_like().astype(np.float64)
    speech_db = aug.active_level_db(audio, SPAN)
    gain = 10 ** ((-20.0 - speech_db) / 20)  # the drawn level is fixed at -20 dBFS, no peak limit

    def measured(config: aug.AugmentConfig, seed: int) -> float:
        out = aug.augment(audio, ALIGNMENT, np.random.default_rng(seed), others(), config)
        assert np.max(np.abs(out)) < aug.PEAK_MAX  # so the gain was not limited
        return speech_db - aug.rms_db(out.astype(np.float64) / gain - audio)

    coloured = [measured(only(p_noise=1.0, level_dbfs=(-20.0, -20.0)), seed) for seed in range(60)]
    assert min(coloured) >= -0.05 and max(coloured) <= 40.05
    assert min(coloured) < 8 and max(coloured) > 32
    talk = [measured(only(p_babble=1.0, level_dbfs=(-20.0, -20.0)), seed) for seed in range(40)]
    assert min(talk) >= 9.95 and max(talk) <= 40.05
    assert min(talk) < 18 and max(talk) > 32


def test_noise_slope_colours_the_spectrum():
    rng = np.random.default_rng(6)

    def low_to_high_db(slope: float) -> float:
        power = np.abs(np.fft.rfft(aug.coloured_noise(SR * 4, slope, rng) * np.hanning(SR * 4))) ** 2
        freqs = np.fft.rfftfreq(SR * 4, 1 / SR)
        low = power[(freqs > 100) & (freqs < 200)].mean()
        return 10 * math.log10(low / power[(freqs > 3200) & (freqs < 6400)].mean())

    assert abs(low_to_high_db(0.0)) < 1.5  # white
    assert 12 < low_to_high_db(1.0) < 18  # pink: 3 dB per octave, ~5 octaves
    assert 27 < low_to_high_db(2.0) < 33  # brown: 6 dB per octave


def schroeder_rt60(response: np.ndarray) -> float:
    """RT60 from the backward-integrated energy decay, fitted between -5 and -35 dB."""
    energy = np.cumsum((response ** 2)[::-1])[::-1]
    decay = 10 * np.log10(energy / energy[0])
    fit = (decay <= -5) & (decay >= -35)
    slope = np.polyfit(np.arange(len(decay))[fit] / SR, decay[fit], 1)[0]
    return -60.0 / slope


@pytest.mark.parametrize("rt60", [0.15, 0.4, 0.8])
def test_reverberation_decays_in_the_drawn_rt60_and_keeps_the_direct_path_in_place(rt60: float):
    at = 4000
    impulse = np.zeros(3 * SR)
    impulse[at] = 1.0
    wet = aug.reverberate(impulse, aug.room_impulse_response(np.random.default_rng(9), rt60, 6.0))
    assert len(wet) == len(impulse) and np.argmax(np.abs(wet)) == at and wet[at] == pytest.approx(1.0)
    assert np.all(wet[:at] == pytest.approx(0.0, abs=1e-9))  # causal: nothing before the sound
    assert schroeder_rt60(wet[at + 1:]) == pytest.approx(rt60, rel=0.2)
    # The dry impulse has no tail at all; the wet one still holds energy 0.5 x rt60 later.
    assert np.sum(wet[at + int(0.5 * rt60 * SR):] ** 2) > 10 ** (-3.5) * np.sum(wet[at + 1:] ** 2)
    # The direct-to-reverberant ratio is the drawn one.
    assert 10 * math.log10(1.0 / np.sum(wet[at + 1:] ** 2)) == pytest.approx(6.0, abs=0.1)


def test_reverb_through_augment_keeps_timing():
    impulse = np.zeros(2 * SR, np.float32)
    impulse[SR // 2] = 0.5
    alignment = [[0.5, 0.6, "a"]]
    rng = np.random.default_rng(10)
    for _ in range(10):
        out = aug.augment(impulse, alignment, rng, None, only(p_reverb=1.0))
        assert np.argmax(np.abs(out)) == SR // 2
        assert np.sum(out[SR // 2 + 1:] ** 2) > 1e-4 * np.sum(out ** 2)  # a tail was added
        assert np.all(np.abs(out[:SR // 2]) < 1e-7)  # FFT round-off only: nothing comes early


@pytest.mark.parametrize("cutoff", [4000.0, 6000.0])
def test_lowpass_removes_energy_above_its_cutoff(cutoff: float):
    noise = np.random.default_rng(11).standard_normal(4 * SR)
    out = aug.colour(noise, aug.Mic(lowpass_hz=cutoff))
    power = np.abs(np.fft.rfft(out * np.hanning(len(out)))) ** 2
    freqs = np.fft.rfftfreq(len(out), 1 / SR)
    passband = power[(freqs > 500) & (freqs < 0.85 * cutoff)].mean()
    assert power[freqs > 1.02 * cutoff].mean() < 1e-6 * passband
    dry = np.abs(np.fft.rfft(noise * np.hanning(len(noise)))) ** 2
    assert passband == pytest.approx(dry[(freqs > 500) & (freqs < 0.85 * cutoff)].mean(), rel=1e-6)  # flat below
    # Same through augment: a 4 kHz channel.
    rng = np.random.default_rng(12)
    wide = aug.augment(noise.astype(np.float32), None, rng, None, only(p_lowpass=1.0, lowpass_hz=(4000.0, 4000.0)))
    power = np.abs(np.fft.rfft(wide * np.hanning(len(wide)))) ** 2
    assert power[freqs > 4100].mean() < 1e-6 * power[(freqs > 500) & (freqs < 3400)].mean()


def test_highpass_and_tilt_shape_the_band():
    freqs = np.array([20.0, 100.0, 1000.0, 4000.0])
    high = aug.highpass_response(freqs, 100.0)
    assert high[0] < 0.05 and high[1] == pytest.approx(1 / math.sqrt(2)) and high[2] > 0.99
    tilt = 20 * np.log10(aug.tilt_response(freqs, 2.0, 9.0))
    assert tilt[2] == pytest.approx(0.0) and tilt[3] == pytest.approx(4.0)
    assert tilt[1] == pytest.approx(-2 * math.log2(10))


def test_gate_writes_exact_zeros_only_outside_the_speech_span():
    audio = speech_like(floor_db=-40).astype(np.float64)
    out = aug.gate_silence(audio, SPAN, 800, 1600)
    np.testing.assert_array_equal(out[SPAN[0]:SPAN[1]], audio[SPAN[0]:SPAN[1]])
    zeros = np.flatnonzero(out == 0.0)
    assert np.all((zeros < SPAN[0]) | (zeros >= SPAN[1]))
    assert np.all(out[:SPAN[0] - 800] == 0.0) and np.all(out[SPAN[1] + 1600:] == 0.0)
    assert np.all(out[SPAN[0] - 799:SPAN[0]] != 0.0)  # the fade (attack) is not zero
    assert not np.any(np.signbit(out[out == 0.0]))  # +0.0, what a gate sends, never -0.0
    only_lead = aug.gate_silence(audio, SPAN, 800, None)
    np.testing.assert_array_equal(only_lead[SPAN[0]:], audio[SPAN[0]:])


def test_gate_through_augment_leaves_the_speech_span_as_it_was():
    """The gate is the last step and draws last: with the same seed, output with and without it
    agree exactly inside the span; outside, the gated one is zeros or a faded copy."""
    audio, material = speech_like(floor_db=-40), others()
    alignment_span = aug.speech_span(ALIGNMENT, len(audio))
    assert alignment_span == SPAN
    sides = {"lead": 0, "trail": 0}
    for seed in range(40):
        base = dataclasses.replace(aug.DEFAULT_CONFIG, p_clean=0.0, p_gate=0.0)
        gated = aug.augment(audio, ALIGNMENT, np.random.default_rng(seed), material,
                            dataclasses.replace(base, p_gate=1.0))
        plain = aug.augment(audio, ALIGNMENT, np.random.default_rng(seed), material, base)
        np.testing.assert_array_equal(gated[SPAN[0]:SPAN[1]], plain[SPAN[0]:SPAN[1]])
        zeros = np.flatnonzero(gated == 0.0)
        assert np.all((zeros < SPAN[0]) | (zeros >= SPAN[1]))
        changed = gated != plain
        assert np.all(np.abs(gated[changed]) <= np.abs(plain[changed]))
        sides["lead"] += gated[0] == 0.0
        sides["trail"] += gated[-1] == 0.0
    assert sides["lead"] > 5 and sides["trail"] > 5


def test_noise_only_replaces_the_silence_with_noise_and_no_speech():
    """A tone that sits outside the span (speech not in the labels' span) is gone from the
    replaced stretch, which holds noise, not zeros; the span is as without the step."""
    audio = speech_like().astype(np.float64)
    t = np.arange(len(audio)) / SR
    tone = 0.05 * np.sin(2 * np.pi * 1000 * t)
    tone[SPAN[0]:] = 0.0
    audio += tone
    config = only(p_noise=1.0, snr_db=(30.0, 30.0), noise_slope=(0.0, 0.0), level_dbfs=(-20.0, -20.0))
    leading = 0
    for seed in range(20):
        replaced = aug.augment(audio, ALIGNMENT, np.random.default_rng(seed), None,
                               dataclasses.replace(config, p_noise_only=1.0))
        plain = aug.augment(audio, ALIGNMENT, np.random.default_rng(seed), None, config)
        np.testing.assert_array_equal(replaced[SPAN[0]:SPAN[1]], plain[SPAN[0]:SPAN[1]])
        if replaced[0] == plain[0]:
            continue  # this draw replaced only the trailing silence
        lead = slice(0, SPAN[0] - int(0.15 * SR))
        stretch = replaced[lead].astype(np.float64)
        assert np.all(stretch != 0.0)
        gain = 10 ** ((-20.0 - aug.active_level_db(audio, SPAN)) / 20)
        noise_db = aug.active_level_db(audio, SPAN) - 30.0 + 20 * math.log10(gain)
        assert aug.rms_db(stretch) == pytest.approx(noise_db, abs=1.0)  # noise alone, no tone
        leading += 1
        assert abs(np.dot(stretch, tone[lead] * gain)) < 0.02 * np.dot(tone[lead] * gain, tone[lead] * gain)
    assert leading > 5
    # Without background noise the stretch gets fresh noise of its own.
    out = aug.augment(audio, ALIGNMENT, np.random.default_rng(0), None, only(p_noise_only=1.0))
    assert not np.array_equal(out, aug.augment(audio, ALIGNMENT, np.random.default_rng(0), None, NOTHING))


def test_speech_span_ignores_pauses():
    assert aug.speech_span(ALIGNMENT, 10 * SR) == SPAN
    assert aug.speech_span([[0.0, 1.0, "_"], [1.0, 2.0, "_!"]], 10 * SR) is None
    assert aug.speech_span(None, 100) is None
    assert aug.speech_span([[0.5, 3.0, "a"]], SR) == (SR // 2, SR)
