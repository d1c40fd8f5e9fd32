"""The small model's structure: shapes, causality, bounded context, the official ALiBi bias."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emotalk_stream.training import config
from emotalk_stream.training.data import time_warp
from emotalk_stream.training.losses import gather_frames
from emotalk_stream.training.framing import frame_count
from emotalk_stream.training.model import (SURE, ClassificationHead, EmoTalk, alibi_causal_bias, confident_weights,
                                           decayed_sums, recent_mean, speaker_baseline)
from emotalk_stream.training.streaming_encoder import LogMel, StreamingEncoder, samples_needed


@pytest.fixture(scope="module")
def model() -> EmoTalk:
    torch.manual_seed(0)
    m = EmoTalk(config.small()).eval()
    torch.nn.init.normal_(m.bs_map_r.weight, std=0.1)  # the head starts at zero, as the official one
    return m


def test_output_shapes_follow_the_official_frame_count(model: EmoTalk) -> None:
    audio = torch.randn(2, 16000 * 2 + 123) * 0.1
    with torch.inference_mode():
        weights, logits = model(audio, level=torch.tensor([0, 1]), person=torch.tensor([3, 7]))
    assert weights.shape == (2, math.ceil(audio.shape[1] / 16000 * 30), 52)
    assert logits.shape == (2, 8)
    assert frame_count(55296) == 104  # disgust.wav in the official repo


def test_batch_items_are_independent(model: EmoTalk) -> None:
    audio = torch.randn(2, 16000) * 0.1
    with torch.inference_mode():
        both, _ = model(audio, torch.tensor([1, 0]), torch.tensor([0, 5]))
        one, _ = model(audio[1:], torch.tensor([0]), torch.tensor([5]))
    torch.testing.assert_close(both[1], one[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lookahead", [0, 2, 4])
def test_encoder_sees_no_further_than_its_lookahead(lookahead: int) -> None:
    torch.manual_seed(1)
    enc = StreamingEncoder(config.small().content).eval()
    audio = torch.randn(1, 16000 * 3) * 0.1
    k = 46  # an output frame between two encoder frames
    last_encoder_frame = math.floor(k * 50 / 30) + 1
    cut = samples_needed(last_encoder_frame + lookahead + 1)
    changed = audio.clone()
    changed[:, cut:] = torch.randn_like(changed[:, cut:])
    with torch.inference_mode():
        a, b = enc(audio, 90, lookahead), enc(changed, 90, lookahead)
    assert torch.equal(a[0, : k + 1], b[0, : k + 1])
    assert not torch.allclose(a[0, k + 2:], b[0, k + 2:])
    assert (cut - k / 30 * 16000) / 16 <= 20 * (lookahead + 1) + 22.5 + 20


def test_encoder_past_is_bounded() -> None:
    torch.manual_seed(2)
    cfg = config.small().content
    enc = StreamingEncoder(cfg).eval()
    audio = torch.randn(1, 16000 * 12) * 0.1
    changed = audio.clone()
    changed[:, :16000] = 0.0  # the first second
    receptive = cfg.layers * cfg.left_context + 16  # encoder frames of past any output can see
    first_safe = math.ceil((receptive + 1 + 50) * 30 / 50) + 1
    with torch.inference_mode():
        a, b = enc(audio, 360, 2), enc(changed, 360, 2)
    assert torch.equal(a[0, first_safe:], b[0, first_safe:])
    assert not torch.allclose(a[0, :30], b[0, :30])


def test_decoder_is_causal(model: EmoTalk) -> None:
    content = torch.randn(1, 80, model.cfg.content_dim)
    memory = torch.randn(1, 80, model.cfg.d_model)
    later = content.clone()
    later[:, 50:] += 1.0
    with torch.inference_mode():
        a = model.decode(content, memory, torch.tensor([1]), torch.tensor([0]))
        b = model.decode(later, memory, torch.tensor([1]), torch.tensor([0]))
    torch.testing.assert_close(a[:, :50], b[:, :50])
    assert not torch.allclose(a[:, 50:], b[:, 50:])


def test_alibi_bias_matches_the_official_mask() -> None:
    bias = alibi_causal_bias(4, 100, period=30)
    slopes = [0.25, 0.0625, 0.015625, 0.00390625]
    assert bias[0, 65, 36].item() == 0.0 and bias[0, 65, 65].item() == 0.0
    assert bias[0, 65, 35].item() == -0.25 and bias[0, 65, 5].item() == -0.5
    assert bias[3, 65, 5].item() == -2 * slopes[3]
    assert torch.isinf(bias[:, 10, 11]).all()
    bounded = alibi_causal_bias(4, 100, period=30, past=60)
    assert torch.isinf(bounded[0, 80, 19]) and not torch.isinf(bounded[0, 80, 20])


def test_level_blend_and_emotion_override(model: EmoTalk) -> None:
    audio = torch.randn(1, 16000) * 0.1
    with torch.inference_mode():
        low, _ = model(audio, torch.tensor([0]), torch.tensor([0]))
        low_f, _ = model(audio, torch.tensor([0.0]), torch.tensor([0]))
        mid, _ = model(audio, torch.tensor([0.5]), torch.tensor([0]))
        high, _ = model(audio, torch.tensor([1]), torch.tensor([0]))
        memory, _ = model.encode_emotion(audio, 30)
    torch.testing.assert_close(low, low_f)
    assert not torch.allclose(mid, low) and not torch.allclose(mid, high)
    for part in model.override_emotion(memory, model.emotion_prototypes[2], 0.0):
        torch.testing.assert_close(part, memory)
    model.emotion_prototypes[2] = 1.0
    expression, attended = model.override_emotion(memory, model.emotion_prototypes[2], 1.0)
    torch.testing.assert_close(expression, torch.ones_like(memory))
    steady = memory[:, :1].expand_as(memory)  # a voice that never changes is moved onto the prototype
    torch.testing.assert_close(model.override_emotion(steady, model.emotion_prototypes[2], 1.0)[1],
                               torch.ones_like(memory))
    # The attended memory keeps the voice's own changes: its frame-to-frame steps follow the voice's.
    steps, voice_steps = attended.diff(dim=1).flatten(), memory.diff(dim=1).flatten()
    assert torch.corrcoef(torch.stack([steps, voice_steps]))[0, 1] > 0.5
    assert not torch.allclose(attended, expression)


def test_log_mel_frames_are_centred() -> None:
    mel = LogMel(80)
    audio = torch.zeros(1, 16000)
    audio[0, 8000] = 1.0  # an impulse at 0.5 s lights up the frame centred there
    frames = mel(audio)[0].sum(dim=1)
    assert frames.shape[0] == LogMel.frames_for(16000)
    assert int(frames.argmax()) == 50


def test_time_warp_follows_phoneme_anchors() -> None:
    a = [(0.1, 0.2, "h"), (0.2, 0.5, "aI")]
    b = [(0.3, 0.5, "h"), (0.5, 1.1, "aI")]
    times = np.array([0.0, 0.1, 0.15, 0.2, 0.35, 0.5, 0.8])
    warped = time_warp(a, b, 0.8, 1.5, times)
    np.testing.assert_allclose(warped, [0.0, 0.3, 0.4, 0.5, 0.8, 1.1, 1.5])
    other = [(0.3, 0.5, "x"), (0.5, 1.1, "aI")]  # different phonemes: linear fallback
    np.testing.assert_allclose(time_warp(a, other, 0.8, 1.6, times), times * 2)


def test_gather_frames_interpolates() -> None:
    x = torch.arange(10, dtype=torch.float32).view(1, 10, 1)
    pos = torch.tensor([[0.0, 2.5, 9.0, 12.0]])
    torch.testing.assert_close(gather_frames(x, pos)[0, :, 0], torch.tensor([0.0, 2.5, 9.0, 9.0]))


def test_long_clips_decode_in_blocks_exactly(model: EmoTalk) -> None:
    from emotalk_stream.training import model as model_module
    from emotalk_stream.training import streaming_encoder

    audio = torch.randn(1, 16000 * 25) * 0.1  # 750 frames: two decoder blocks, several attention blocks
    with torch.inference_mode():
        blocked, _ = model(audio, torch.tensor([1]), torch.tensor([0]))
        saved = model_module.DECODE_BLOCK, streaming_encoder.ATTENTION_BLOCK
        model_module.DECODE_BLOCK = streaming_encoder.ATTENTION_BLOCK = 10_000
        try:
            whole, _ = model(audio, torch.tensor([1]), torch.tensor([0]))
        finally:
            model_module.DECODE_BLOCK, streaming_encoder.ATTENTION_BLOCK = saved
    torch.testing.assert_close(blocked, whole, atol=1e-5, rtol=1e-4)


def test_auto_shows_a_detected_emotion_in_proportion_to_its_confidence() -> None:
    calm, present, full = torch.tensor([0.0, 1.0, 0, 0]), torch.tensor([1.0, 1.0, 1.0, 0.0]), torch.tensor(1.0)
    unsure = torch.tensor([0.1, 0.2, 0.45, 0.25])
    torch.testing.assert_close(confident_weights(unsure, calm, present, full), calm)  # no label above SURE: calm
    sure = torch.tensor([0.05, 0.05, 0.9, 0.0])
    torch.testing.assert_close(confident_weights(sure, calm, present, full), torch.tensor([0.0, 0.2, 0.8, 0.0]))
    # Half the evidence (early in a stream) shows half as much.
    torch.testing.assert_close(confident_weights(sure, calm, present, torch.tensor(0.5)),
                               torch.tensor([0.0, 0.6, 0.4, 0.0]))
    # A label without a prototype is never shown, however sure; just above SURE barely shows.
    torch.testing.assert_close(confident_weights(torch.tensor([0.0, 0.0, 0.0, 1.0]), calm, present, full), calm)
    edge = confident_weights(torch.tensor([0.0, 0.0, SURE + 1e-3, 0.5 - 1e-3]), calm, present, full)
    assert edge[2] < 0.01 and torch.isclose(edge.sum(), torch.tensor(1.0))


def test_the_recent_mean_fades_the_past_exactly_in_blocks_and_steps() -> None:
    torch.manual_seed(0)
    hidden, frames = torch.randn(2, 40, 3), 5.0
    decay = math.exp(-1 / frames)
    expected, total, weight = [], torch.zeros(2, 3), torch.zeros(2)
    for t in range(40):  # the rule it stands for: a plain mean over the first 5 frames, then the past fades
        fade = decay if t + 1 > frames else 1.0
        total, weight = total * fade + hidden[:, t], weight * fade + 1.0
        expected.append(total / weight[:, None])
    expected = torch.stack(expected, dim=1)
    torch.testing.assert_close(expected[:, 4], hidden[:, :5].mean(dim=1))
    torch.testing.assert_close(recent_mean(hidden, frames, block=7), expected)
    torch.testing.assert_close(recent_mean(hidden, frames, block=3), expected)
    torch.testing.assert_close(recent_mean(hidden, frames), expected)
    # A step's frames where only some count (not ready yet): the others change nothing.
    counted = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    sums, weights = decayed_sums(hidden[:, :3], counted, torch.full((2,), 40.0), total, weight, frames)
    torch.testing.assert_close(sums[0, 1], sums[0, 0])
    torch.testing.assert_close(sums[0, 2], (total[0] * decay + hidden[0, 0]) * decay + hidden[0, 2])
    torch.testing.assert_close(weights[1], weight[1].expand(3))
    # After a long voice of one kind, three time constants of another outweigh it twenty to one.
    changed = torch.cat([torch.zeros(1, 200, 1), torch.ones(1, 15, 1)], dim=1)
    assert recent_mean(changed, frames)[0, -1, 0] > 0.95 > 15 / 215


def test_the_emotion_head_is_unsure_far_from_the_features_it_was_fitted_on() -> None:
    torch.manual_seed(0)
    head = ClassificationHead(4, 3).eval()
    near, middle, far = torch.tensor([[0.5, 0, 0, 0]]), torch.tensor([[0, 3.0, 0, 0]]), torch.tensor([[0, 0, 9.0, 0]])
    plain = [head(x) for x in (near, middle, far)]
    assert all(not torch.equal(p, torch.zeros_like(p)) for p in plain)  # no known region: trusted everywhere

    head.familiar_precision.copy_(torch.eye(4))  # unit covariance around 0: the distance is the norm
    head.familiar_range.copy_(torch.tensor([2.0, 4.0]))
    assert torch.equal(head(near), plain[0])  # inside: the logits as they were
    assert torch.allclose(head(middle), 0.5 * plain[1])  # halfway between the edges: half as sure
    assert torch.equal(head(far), torch.zeros_like(plain[2]))  # beyond: every label alike
    head.dropout.p = 0.0
    assert torch.equal(head.train()(far), plain[2])  # training fits the plain logits


def test_a_voice_is_read_against_its_speakers_usual_features() -> None:
    """A voice whose every frame sits the same way off the training voices' mean (a low or tense
    voice) reads at first as that offset does, and once its speaker is known as the training mean
    does; a change from its usual still reads as that change. Trust stays that of the voice itself."""
    torch.manual_seed(0)
    head = ClassificationHead(4, 3).eval()
    head.familiar_mean.copy_(torch.tensor([1.0, -1.0, 0.0, 0.5]))
    voice, change = head.familiar_mean + torch.tensor([0.0, 1.5, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0, 0.0])
    # Without a known region there is no training mean to read against: the voice as it is.
    assert torch.equal(head.relative_to_speaker(voice, torch.zeros(4)), head(voice))
    head.familiar_precision.copy_(torch.eye(4))
    head.familiar_range.copy_(torch.tensor([1.0, 2.0]))
    prior = 10.0
    at_start = speaker_baseline(torch.zeros(4), torch.tensor(0.0), head.familiar_mean, prior)
    torch.testing.assert_close(at_start, head.familiar_mean)
    torch.testing.assert_close(head.relative_to_speaker(voice, at_start), head(voice))
    # After 1000 frames of it, the baseline is the speaker's, 1% of the way back to the prior.
    known = speaker_baseline(1000 * voice, torch.tensor(1000.0), head.familiar_mean, prior)
    torch.testing.assert_close(known, voice + (head.familiar_mean - voice) * prior / 1010)
    trust = head.familiarity(voice)
    assert 0.0 < trust < 1.0  # 1.5 from the mean: between full trust and none
    usual = head.relative_to_speaker(voice, voice)
    torch.testing.assert_close(usual, head(head.familiar_mean) * trust)
    torch.testing.assert_close(head.relative_to_speaker(voice + change, voice),
                               head(head.familiar_mean + change) * head.familiarity(voice + change))
    assert not torch.allclose(usual, head(voice))
