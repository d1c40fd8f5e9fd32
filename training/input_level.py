"""Input level normalisation: the model hears the same speech whatever the microphone's gain.

A slow automatic gain control on 10 ms blocks: the level follows the loudest recent speech (fast
attack, slow release) and the signal is scaled so that level sits at `TARGET_DB`. Scaling the input
by any gain scales the tracked level by the same gain, so the output is the same: the mouth's
opening cannot depend on the gain, by construction, for speech above `FLOOR_DB`.

It is causal and exact in streaming: a block's gain comes only from the blocks before it (ramped
linearly across the block, so no clicks), blocks are counted from the stream's first sample, and
feeding audio in pieces of any size gives the same samples as one call. Training, offline inference
and the streaming engine all run this one class (models whose config says `input_level = "agc"`).
Numpy only: the runtime shares it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BLOCK = 160  # samples, 10 ms at 16 kHz
TARGET_DB = -20.0  # where the tracked speech level is put (dBFS, RMS of a 10 ms block)
FLOOR_DB = -52.0  # the quietest level tracked: below it nothing is amplified further (at most +32 dB)
ATTACK = 0.5  # share of the way to a louder block's level the tracker moves per block (~15 ms)
RELEASE_DB = 0.03  # dB per block the level falls while blocks are quieter (3 dB/s: pauses keep it)
MODES = ("raw", "agc")
_STATE = ("_level_db", "_gain_from", "_gain_to", "_energy")  # a normaliser's per-channel arrays


class LevelNormaliser:
    """The gain control of one stream, or of a batch of clips side by side (`channels`);
    `process` returns the normalised samples of any piece of audio, (n,) or (channels, n)."""

    def __init__(self, channels: int = 1) -> None:
        self._level_db = np.full(channels, FLOOR_DB)
        self._gain_from = np.full(channels, TARGET_DB - FLOOR_DB)  # dB at the start of the current block
        self._gain_to = np.full(channels, TARGET_DB - FLOOR_DB)  # dB at its end
        self._energy = np.zeros(channels)  # sum of squares of the current block so far
        self._filled = 0  # samples of the current block seen so far

    @property
    def place(self) -> int:
        """Samples of the current 10 ms block seen so far."""
        return self._filled

    def process(self, samples: np.ndarray) -> np.ndarray:
        x = np.asarray(samples, dtype=np.float64)
        rows = np.atleast_2d(x)
        out = np.empty(rows.shape, dtype=np.float32)
        done = 0
        while done < rows.shape[1]:
            take = min(BLOCK - self._filled, rows.shape[1] - done)
            piece = rows[:, done:done + take]
            position = np.arange(self._filled + 1, self._filled + take + 1) / BLOCK
            gain_db = self._gain_from[:, None] + (self._gain_to - self._gain_from)[:, None] * position
            out[:, done:done + take] = piece * 10.0 ** (gain_db / 20.0)
            self._energy += np.einsum("ij,ij->i", piece, piece)
            self._filled += take
            done += take
            if self._filled == BLOCK:
                self._end_block()
        return out if x.ndim == 2 else out[0]

    def _end_block(self) -> None:
        block_db = 10.0 * np.log10(self._energy / BLOCK + 1e-20)
        louder = block_db > self._level_db
        released = np.maximum(np.maximum(FLOOR_DB, self._level_db - RELEASE_DB), block_db)
        self._level_db = np.where(louder, self._level_db + ATTACK * (block_db - self._level_db), released)
        self._gain_from, self._gain_to = self._gain_to, TARGET_DB - self._level_db
        self._filled = 0
        self._energy = np.zeros_like(self._energy)


def normalise_together(normalisers: Sequence[LevelNormaliser], rows: np.ndarray) -> np.ndarray:
    """`rows` (len(normalisers), n), row i the next audio of stream i, normalised by each stream's
    own control in one batched pass (one call instead of one per stream: the streaming engine's
    step). Every normaliser must stand at the same place in its block."""
    filled = {n.place for n in normalisers}
    if len(filled) != 1 or any(len(n._level_db) != 1 for n in normalisers):
        raise ValueError(f"normalise_together needs one-channel normalisers at one place in the block, got {filled}")
    batch = LevelNormaliser(len(normalisers))
    batch._filled = filled.pop()
    for name in _STATE:
        setattr(batch, name, np.concatenate([getattr(n, name) for n in normalisers]))
    out = batch.process(rows)
    for i, normaliser in enumerate(normalisers):
        normaliser._filled = batch._filled
        for name in _STATE:
            setattr(normaliser, name, getattr(batch, name)[i:i + 1].copy())
    return out


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"input_level {mode!r} is not one of {MODES}")
    return mode


def model_input(audio: np.ndarray, mode: str) -> np.ndarray:
    """Whole clips, (n,) or side by side (clips, n), as a model with this `input_level` mode
    hears them (float32). Zero padding after a clip does not change the clip (causal)."""
    if check_mode(mode) == "raw":
        return np.asarray(audio, dtype=np.float32)
    return LevelNormaliser(1 if np.ndim(audio) == 1 else len(audio)).process(audio)
