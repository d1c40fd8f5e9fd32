"""Offline, full-context inference of a checkpoint in PyTorch: the reference that the streaming
engine is measured against (the whole clip at once, the model's look-ahead, only clipping to
[0, 1]). Needs the `train` extra; `emotalk-infer --backend torch` runs it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from ..engine.arousal import LEVEL_MAX, decoder_levels
from ..engine.interface import ENCODER_FRAME_MS
from ..engine.rest_face import REST_SECONDS, relative_to_rest
from ..engine.vocal_effort import apply_effort, frame_factors
from ..engine.voice_activity import clip_probabilities, gate_articulation
from .calibration import softmax
from .control_values import FOLLOW_VOICE, auto_strength, calm_row, check_prototype, default_emotion
from .framing import frame_count
from .model import EmoTalk


def prototypes_present(model: EmoTalk) -> list[bool]:
    """For each emotion label, whether the model stores its prototype (training writes them)."""
    return (model.emotion_prototypes.abs().sum(dim=1) > 0).tolist()


def require_prototype(model: EmoTalk, label: int) -> None:
    """An emotion override blends towards a label's prototype; refuse where the model has none."""
    check_prototype(prototypes_present(model), model.cfg.emotion_labels, label)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the duration (no dropout), then the caller's mode again (the trainer's)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.inference_mode()
def infer(model: EmoTalk, audio: np.ndarray, level: float | str = 1.0, person: int = 0,
          emotion: int | None = None, strength: float = 1.0,
          lookahead: int | None = None, voice_gate: bool = True,
          rest_relative: bool = True, vocal_effort: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(N,) 16 kHz audio -> (T, 52) float32 weights in [0, 1] and the voice's emotion probabilities.

    With `emotion` (a label index) the emotion memory moves towards that label's prototype by
    `strength` (`EmoTalk.override_emotion`); with None (`auto`) towards the detected emotion in
    proportion to its confidence, the rest calm (`EmoTalk.auto_target`; the voice's own
    features for a model without prototypes). The probabilities stay the voice's own: its recent
    emotion at the clip's end, as a stream reports it (`EmoTalk.encode_as_streamed`). `level`
    `FOLLOW_VOICE` follows the voice's arousal (engine/arousal.py). `voice_gate`
    closes the jaw and lips where no voice is heard, `rest_relative` shows the face relative to
    the model's rest face (engine/rest_face.py) and `vocal_effort` opens the jaw wider where the
    voice is louder than its usual (engine/vocal_effort.py), as the streaming engine does.
    """
    if emotion is not None:
        require_prototype(model, emotion)
    device = next(model.parameters()).device
    frames = frame_count(len(audio), model.cfg.sample_rate, model.cfg.fps)
    follows_voice = level == FOLLOW_VOICE
    levels = decoder_levels(audio, frames, model.cfg.fps, model.cfg.sample_rate) if follows_voice else None
    wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None].to(device)
    with eval_mode(model):
        content, memory, recent = model.encode_as_streamed(wave, frames, lookahead)
        if emotion is None:  # auto: the detected emotion in proportion to its confidence, over the calm face
            labels, present = model.cfg.emotion_labels, prototypes_present(model)
            strength = auto_strength(labels, present)
            heard = torch.arange(1, frames + 1, device=device)[None]  # frames the emotion rests on
            target = model.auto_target(recent, heard, torch.tensor(calm_row(labels, present)).to(recent))
        else:
            target = model.emotion_prototypes[emotion]
        memory, attended = model.override_emotion(memory, target, strength)
        level_input = (torch.from_numpy(np.stack([1.0 - levels, levels], axis=-1))[None] if follows_voice
                       else torch.tensor([level]))
        weights = model.decode(content, memory, level_input.to(device),
                               torch.tensor([person], device=device), attended)
    probabilities = softmax(recent[0, -1].float().cpu().numpy(), model.cfg.emotion_temperature)
    weights = weights[0].float().clamp(0.0, 1.0).cpu().numpy()
    if rest_relative:
        rest = rest_face(model, 0.0 if follows_voice else level, person, lookahead)
        if follows_voice:  # the rest face at each frame's level, as the engine moves it
            rest = rest + levels[:, None] * ((rest_face(model, LEVEL_MAX, person, lookahead) - rest) / LEVEL_MAX)
        weights = relative_to_rest(weights, rest)
    if vocal_effort:
        weights = apply_effort(weights, frame_factors(audio, frames, model.cfg.fps, model.cfg.sample_rate))
    if voice_gate:
        lookahead_ms = model._lookahead(lookahead) * ENCODER_FRAME_MS
        weights = gate_articulation(weights, clip_probabilities(audio), np.arange(frames), model.cfg.fps, lookahead_ms)
    return weights, probabilities


def rest_face(model: EmoTalk, level: float, person: int, lookahead: int | None = None) -> np.ndarray:
    """(52,) the model's calm face on silence, as `Engine.rest_face` finds it."""
    labels = model.cfg.emotion_labels
    calm = default_emotion(labels, prototypes_present(model))
    silence = np.zeros(int(REST_SECONDS * model.cfg.sample_rate), dtype=np.float32)
    emotion = None if calm == "auto" else labels.index(calm)
    weights, _ = infer(model, silence, level, person, emotion, lookahead=lookahead, voice_gate=False, rest_relative=False,
                       vocal_effort=False)
    return weights[-1]
