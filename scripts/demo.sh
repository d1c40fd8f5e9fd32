#!/usr/bin/env bash
# Quick start: set up (the runtime only, no PyTorch: requirements/lock.txt's versions), then run
# the bundled default model on the bundled voice clip, through the live streamer (out/stream.csv)
# and offline (out/sample.csv, Live Link Face CSV; out/sample.npy, (T, 52) ARKit weights). No audio
# device is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh "" libportaudio2
mkdir -p out
echo "demo: streaming training/assets/sample.wav through the default model -> out/stream.csv" >&2
emotalk-stream --wav training/assets/sample.wav --no-pace --record out/stream.csv
echo "demo: offline -> out/sample.csv (Live Link Face CSV)" >&2
emotalk-infer training/assets/sample.wav --model default --out out/sample.csv
echo "demo: offline, sad at 0.8 -> out/sample.npy ((T, 52) ARKit weights)" >&2
emotalk-infer training/assets/sample.wav --model default --out out/sample.npy --emotion sad:0.8
echo "demo: done: out/stream.csv, out/sample.csv, out/sample.npy" >&2
