#!/usr/bin/env bash
# Quick start: set up, then run the bundled default model on the bundled voice clip (offline).
# Writes out/sample.csv (Live Link Face CSV) and out/sample.npy ((T, 52) ARKit weights).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh "" 
mkdir -p out
emotalk-infer training/assets/sample.wav --model default --out out/sample.csv
emotalk-infer training/assets/sample.wav --model default --out out/sample.npy --emotion sad:0.8
