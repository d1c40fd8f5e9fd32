"""espeak-ng through ctypes: audio samples plus the synthesizer's own phoneme events.

Labels are aligned to the phoneme events espeak-ng reports while it synthesises
(espeakINITIALIZE_PHONEME_EVENTS), so timing is exact by construction.

espeak-ng keeps synthesis state between calls (glottal phase, flutter index, Klatt filter
memories, the C library's rand() for breath noise), so the same text can come out different
depending on what was spoken before, and espeak_Terminate cannot reset it (it hangs after a
synchronous synthesis). Every synthesis therefore runs in a freshly forked child of a process
that has never synthesised: the child seeds rand(), synthesises, pipes the result back and exits.
The output then depends only on the request, whichever process or worker makes it.
"""
from __future__ import annotations

import ctypes
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import numpy as np

from .errors import UserError

LIBRARY_ENV = "EMOTALK_ESPEAK_LIB"
DEFAULT_LIBRARY = "libespeak-ng.so.1"
INSTALL_HINT = "espeak-ng is not installed: apt-get install espeak-ng"

# speak_lib.h (API revision 12)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7
_EE_OK = 0

T = TypeVar("T")


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class EspeakEvent(ctypes.Structure):
    """espeak_EVENT: 40 bytes on x86_64 (six 4-byte fields, a pointer at 24, the id union at 32)."""

    _fields_ = [
        ("type", ctypes.c_int),  # espeak_EVENT_TYPE (a C enum: int)
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms from the start of this synthesis
        ("sample", ctypes.c_int),  # the same position in samples
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(EspeakEvent))


@dataclass(frozen=True)
class Voice:
    """A voice name ("en-us+f3") and the espeak_SetParameter values to speak with."""

    name: str
    rate: int = 175  # words per minute, 80..450
    pitch: int = 50  # 0..100
    range: int = 50  # pitch range, 0..100
    volume: int = 100  # 0..200
    wordgap: int = 0  # extra pause between words, 10 ms units


@dataclass(frozen=True)
class PhonemeEvent:
    """One espeakEVENT_PHONEME: where the phoneme starts and its espeak mnemonic (e.g. "aI", "_:")."""

    sample: int
    audio_position_ms: int
    name: str


@dataclass(frozen=True)
class Synthesis:
    samples: np.ndarray  # int16, mono
    sample_rate: int
    phonemes: tuple[PhonemeEvent, ...]


class Espeak:
    """The espeak-ng library, loaded once; `synthesize` is safe to call from any process."""

    def __init__(self, library: str | None = None) -> None:
        self.library = library or os.environ.get(LIBRARY_ENV) or DEFAULT_LIBRARY
        try:
            self._lib = ctypes.CDLL(self.library)
        except OSError as exc:
            raise UserError(f"{INSTALL_HINT} (cannot load {self.library})") from exc
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._lib.espeak_SetVoiceByName.restype = ctypes.c_int
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.restype = ctypes.c_int
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        self._lib.espeak_Synth.restype = ctypes.c_int
        self._lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                           ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self._lib.espeak_Info.restype = ctypes.c_char_p
        self._lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        self._libc = ctypes.CDLL(None)
        self.version: str = self._lib.espeak_Info(None).decode()
        self.sample_rate: int = _in_child(self._initialize)

    def synthesize(self, text: str, voice: Voice, seed: int = 0) -> Synthesis:
        """Speak `text` with `voice`; `seed` fixes the synthesizer's noise (breath, Klatt)."""
        return _in_child(lambda: self._synthesize_here(text, voice, seed))

    def _initialize(self) -> int:
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS)
        if rate <= 0:
            raise UserError(f"espeak-ng cannot find its data (espeak_Initialize returned {rate}): "
                            "apt-get install --reinstall espeak-ng-data")
        return rate

    def _synthesize_here(self, text: str, voice: Voice, seed: int) -> Synthesis:
        """Runs in the forked child only: espeak-ng state must never outlive one synthesis."""
        rate = self._initialize()
        chunks: list[np.ndarray] = []
        events: list[PhonemeEvent] = []

        def collect(wav: "ctypes._Pointer[ctypes.c_short]", count: int,
                    event: "ctypes._Pointer[EspeakEvent]") -> int:
            if wav and count > 0:
                chunks.append(np.ctypeslib.as_array(wav, (count,)).copy())
            i = 0
            while event[i].type != _EVENT_LIST_TERMINATED:
                if event[i].type == _EVENT_PHONEME:
                    name = event[i].id.string.decode("utf-8", "replace")
                    events.append(PhonemeEvent(event[i].sample, event[i].audio_position, name))
                i += 1
            return 0

        callback = _SynthCallback(collect)
        self._lib.espeak_SetSynthCallback(callback)
        if self._lib.espeak_SetVoiceByName(voice.name.encode()) != _EE_OK:
            raise ValueError(f"espeak-ng has no voice {voice.name!r} (see espeak-ng --voices)")
        for parameter, value in ((_RATE, voice.rate), (_PITCH, voice.pitch), (_RANGE, voice.range),
                                 (_VOLUME, voice.volume), (_WORDGAP, voice.wordgap)):
            self._lib.espeak_SetParameter(parameter, int(value), 0)
        self._libc.srand(ctypes.c_uint(seed & 0xFFFFFFFF))
        data = text.encode("utf-8") + b"\0"
        status = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with status {status}")
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return Synthesis(samples.astype(np.int16), rate, tuple(events))


def _in_child(work: Callable[[], T]) -> T:
    """Run `work()` in a forked child and return its result (or re-raise its exception)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller's stack
        status = 0
        try:
            os.close(read_fd)
            try:
                payload = pickle.dumps((True, work()))
            except BaseException as exc:  # noqa: BLE001 - the parent re-raises it
                payload = pickle.dumps((False, exc))
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(payload)
        except BaseException:  # noqa: BLE001 - nothing sensible left to do in the child
            status = 1
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not payload:
        raise RuntimeError(f"espeak-ng child process failed (wait status {status})")
    ok, result = pickle.loads(payload)
    if not ok:
        raise result
    return result


def default_espeak() -> Espeak:
    """The process-wide Espeak for the library named by EMOTALK_ESPEAK_LIB (or the default)."""
    return _espeak_for(os.environ.get(LIBRARY_ENV) or DEFAULT_LIBRARY)


@lru_cache(maxsize=4)
def _espeak_for(library: str) -> Espeak:
    return Espeak(library)
