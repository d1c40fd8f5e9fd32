#!/usr/bin/env bash
# Quick start: set up, then run the bundled default model on the bundled voice clip, through the
# live streamer (out/stream.csv) and offline (out/sample.csv, Live Link Face CSV; out/sample.npy,
# (T, 52) ARKit weights). No audio device is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh "" libportaudio2
mkdir -p out
emotalk-stream --wav training/assets/sample.wav --no-pace --record out/stream.csv
emotalk-infer training/assets/sample.wav --model default --out out/sample.csv
emotalk-infer training/assets/sample.wav --model default --out out/sample.npy --emotion sad:0.8
