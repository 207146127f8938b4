#!/usr/bin/env bash
# The README's main job: `avss run` on the built-in model with the default profile, on CPU, into demo-out/:
# score (block influence) -> remove 1 layer -> repair it (linear patch) -> verify -> export (+ parity)
# -> verify the ONNX export -> bench. This cut passes the default gate (measured: 0.908 / 1.018 / 1.016).
# The default 25 % cut fails it, honestly: `bash scripts/demo.sh` with DEMO=default runs that one.
# A failed gate (exit 1) is a result, not a crash: every artifact is still written.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-demo-out}
if [ "${DEMO:-repaired}" = "default" ]; then
  CUT=()
else
  CUT=(--method block-influence --num-layers 1 --repair linear)
fi
start=$SECONDS
rc=0
.venv/bin/avss run builtin:smollm2-135m --profile profiles/default.yaml --out "$OUT" "${CUT[@]}" "$@" || rc=$?
if [ "$rc" -eq 1 ]; then
  echo "the retention gate failed for this cut (exit 1): see $OUT/report.md; a CI job would stop here"
elif [ "$rc" -ne 0 ]; then
  exit "$rc"
fi
echo "artifacts in $OUT/: scores.json scores.png cut/ model/ report.md junit.xml onnx/ reports/onnx/ bench.json bench.png run.json"
echo "(re-running resumes finished stages; add --force to recompute; $((SECONDS - start)) s)"
