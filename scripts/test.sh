#!/usr/bin/env bash
# Install everything the tests need, at the versions in requirements/lock.txt, and run the whole
# suite (arguments go to pytest). CPU only; no network beyond the package registries. Debian:
# espeak-ng (corpus), alsa-utils (real human speech), libportaudio2 and libasound2-plugins (the
# microphone through ALSA), pulseaudio + pulseaudio-utils (a virtual microphone), liblo-tools
# (oscdump, an independent OSC receiver), chromium (the viewer page).
# pytest's exit code is this script's: 5 (no test ran) fails like any other non-zero code.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh train,test espeak-ng alsa-utils libportaudio2 libasound2-plugins pulseaudio \
    pulseaudio-utils liblo-tools chromium
python -m pytest -q "$@"
