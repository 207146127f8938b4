#!/usr/bin/env bash
# The README's main job on the built-in model: score every layer, then prune the 7 lowest.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-demo-out}
mkdir -p "$OUT"
.venv/bin/avss score builtin:smollm2-135m --method avss --out "$OUT/scores.json" --plot "$OUT/scores.png" --force
.venv/bin/avss prune builtin:smollm2-135m --scores "$OUT/scores.json" --num-layers 7 --out "$OUT/slim" --force
echo "artifacts: $OUT/scores.json $OUT/scores.png $OUT/slim/ (compression.json inside)"
