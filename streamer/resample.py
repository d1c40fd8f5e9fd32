"""Any input rate -> 16 kHz, chunk by chunk, with about 1 ms of look-ahead.

A microphone runs at its own rate (44.1 or 48 kHz mostly) and delivers 10 ms blocks; the model
wants 16 kHz. This is an exact rational polyphase resampler (in/out reduced by their gcd) with a
Kaiser-windowed sinc whose cutoff sits just below the lower Nyquist frequency.

The filter is zero-phase: output sample k lies exactly at input time k * in_rate / out_rate, so
the output is not shifted in time, but it can only be computed once `LOOKAHEAD` samples (at the
lower of the two rates) past that point have arrived: 16 samples, i.e. 1 ms when a 44.1/48 kHz
microphone goes to 16 kHz, 2 ms for 8 kHz input. With a Kaiser beta of 7 and a cutoff at 0.86 of
the lower Nyquist this keeps the passband flat (+-0.1 dB) to about 0.75 Nyquist (6 kHz at 16 kHz
output) and attenuates everything above the lower Nyquist by about 71 dB, so nothing aliases
audibly into speech.

Each output sample depends only on the input samples around it and on its index, never on how the
input was chunked: chunked and one-shot processing give the same samples.
"""
from __future__ import annotations

from math import gcd

import numpy as np

from ..training.audio import MAX_RATE, MIN_RATE, rescale_count

LOOKAHEAD = 16  # samples at the lower of the two rates, on each side of an output sample
ROLLOFF = 0.86  # cutoff as a fraction of the lower Nyquist frequency
KAISER_BETA = 7.0  # about 70 dB stop-band attenuation with this filter length
_BATCH = 4096  # output samples per vectorised step, to bound memory on long one-shot inputs


class StreamingResampler:
    """Float32 mono in at `in_rate`, float32 mono out at `out_rate`, in any chunking."""

    def __init__(self, in_rate: int, out_rate: int = 16000):
        for rate in (in_rate, out_rate):
            if not MIN_RATE <= rate <= MAX_RATE:
                raise ValueError(f"sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz")
        common = gcd(in_rate, out_rate)
        self.in_rate, self.out_rate = in_rate, out_rate
        self._up, self._down = out_rate // common, in_rate // common
        # Half-length of the filter in input samples: LOOKAHEAD samples of the lower rate.
        self._half = -(-LOOKAHEAD * in_rate // min(in_rate, out_rate))
        self.delay_ms = 0.0 if self._up == self._down else 1000.0 * self._half / in_rate
        self._phases = self._filter_bank() if self._up != self._down else None
        self._reset()

    @property
    def passthrough(self) -> bool:
        """In and out rates are equal: `process` returns its input as it is."""
        return self._phases is None

    def _filter_bank(self) -> np.ndarray:
        """(up, 2 * half) taps: row p weighs x[n0 - half + 1 .. n0 + half] for an output at n0 + p / up.

        One row per phase: 160 rows for 44.1 kHz, a single one for 48 kHz.
        """
        half = self._half
        offsets = np.arange(self._up)[:, None] / self._up + (half - 1 - np.arange(2 * half))[None, :]
        cutoff = ROLLOFF * 0.5 * min(1.0, self._up / self._down)  # cycles per input sample
        taper = np.sqrt(np.clip(1.0 - (offsets / half) ** 2, 0.0, None))
        taps = np.sinc(2 * cutoff * offsets) * np.i0(KAISER_BETA * taper)
        taps /= taps.sum(axis=1, keepdims=True)  # unit gain at DC for every phase
        return taps.astype(np.float32)

    def _reset(self) -> None:
        self._received = 0  # input samples so far
        self._produced = 0  # output samples so far
        # Input from absolute index `_origin` on; zeros stand in for the samples before the start.
        self._origin = -self._half
        self._pending = np.zeros(self._half, dtype=np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        """Take the next input chunk; return every output sample that is now computable."""
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if self._phases is None:
            return x.copy()
        self._pending = np.concatenate([self._pending, x])
        self._received += len(x)
        # Output k needs input up to floor(k * down / up) + half.
        ready = max(0, -(-(self._received - self._half) * self._up // self._down))
        return self._emit(min(ready, self._total()))

    def flush(self) -> np.ndarray:
        """End of input: the remaining output (zeros assumed past the end), then start afresh.

        In all, n_in input samples give round(n_in * out_rate / in_rate) output samples (half up).
        """
        if self._phases is None:
            return np.zeros(0, dtype=np.float32)
        self._pending = np.concatenate([self._pending, np.zeros(self._half + 1, dtype=np.float32)])
        out = self._emit(self._total())
        self._reset()
        return out

    def _total(self) -> int:
        return rescale_count(self._received, self._up, self._down)

    def _emit(self, end: int) -> np.ndarray:
        """Compute outputs _produced..end-1 from the pending input, then drop input no longer needed."""
        assert self._phases is not None
        if end <= self._produced:
            return np.zeros(0, dtype=np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(self._pending, 2 * self._half)
        parts = []
        for start in range(self._produced, end, _BATCH):
            k = np.arange(start, min(start + _BATCH, end), dtype=np.int64)
            position, phase = np.divmod(k * self._down, self._up)
            rows = windows[position - self._half + 1 - self._origin]
            parts.append(np.einsum("ij,ij->i", rows, self._phases[phase], dtype=np.float64))
        self._produced = end
        keep_from = self._produced * self._down // self._up - self._half + 1
        self._pending = self._pending[keep_from - self._origin:]
        self._origin = keep_from
        return np.concatenate(parts).astype(np.float32)
