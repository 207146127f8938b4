#!/usr/bin/env bash
# Stage what scripts/gpu_check.sh needs on the lent GPU machine (Python 3.12, transformers 5.x,
# no network) into .whl/ (git-ignored; carry it): the pinned wheels our code needs that its image
# lacks or has in a breaking version, and the real SmolLM2 tokenizer (3.5 MB).
# onnxruntime-gpu (255 MB) is over the 64 MiB carry limit, so the image's CPU onnxruntime is used
# there: the CUDA provider cannot be benchmarked on that machine; the torch CUDA path is checked.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" -d .whl \
  transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 optimum==2.1.0 optimum-onnx==0.1.0 \
  typer==0.29.2 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 annotated-doc==0.0.7 gguf==0.19.0
if [ -x .venv/bin/python ]; then
  .venv/bin/python -c "
from transformers import AutoTokenizer
from compressor.sources.builtins import resolve_builtin_model
AutoTokenizer.from_pretrained(str(resolve_builtin_model('builtin:smollm2-135m'))).save_pretrained('.whl/smollm2-tokenizer')"
fi
du -sh .whl
