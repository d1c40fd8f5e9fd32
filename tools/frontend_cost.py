"""Measure the two candidate front ends of the `small` model: log-mel vs a wav2vec2-style CNN.

    python -m emotalk_stream.tools.frontend_cost [--seconds 10] [--repeats 20] [--json]

Both turn 16 kHz audio into 50 Hz features of the content encoder's width; the mel front end is
what `small` uses (DFT convolution, mel matrix, one stride-2 convolution), the CNN is wav2vec2's
seven-layer feature extractor (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2) at the given
channel width, plus its projection. One CPU thread, inference mode, median over repeats.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import torch
from torch import nn

from emotalk_stream.training import config
from emotalk_stream.training.streaming_encoder import StreamingEncoder
from emotalk_stream.training.wav2vec2 import FeatureExtractor, FeatureProjection


class MelFrontEnd(nn.Module):
    def __init__(self, encoder: StreamingEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.encoder.frontend(audio)


class ConvFrontEnd(nn.Module):
    def __init__(self, cfg: config.EncoderConfig):
        super().__init__()
        self.features = FeatureExtractor(cfg)
        self.projection = FeatureProjection(cfg, dropout=0.0)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.projection(self.features(audio))


def milliseconds(module: nn.Module, audio: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        module(audio)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            module(audio)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--conv-dim", type=int, default=256, help="CNN channel width (XLSR uses 512)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    content = config.small().content
    audio = torch.randn(1, int(args.seconds * 16000)) * 0.1
    candidates = {
        # layers=0: only the front end (and a final norm) is built, so its parameters are counted.
        "log_mel": MelFrontEnd(StreamingEncoder(dataclasses.replace(content, layers=0))).eval(),
        "wav2vec2_cnn": ConvFrontEnd(dataclasses.replace(content, conv_dim=args.conv_dim)).eval(),
    }
    result = {"seconds": args.seconds, "threads": 1, "conv_dim": args.conv_dim}
    for name, module in candidates.items():
        ms = milliseconds(module, audio, args.repeats)
        params = sum(p.numel() for p in module.parameters())
        result[name] = {"ms_per_audio_second": ms / args.seconds, "parameters": params,
                        "frames": int(module(audio).shape[1])}
    if args.json:
        print(json.dumps(result))
    else:
        for name in candidates:
            r = result[name]
            print(f"{name:14s} {r['ms_per_audio_second']:7.3f} ms per second of audio, "
                  f"{r['parameters']:,} parameters, {r['frames']} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
