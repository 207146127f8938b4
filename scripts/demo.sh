#!/usr/bin/env bash
# The README's main job on the built-in model: score every layer, prune the 7 least important,
# then gate the slim model on profiles/default.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-demo-out}
mkdir -p "$OUT"
.venv/bin/avss score builtin:smollm2-135m --method avss --out "$OUT/scores.json" --plot "$OUT/scores.png" --force
.venv/bin/avss prune builtin:smollm2-135m --scores "$OUT/scores.json" --num-layers 7 --out "$OUT/slim" --force
rc=0
.venv/bin/avss verify builtin:smollm2-135m "$OUT/slim" --profile profiles/default.yaml --report-dir "$OUT/report" || rc=$?
if [ "$rc" -eq 1 ]; then
  echo "the retention gate failed for this cut (exit 1): see $OUT/report/report.md; a CI job would stop here"
elif [ "$rc" -ne 0 ]; then
  exit "$rc"
fi
echo "artifacts: $OUT/scores.json $OUT/scores.png $OUT/slim/ (compression.json inside) $OUT/report/"
