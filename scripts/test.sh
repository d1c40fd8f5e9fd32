#!/usr/bin/env bash
# Install everything the tests need (Debian: espeak-ng for the corpus, alsa-utils for real human
# speech samples) and run the whole suite. CPU only; no network beyond the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test espeak-ng alsa-utils
python -m pytest -q "$@"
