"""Where the streamer's audio comes from: a microphone, a WAV file or raw PCM on stdin.

Every source hands out 16 kHz mono float32 in [-1, 1], whatever the device or file delivers, and
remembers when each part of the audio arrived so the streamer can measure its latency from the
moment the sound was captured. The microphone's audio callback only copies into a preallocated
ring buffer: it never logs, allocates arrays or waits, so a slow model cannot make the device drop
audio; the resampling happens in `read`, on the streaming thread.
"""
from __future__ import annotations

import io
import logging
import os
import queue
import select
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, BinaryIO

import numpy as np

from ..training.audio import SAMPLE_RATE, read_audio
from ..training.errors import UserError
from .resample import MAX_RATE, MIN_RATE, StreamingResampler

log = logging.getLogger(__name__)

STALL_S = 2.0  # a microphone silent this long (no callbacks at all) has stopped
STAMPS = 4096  # arrival stamps kept: 40 s of 10 ms blocks
# Linux takes PortAudio from the system; the sounddevice wheels for Windows and macOS hold it
PORTAUDIO_FIXES = {
    "linux": "install it: apt install libportaudio2 (Debian, Ubuntu) or dnf install portaudio (Fedora)",
    "darwin": "brew install portaudio, or reinstall sounddevice, whose wheel holds it: "
              "pip install --force-reinstall sounddevice",
    "win32": "reinstall sounddevice, whose wheel holds it: pip install --force-reinstall sounddevice",
}
PCM_FORMATS = {"s16le": ("<i2", 1 / 32768), "f32le": ("<f4", 1.0)}
PIPE_READ_BYTES = 8192  # at most this much per read from the pipe: small, so arrival stamps stay fine
PIPE_QUEUE_CHUNKS = 64  # converted chunks waiting for `read`; a full queue holds back the writer
PIPE_POLL_S = 0.1  # how long the pipe's reader waits for bytes before it looks whether to stop
# Input this far ahead of real time (a file piped in, a fast TTS) waits in the queue above, so the
# time from its arrival to its frames is backlog, not the streamer's latency. More than a full
# Linux pipe (64 KiB: 2 s of 16 kHz s16le) that a live writer may fill while the model loads.
AHEAD_OF_REAL_TIME_S = 3.0
STDIN_EXAMPLE = "ffmpeg -i speech.mp3 -f s16le -ac 1 -ar 16000 - | emotalk-stream --stdin ..."


class DeviceLost(UserError):
    """The microphone stopped delivering (unplugged, taken away, sound server gone); `start` may
    open it again."""


def _clipped(audio: np.ndarray) -> np.ndarray:
    """Into [-1, 1]: the resampler's filter may overshoot full-scale input a little."""
    return np.clip(audio, -1.0, 1.0, out=audio)


class Source(ABC):
    """16 kHz mono float32 audio from somewhere; `start` it, `read` until `finished`, `close` it."""

    sample_rate: int = SAMPLE_RATE
    realtime: bool  # audio arrives at the speed it plays (microphone, paced file)
    overruns: int = 0  # audio lost because the reader fell behind; counted, never fatal
    # The input came faster than it plays and waited in a queue, so sound-to-packet times measure
    # that backlog rather than the streamer's latency (the unpaced file is handed out block by
    # block instead, and stays measured).
    ahead_of_real_time: bool = False

    def check(self) -> None:
        """Raise `UserError` now for what the user can fix (a missing file, an absent microphone), so
        that it is the first and only line printed, before the model loads."""

    @abstractmethod
    def start(self) -> None:
        """Open the device, file or pipe; raises `UserError` on a bad setup."""

    @abstractmethod
    def read(self, timeout: float) -> np.ndarray | None:
        """The next chunk of 16 kHz mono audio, or None if nothing arrived within `timeout` s."""

    @property
    @abstractmethod
    def finished(self) -> bool:
        """No more audio will come and all of it was read."""

    @abstractmethod
    def arrival_time(self, sample: int) -> float | None:
        """time.monotonic() when 16 kHz sample `sample` (from the start) arrived; None if unknown."""

    @abstractmethod
    def close(self) -> None:
        """Release the device or pipe; safe to call when `start` failed or never ran."""

    def __enter__(self) -> Source:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


class Stamps:
    """(frames delivered so far, time.monotonic()) after each block, in a preallocated table.

    One thread adds, another looks up; a lookup ignores the entries the adder may be overwriting.
    """

    def __init__(self, capacity: int = STAMPS):
        self._frames = np.zeros(capacity, dtype=np.int64)
        self._times = np.zeros(capacity, dtype=np.float64)
        self._count = 0

    def add(self, frames_total: int, when: float) -> None:
        slot = self._count % len(self._frames)
        self._frames[slot] = frames_total
        self._times[slot] = when
        self._count += 1

    def time_of(self, frame: int) -> float | None:
        """When the block holding `frame` arrived; None if it has not yet, or its stamp is gone."""
        count, capacity = self._count, len(self._frames)
        first = max(0, count - capacity)
        order = np.arange(first, count) % capacity
        frames, times = self._frames[order], self._times[order]
        if first > 0:  # the adder may have replaced the oldest entries while they were copied
            unsafe = self._count - count + 1
            frames, times, first = frames[unsafe:], times[unsafe:], first + unsafe
        found = int(np.searchsorted(frames, frame, side="right"))
        if found == len(frames) or (found == 0 and first > 0):
            return None
        return float(times[found])


class RingBuffer:
    """Preallocated (capacity, channels) float32 ring: the audio callback writes, one reader reads.

    `write` copies into the preallocated array and never allocates; when the reader has fallen so
    far behind that a block does not fit, the block is dropped and counted as an overrun.
    """

    def __init__(self, capacity: int, channels: int = 1, stamps: int = STAMPS):
        self._data = np.zeros((capacity, channels), dtype=np.float32)
        self.written = 0  # frames accepted so far
        self._taken = 0  # frames handed to the reader so far
        self.overruns = 0
        self.last_write = 0.0  # time.monotonic() of the latest write, dropped or not
        self._stamps = Stamps(stamps)
        self._ready = threading.Event()

    def write(self, block: np.ndarray) -> None:
        """Producer side (the audio callback): copy `block` (frames, channels) in, or drop it."""
        now = time.monotonic()
        self.last_write = now
        frames, capacity = len(block), len(self._data)
        if frames > capacity - (self.written - self._taken):
            self.overruns += 1
            return
        start = self.written % capacity
        head = min(frames, capacity - start)
        np.copyto(self._data[start:start + head], block[:head])
        if head < frames:
            np.copyto(self._data[:frames - head], block[head:])
        self.written += frames
        self._stamps.add(self.written, now)
        self._ready.set()

    def wait(self, timeout: float) -> bool:
        """Consumer side: block until something was written (True) or `timeout` s passed (False)."""
        written = self._ready.wait(timeout)
        self._ready.clear()
        return written

    def read_all(self) -> np.ndarray:
        """Consumer side: every frame written and not yet read, (frames, channels), oldest first."""
        written, capacity = self.written, len(self._data)
        start, frames = self._taken % capacity, written - self._taken
        head = min(frames, capacity - start)
        out = np.concatenate([self._data[start:start + head], self._data[:frames - head]])
        self._taken = written
        return out

    def arrival_time(self, frame: int) -> float | None:
        """When frame `frame` (counting accepted frames from the start) was written."""
        return self._stamps.time_of(frame)


def _sounddevice() -> ModuleType:
    """sounddevice, imported only when a microphone is used: it needs the PortAudio library."""
    try:
        import sounddevice
    except OSError as exc:
        raise UserError(f"cannot use a microphone: the PortAudio library is missing ({exc}); "
                        f"{PORTAUDIO_FIXES.get(sys.platform, PORTAUDIO_FIXES['linux'])}") from exc
    return sounddevice


def _input_devices(sd: ModuleType) -> list[tuple[int, dict[str, Any]]]:
    try:
        devices = sd.query_devices()
    except sd.PortAudioError as exc:
        raise UserError(f"cannot list the audio devices ({exc}): check that the sound system runs") from exc
    return [(index, info) for index, info in enumerate(devices) if info["max_input_channels"] > 0]


def _default_input(sd: ModuleType) -> int | None:
    index = sd.default.device[0]
    return index if isinstance(index, int) and index >= 0 else None


def _device_names(inputs: list[tuple[int, dict[str, Any]]]) -> str:
    return ", ".join(f"{index} {info['name']!r}" for index, info in inputs) or "none"


def find_input_device(device: str | int) -> tuple[int, dict[str, Any]]:
    """'default', an index (int or digits) or part of a device name -> (index, device info)."""
    sd = _sounddevice()
    inputs = _input_devices(sd)
    hint = "pass an index or part of a name from --list-devices"
    if device == "default":
        default = _default_input(sd)
        for index, info in inputs:
            if index == default:
                return index, info
        raise UserError(f"there is no default microphone (input devices: {_device_names(inputs)}); "
                        f"plug one in or {hint}")
    if isinstance(device, int) or device.strip().isdigit():
        wanted = int(device)
        matches = [(index, info) for index, info in inputs if index == wanted]
    else:
        text = device.strip().lower()
        matches = [(index, info) for index, info in inputs if info["name"].lower() == text]
        matches = matches or [(index, info) for index, info in inputs if text in info["name"].lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"no input device matches {device!r} (input devices: {_device_names(inputs)}); {hint}")
    raise UserError(f"{device!r} matches several input devices ({_device_names(matches)}); "
                    f"give more of the name or the index (see --list-devices)")


def list_devices() -> str:
    """A table of the input devices for `--list-devices`; the default one is marked with *."""
    sd = _sounddevice()
    inputs = _input_devices(sd)
    if not inputs:
        return ("no input devices found: plug in a microphone, or check that the sound system "
                "(PulseAudio, PipeWire, ALSA) runs and this user may record")
    default = _default_input(sd)
    width = max(len("name"), *(len(info["name"]) for _, info in inputs))
    lines = [f"   index  {'name':<{width}}  channels  rate"]
    for index, info in inputs:
        mark = "*" if index == default else " "
        lines.append(f" {mark} {index:>5}  {info['name']:<{width}}  {info['max_input_channels']:>8}  "
                     f"{info['default_samplerate']:.0f} Hz")
    lines.append("* = the default microphone (--mic default); pick another by index or name: --mic NAME")
    return "\n".join(lines)


class MicSource(Source):
    """A live input device at its own rate, resampled to 16 kHz on the reading side."""

    realtime = True

    def __init__(self, device: str | int = "default", block_ms: float = 10.0, ring_seconds: float = 2.0):
        self.device = device
        self.block_ms, self.ring_seconds = block_ms, ring_seconds
        self.name = str(device)
        self.rate = 0
        self._stream: Any = None
        self._ring: RingBuffer | None = None
        self._resampler: StreamingResampler | None = None
        self._overflows = 0  # blocks the device itself reported as overflowed
        self._lost_overruns = 0  # overruns of rings from before a reopen
        self._opened_at = 0.0
        self._handed_out = 0  # 16 kHz samples returned by `read`, over every opening
        self._base = 0  # the first sample of the current opening

    @property
    def overruns(self) -> int:  # type: ignore[override]
        return self._overflows + self._lost_overruns + (self._ring.overruns if self._ring is not None else 0)

    def check(self) -> None:
        find_input_device(self.device)

    def start(self) -> None:
        """Open the device; after `DeviceLost`, open it again (found by the same name or index)."""
        self.close()
        if self._ring is not None:  # counted once, however many tries the reopening takes
            self._lost_overruns += self._ring.overruns
            self._ring = None
        self._base = self._handed_out
        sd = _sounddevice()
        index, info = find_input_device(self.device)
        self.name = f"{info['name']!r} (device {index})"
        self.rate = int(round(info["default_samplerate"]))
        if not MIN_RATE <= self.rate <= MAX_RATE:
            raise UserError(f"microphone {self.name} runs at {self.rate} Hz, outside {MIN_RATE}..{MAX_RATE} Hz: "
                            f"set its rate in the sound settings or pick another device")
        try:
            sd.check_input_settings(device=index, channels=1, samplerate=self.rate, dtype="float32")
            channels = 1
        except sd.PortAudioError:  # some devices only record all their channels
            channels = info["max_input_channels"]
        self._ring = RingBuffer(int(self.ring_seconds * self.rate), channels)
        self._resampler = StreamingResampler(self.rate, self.sample_rate)
        try:
            self._stream = sd.InputStream(device=index, channels=channels, samplerate=self.rate,
                                          dtype="float32", blocksize=round(self.rate * self.block_ms / 1000),
                                          latency="low", callback=self._callback)
            self._stream.start()
        except sd.PortAudioError as exc:
            self.close()
            raise UserError(f"cannot open microphone {self.name} ({exc}): check that no other program holds "
                            f"it, or pick another one (see --list-devices)") from exc
        self._opened_at = time.monotonic()
        log.debug("microphone %s: %d Hz, %d channel(s), %.1f ms resampler delay",
                  self.name, self.rate, channels, self._resampler.delay_ms)

    def _callback(self, indata: np.ndarray, frames: int, when: Any, status: Any) -> None:
        """PortAudio's thread: copy into the ring, nothing else."""
        if status.input_overflow:
            self._overflows += 1
        self._ring.write(indata)  # type: ignore[union-attr]

    def read(self, timeout: float) -> np.ndarray | None:
        if self._ring is None or self._resampler is None:
            raise RuntimeError("MicSource.read before start")
        deadline = time.monotonic() + timeout
        while True:
            block = self._ring.read_all()
            if len(block):
                mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1)
                out = self._resampler.process(mono)
                if len(out):
                    self._handed_out += len(out)
                    return _clipped(out)
            self._check_alive()  # only once what it delivered is read
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._ring.wait(min(left, STALL_S))

    def _check_alive(self) -> None:
        """Raise `DeviceLost` when the device stopped delivering (unplugged, taken away, sound
        server gone); the caller decides whether to wait for it or to stop."""
        assert self._ring is not None
        if self._stream is None or not self._stream.active:
            raise DeviceLost(f"microphone {self.name} stopped: the sound system ended the stream "
                             f"(device unplugged or gone?)")
        silent = time.monotonic() - max(self._ring.last_write, self._opened_at)
        if silent > STALL_S:
            raise DeviceLost(f"microphone {self.name} stopped: no audio for {silent:.1f} s "
                             f"(device unplugged or gone?)")

    @property
    def finished(self) -> bool:
        return False  # a microphone never ends by itself

    def arrival_time(self, sample: int) -> float | None:
        if self._ring is None or sample < self._base:
            return None
        return self._ring.arrival_time((sample - self._base) * self.rate // self.sample_rate)

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        stream.close()  # discards pending audio; ignores the errors of a vanished device


class WavSource(Source):
    """A sound file, read whole by `check` (or `start`), handed out in blocks: at the pace of a microphone
    or at once."""

    def __init__(self, path: str | Path, pace: bool = True, block_ms: float = 10.0):
        self.path = Path(path)
        self.realtime = pace
        self._block = max(1, round(self.sample_rate * block_ms / 1000))
        self._audio = np.zeros(0, dtype=np.float32)
        self._started = False
        self._position = 0  # samples handed out
        self._start_time = 0.0
        self._stamps = Stamps()  # unpaced: when each block was handed out

    def check(self) -> None:
        self._audio = read_audio(self.path)

    def start(self) -> None:
        if not len(self._audio):
            self.check()
        self._position = 0
        self._started = True
        self._start_time = time.monotonic()

    def _due_time(self, sample: int) -> float:
        """Paced: when the block holding `sample` is complete, as a microphone would deliver it."""
        end = min(len(self._audio), (sample // self._block + 1) * self._block)
        return self._start_time + end / self.sample_rate

    def read(self, timeout: float) -> np.ndarray | None:
        if not self._started:
            raise RuntimeError("WavSource.read before start")
        if self.finished:
            return None
        if not self.realtime:
            end = min(len(self._audio), self._position + self._block)
            self._stamps.add(end, time.monotonic())
            return self._take(end)
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            elapsed = int((now - self._start_time) * self.sample_rate)
            due = len(self._audio) if elapsed >= len(self._audio) else elapsed // self._block * self._block
            if due > self._position:
                return self._take(due)
            wake = self._due_time(self._position)
            if wake > deadline:
                time.sleep(max(0.0, deadline - now))
                return None
            time.sleep(max(0.0, wake - now))

    def _take(self, end: int) -> np.ndarray:
        chunk = self._audio[self._position:end]
        self._position = end
        return chunk

    @property
    def finished(self) -> bool:
        return self._started and self._position >= len(self._audio)

    def arrival_time(self, sample: int) -> float | None:
        if sample >= self._position:
            return None
        if self.realtime:
            return self._due_time(sample)
        return self._stamps.time_of(sample)

    def close(self) -> None:
        """Nothing to release: the file was read whole by `start`."""


class StdinSource(Source):
    """Raw little-endian PCM from a pipe (stdin by default), at any rate, until end of file."""

    realtime = False

    def __init__(self, fmt: str = "s16le", rate: int = SAMPLE_RATE, channels: int = 1,
                 stream: BinaryIO | None = None):
        if fmt not in PCM_FORMATS:
            raise UserError(f"unknown PCM format {fmt!r}: use one of {', '.join(PCM_FORMATS)} "
                            f"(16-bit integer or 32-bit float, little-endian)")
        if not MIN_RATE <= rate <= MAX_RATE:
            raise UserError(f"PCM rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz: give the rate the "
                            f"audio was recorded at")
        if not 1 <= channels <= 64:
            raise UserError(f"{channels} PCM channels: give 1 to 64 (interleaved channels are mixed down)")
        self.fmt, self.rate, self.channels = fmt, rate, channels
        dtype, self._scale = PCM_FORMATS[fmt]
        self._dtype = np.dtype(dtype)
        self._frame_bytes = self._dtype.itemsize * channels
        self._stream = stream
        self._chunks: queue.Queue[np.ndarray | None] = queue.Queue(PIPE_QUEUE_CHUNKS)
        self._stamps = Stamps()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._ended = False  # the end of the input was handed to `read`
        self._error: BaseException | None = None

    def _input(self) -> BinaryIO:
        if self._stream is not None:
            return self._stream
        if sys.stdin is None:  # started with standard input closed (`<&-`)
            raise UserError(f"--stdin: standard input is closed; pipe raw PCM into it, e.g. {STDIN_EXAMPLE}")
        return sys.stdin.buffer

    def check(self) -> None:
        """A terminal is no PCM source: typing at it would only wait, silently, at 0 fps."""
        if self._input().isatty():
            raise UserError(f"--stdin reads raw PCM from a pipe, but standard input is a terminal: pipe audio "
                            f"into it, e.g. {STDIN_EXAMPLE}, or use --mic default or --wav FILE")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, args=(_pipe_reader(self._input()),),
                                        name="stdin reader", daemon=True)
        self._thread.start()

    def _run(self, read: Callable[[int], bytes | None]) -> None:
        """Reader thread: bytes -> whole sample frames -> mono -> 16 kHz chunks, then None at the end."""
        resampler = StreamingResampler(self.rate, self.sample_rate)
        carry = b""  # the start of a sample frame split across two reads
        frames = 0
        first = 0.0  # when the first bytes arrived
        try:
            while not self._closing.is_set():
                data = read(PIPE_READ_BYTES)
                if data is None:  # nothing yet: look at the closing flag again
                    continue
                if not data:
                    break
                now = time.monotonic()
                first = first or now
                data = carry + data
                whole = len(data) - len(data) % self._frame_bytes
                carry = data[whole:]
                if not whole:
                    continue
                pcm = np.frombuffer(data, dtype=self._dtype, count=whole // self._dtype.itemsize)
                frames += whole // self._frame_bytes
                self._stamps.add(frames, now)
                if frames / self.rate - (now - first) > AHEAD_OF_REAL_TIME_S:
                    self.ahead_of_real_time = True
                self._put(_clipped(resampler.process(self._to_mono(pcm))))
            if carry:
                log.warning("stdin ended inside a sample frame; ignored its last %d bytes", len(carry))
            self._put(_clipped(resampler.flush()))
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
            self._error = exc
        finally:
            self._put(None)

    def _to_mono(self, pcm: np.ndarray) -> np.ndarray:
        """Cleaned and clipped before mixing: NaN would warn on stderr and huge floats overflow the mean."""
        audio = _clipped(np.nan_to_num(pcm.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0) * np.float32(self._scale))
        if self.channels > 1:
            audio = audio.reshape(-1, self.channels).mean(axis=1)
        return audio

    def _put(self, chunk: np.ndarray | None) -> None:
        """Queue for `read`, waiting while the queue is full (the pipe then holds back its writer)."""
        if chunk is not None and not len(chunk):
            return
        while not self._closing.is_set():
            try:
                self._chunks.put(chunk, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, timeout: float) -> np.ndarray | None:
        if self._thread is None:
            raise RuntimeError("StdinSource.read before start")
        if self._ended:
            return None
        try:
            chunks = [self._chunks.get(timeout=timeout)]
        except queue.Empty:
            return None
        while chunks[-1] is not None and not self._chunks.empty():
            chunks.append(self._chunks.get_nowait())
        if chunks[-1] is None:
            chunks.pop()
            self._ended = True
            if self._error is not None:
                raise UserError(f"reading PCM from the input failed ({self._error}); check the program "
                                f"that writes to the pipe")
        return np.concatenate(chunks) if chunks else None

    @property
    def finished(self) -> bool:
        return self._ended

    def arrival_time(self, sample: int) -> float | None:
        return self._stamps.time_of(sample * self.rate // self.sample_rate)

    def close(self) -> None:
        """Stop reading: the reader thread ends within PIPE_POLL_S, even on an idle pipe."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=0.5)


def _pipe_reader(stream: BinaryIO) -> Callable[[int], bytes | None]:
    """`read(n)`: up to n bytes as soon as some are there, b"" at the end, None after PIPE_POLL_S
    without any. Where the stream has a file descriptor it is read directly: a thread blocked inside
    a buffered reader holds its lock, and when the interpreter exits (Ctrl-C on an idle pipe) it
    cannot close sys.stdin and aborts with `Fatal Python error: _enter_buffered_busy`. In-memory
    streams (tests) are read with their own read1."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return getattr(stream, "read1", stream.read)

    def read(size: int) -> bytes | None:
        # Windows' select takes only sockets: there the read blocks, without a lock, until data or the end.
        if os.name == "posix" and not select.select([fd], [], [], PIPE_POLL_S)[0]:
            return None
        return os.read(fd, size)
    return read
