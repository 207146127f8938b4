#!/usr/bin/env bash
# The README's main job: `avss run` on the built-in model with the default profile, on CPU:
# score (robust AVSS) -> select 25 % -> prune -> verify -> export (+ parity) -> bench, into demo-out/.
# A failed gate (exit 1) is a result, not a crash: every artifact is still written.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-demo-out}
start=$SECONDS
rc=0
.venv/bin/avss run builtin:smollm2-135m --profile profiles/default.yaml --out "$OUT" "$@" || rc=$?
if [ "$rc" -eq 1 ]; then
  echo "the retention gate failed for this cut (exit 1): see $OUT/report.md; a CI job would stop here"
elif [ "$rc" -ne 0 ]; then
  exit "$rc"
fi
echo "artifacts in $OUT/: scores.json scores.png model/ report.md junit.xml onnx/ reports/onnx/ bench.json bench.png run.json"
echo "(re-running resumes finished stages; add --force to recompute; $((SECONDS - start)) s)"
