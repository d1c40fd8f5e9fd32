"""Streaming the `large` (official) model: sliding windows over a bounded left context.

wav2vec2-large attends over its whole input and its positional convolution sees +-1.3 s, so it
cannot carry state exactly the way `small` does. Each step instead re-runs the offline model on a
fixed window (the last `context_ms` of audio, the new hop and the look-ahead) and emits the output
frames whose time, plus the look-ahead, the window now covers. Work per step is the window's,
whatever the stream's length; memory is constant. The window is zero-padded before the stream's
start. Frames are read off the window's own frame grid at their exact times (the official code
resamples 50 Hz features to the window's frame count with `align_corners`), interpolating
between the two nearest window frames.

Same tensor interface as `SmallStreamingStep`; it runs on the torch backend (CPU or CUDA).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..training.control_values import calm_row
from ..training.errors import UserError
from ..training.framing import ENCODER_HOP, frame_count
from ..training.model import EmoTalk, blend_to_prototype, running_mean, shift_to_prototype
from ..training.offline import prototypes_present
from .interface import TensorSpec, input_specs, output_specs

CNN_RECEPTIVE_FIELD = 400  # samples of wav2vec2's feature encoder per 50 Hz frame
DEFAULT_CONTEXT_MS = 2000


class WindowStreamingStep(nn.Module):
    def __init__(self, model: EmoTalk, hop_frames: int, lookahead: int, context_ms: int = DEFAULT_CONTEXT_MS):
        super().__init__()
        cfg = model.cfg
        if hop_frames < 1 or lookahead < 0 or context_ms < 100:
            raise UserError("a sliding window needs a hop of at least 20 ms, a look-ahead of 0 or more "
                            "and at least 100 ms of context")
        self.model, self.cfg = model, cfg
        self.hop_frames, self.lookahead = hop_frames, lookahead
        self.hop_samples = hop_frames * ENCODER_HOP
        self.lookahead_samples = lookahead * ENCODER_HOP
        self.window = context_ms * cfg.sample_rate // 1000 + self.hop_samples + self.lookahead_samples
        self.window_frames = frame_count(self.window, cfg.sample_rate, cfg.fps)
        cnn_frames = (self.window - CNN_RECEPTIVE_FIELD) // ENCODER_HOP + 1
        # Sample (from the window's start) at which window frame i sits, on the official frame grid.
        self.frame_step = (cnn_frames - 1) / (self.window_frames - 1) * ENCODER_HOP
        self.frame_origin = CNN_RECEPTIVE_FIELD / 2
        self.samples_per_frame = cfg.sample_rate / cfg.fps
        self.slots = math.ceil(self.hop_samples / self.samples_per_frame) + 1
        self.register_buffer("calm", torch.tensor(calm_row(cfg.emotion_labels, prototypes_present(model))),
                             persistent=False)  # the rest of `auto`'s face

    def input_specs(self) -> list[TensorSpec]:
        return input_specs(self.cfg, self.hop_samples)

    def output_specs(self) -> list[TensorSpec]:
        return output_specs(self.cfg, self.slots)

    def state_specs(self) -> list[TensorSpec]:
        return [TensorSpec("step", (), "int64"), TensorSpec("next_frame", (), "int64"),
                TensorSpec("audio_window", (self.window,))]

    def forward(self, audio: Tensor, level: Tensor, person: Tensor, emotion: Tensor, emotion_strength: Tensor,
                audio_end: Tensor, states: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        model = self.model
        window = torch.cat([states["audio_window"][:, self.hop_samples:], audio], dim=1)
        step, next_frame = states["step"], states["next_frame"]
        received = (step + 1) * self.hop_samples  # samples of the stream up to the window's end
        content = model.encode_content(window, self.window_frames)
        memory, logits = model.encode_emotion(window, self.window_frames)
        # A label's prototype, or under auto the window's emotion in proportion to its confidence
        heard = (received * self.cfg.fps / self.cfg.sample_rate)[:, None]  # the frames the window's emotion rests on
        target = model.emotion_target(emotion, logits[:, None, :], heard, self.calm)
        # The override as EmoTalk.override_emotion, with the window's running mean as the baseline.
        attended = shift_to_prototype(memory, running_mean(memory), target, emotion_strength)
        memory = blend_to_prototype(memory, target, emotion_strength)
        decoded = model.decode(content, memory, level, person, attended).clamp(0.0, 1.0)  # (B, window_frames, 52)

        frames = next_frame[:, None] + torch.arange(self.slots, device=audio.device)
        at = frames.double() * self.samples_per_frame  # each frame's sample in the stream
        ready = at + self.lookahead_samples <= received[:, None].double()
        position = (at - (received[:, None] - self.window).double() - self.frame_origin) / self.frame_step
        position = position.clamp(0, self.window_frames - 1)
        low = position.floor().long()
        high = (low + 1).clamp(max=self.window_frames - 1)
        frac = (position - low).to(decoded.dtype)[..., None]
        width = decoded.shape[-1]
        below = decoded.gather(1, low[..., None].expand(-1, -1, width))
        above = decoded.gather(1, high[..., None].expand(-1, -1, width))
        n_frames = ready.sum(dim=1)
        new = {"step": step + 1, "next_frame": next_frame + n_frames, "audio_window": window}
        return {"weights": below + (above - below) * frac, "n_frames": n_frames, "emotion_logits": logits}, new, {}
