"""ONNX Runtime GenAI's Model Builder as a second exporter: the artifact edge teams deploy.

Why a second exporter: the builder turns the same checkpoint folder into a graph with fused
GroupQueryAttention, SkipSimplifiedLayerNormalization and (for int4) MatMulNBits, which decodes
several times faster than Optimum's generic graph; gating Optimum's graph and shipping the builder's
would gate something that never ships. So the builder runs on the folder (as a library, in this
process; its prints and progress bars go to a log in the staging folder, never to our stdout or
stderr), and its graph is checked against
PyTorch like Optimum's: fp32 logits on a right-padded batch (GroupQueryAttention derives positions
from the mask's sum, so it is exact with right padding and wrong with left), then per sequence a
decode step on the KV cache and greedy tokens. A quantized graph gets a structural check and is
judged on tasks (``avss verify BASE FOLDER``).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, TypeVar

from compressor.compat import genai_requirement, optimum_missing  # noqa: E402
from compressor.errors import BadInput, RuntimeFailure
from compressor.export.layout import GENAI_CONFIG, genai_kv_shape, is_genai_folder  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

_T = TypeVar("_T")

REQUIREMENT = genai_requirement()  # this lane's builder: 0.15.2 with transformers 4.57, 0.18.0 with 5
# what a refusal offers instead: Optimum where it runs (the card's lane), else that lane
INSTEAD = ("use --exporter optimum" if optimum_missing() is None
           else "use the card's lane (make install), where --exporter optimum runs")
# the builder's model classes among the architectures we prune (builder.py dispatches on these), each with the
# first builder we build it with: LFM2-MoE with 0.18.0, the current lane's (it needs transformers 5 anyway).
# Qwen3.5 is not here: the builder builds it only from the multimodal Qwen3_5ForConditionalGeneration checkpoint
BUILDS = {"LlamaForCausalLM": (0, 15), "MistralForCausalLM": (0, 15), "Qwen2ForCausalLM": (0, 15),
          "Qwen3ForCausalLM": (0, 15), "Phi3ForCausalLM": (0, 15), "Lfm2MoeForCausalLM": (0, 18)}
# what the builder builds but computes wrongly: refused up front with the reason (it used to build for minutes,
# then fail the parity check)
WRONG = {"Gemma3ForCausalLM": "its Gemma 3 graph (sliding and full attention layers) does not compute what "
                              "transformers' Gemma 3 computes (measured: 0.011 off on the prompt logits)"}
# --quantize -> builder precision and its options: weight-only MatMulNBits, block 32, accuracy level 4
# (int8 compute, as our own weight-only methods use; ONNX Runtime's fast CPU path). int8-weights is the
# builder's 8-bit precision (its int4_* options apply to both bit widths).
def _installed_builder() -> tuple[int, int]:
    """(major, minor) of the installed builder; (0, 0) when none is (``builder_version`` says so, with the fix)."""
    from importlib.metadata import PackageNotFoundError, version

    for name in ("onnxruntime-genai", "onnxruntime-genai-cuda"):
        try:
            major, minor = (int(x) for x in version(name).split(".")[:2])
        except (PackageNotFoundError, ValueError):
            continue
        return major, minor
    return 0, 0


BUILDER = _installed_builder()
SUPPORTED = tuple(arch for arch, first in BUILDS.items() if BUILDER >= first)
# The builder's option names: 0.15.2 reads ``int4_block_size``, ``int4_accuracy_level``, ``int4_algo_config``;
# 0.17+ renamed them (``block_size``, ...) and ignores ``int4_algo_config=k_quant_mixed`` (measured with 0.18.0:
# a plain int4 graph, LM head included), so each lane passes its builder's names.
_OPT = "" if BUILDER >= (0, 17) else "int4_"
_MATMULNBITS = [f"{_OPT}block_size=32", f"{_OPT}accuracy_level=4"]
# int4-mixed: the builder's k_quant_mixed (0.15.2): k-quant int4 body, the LM head and the most quantization-sensitive
# MatMuls (llama.cpp's mixed strategy: first and last eighth of the layers, every third layer's qkv/v/down) in int8
PRECISION = {None: ("fp32", []), "int4": ("int4", _MATMULNBITS), "int8-weights": ("int8", _MATMULNBITS),
             "int4-mixed": ("int4", [*_MATMULNBITS, f"{_OPT}algo_config=k_quant_mixed"])}
CPU_HEAD_MULTIPLE = 16  # ONNX Runtime's CPU GroupQueryAttention: "head_size shall be a multiple of 16"
# --dtype -> builder precision for an unquantized graph. fp16 targets the CUDA provider (``-e cuda``); its
# graph also runs on ONNX Runtime's CPU provider, so its parity is checked there when no CUDA provider
# is installed (recorded, with a warning). bf16 is not offered: ONNX Runtime's CPU provider has no bf16
# MatMul and numpy no bfloat16 for the KV cache, so no machine we test on could check one.
DTYPES = {"float32": "fp32", "float16": "fp16"}


def builder_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in ("onnxruntime-genai", "onnxruntime-genai-cuda"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    raise BadInput("--exporter genai needs ONNX Runtime GenAI, which is not installed",
                   f"pip install '{REQUIREMENT}' (the lane's extra: make install)"
                   + ("" if optimum_missing() else ", or use --exporter optimum"))


ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def check_target(dtype: str, device: str, quantize: Optional[str]) -> str:
    """The builder's execution-provider target for ``--dtype``/``--device``; refused up front otherwise."""
    shown, dtype = dtype, ALIASES.get(dtype, dtype)
    if dtype not in DTYPES:
        raise BadInput(f"--exporter genai has no --dtype {shown}",
                       "use --dtype fp32, or fp16 with --device cuda (bf16 graphs cannot be checked without a GPU "
                       "build of ONNX Runtime; see README)")
    if device not in ("cpu", "cuda"):
        raise BadInput(f"unknown --device {device!r}", "use --device cpu or cuda")
    if dtype == "float16" and device != "cuda":
        raise BadInput("--exporter genai builds fp16 graphs for the CUDA provider", "add --device cuda, or drop --dtype")
    if quantize and device != "cpu":
        raise BadInput(f"--exporter genai builds --quantize {quantize} graphs for CPU here",
                       "drop --device cuda (or --quantize)")
    return device


def check_precision(quantize: Optional[str]) -> None:
    if quantize not in PRECISION:
        raise BadInput(f"--exporter genai has no --quantize {quantize}",
                       "use --quantize int4, int4-mixed or int8-weights (the builder's MatMulNBits), or --exporter optimum for "
                       "dynamic int8")


# --fuse-gate-up: an option only a newer builder has (the first we build it with) and its --extra_options entry
FUSE_GATE_UP = ((0, 18), "fuse_mlp_gate_up=true")


def check_options(quantize: Optional[str], fuse_gate_up: bool = False) -> list[str]:
    """The builder options the flags ask for (``--fuse-gate-up``: each MLP's gate and up projections as one quantized
    MatMul and a Split); refused up front where this lane's builder lacks them, or where they change nothing."""
    if not fuse_gate_up:
        return []
    first, entry = FUSE_GATE_UP
    if BUILDER < first:
        raise BadInput(f"--fuse-gate-up needs ONNX Runtime GenAI's builder {'.'.join(map(str, first))}.0 or later; this "
                       f"lane pins {REQUIREMENT}", "use the current lane (make install LANE=current), or drop --fuse-gate-up")
    if not quantize:
        raise BadInput("--fuse-gate-up fuses the projections the builder quantizes; an unquantized graph is not changed "
                       "by it", "add --quantize int4 or int8-weights, or drop --fuse-gate-up")
    return [entry]


def check_supported(config: PretrainedConfig, family: str, quantize: Optional[str], device: str = "cpu") -> None:
    """Refused up front, before any work: an architecture, a head size or a setting the builder cannot do."""
    from compressor.architectures import adapter_for_config

    arch = (getattr(config, "architectures", None) or ["?"])[0]
    # a family transformers 5 added cannot go to the card's lane for Optimum: say that no exporter here writes it
    instead = (INSTEAD if adapter_for_config(config).since_transformers < 5 else
               f"no exporter here writes it (Optimum's needs transformers below 4.58, which has no "
               f"{config.model_type}); score, prune and verify work in PyTorch")
    if arch in WRONG:
        raise BadInput(f"ONNX Runtime GenAI's builder ({REQUIREMENT}) builds {arch} models, but {WRONG[arch]}",
                       instead)
    if family != "decoder" or arch not in SUPPORTED:
        later = BUILDS.get(arch) if arch not in SUPPORTED else None  # built by a newer builder than this lane's
        raise BadInput(f"ONNX Runtime GenAI's builder ({REQUIREMENT}) does not build {arch} models"
                       + (f" (onnxruntime-genai {'.'.join(map(str, later))}, the current lane's, does)" if later else ""),
                       f"{instead} (the builder builds {', '.join(SUPPORTED)})")
    check_precision(quantize)
    heads = int(getattr(config, "num_attention_heads", 1))
    head = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    if head % CPU_HEAD_MULTIPLE:  # also for CUDA: without a CUDA provider its parity runs on CPU
        raise BadInput(f"the model's attention head size is {head}; ONNX Runtime's GroupQueryAttention on CPU "
                       f"needs a multiple of {CPU_HEAD_MULTIPLE}", f"{INSTEAD} for this model")
    missing = [k for k in ("eos_token_id", "bos_token_id") if getattr(config, k, None) is None]
    if missing:
        raise BadInput(f"config.json has no {' or '.join(missing)}, which the builder's genai_config.json needs "
                       "(ONNX Runtime GenAI refuses a null one)", f"set {', '.join(missing)} in config.json")


@contextlib.contextmanager
def _output_to(log: Path) -> Iterator[None]:
    """Everything written to stdout/stderr (Python's and C's: the builder prints and draws progress
    bars) goes to ``log``; our own stdout stays data only."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("w", encoding="utf-8") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _run_builder(src: Path, dst: Path, scratch: Path, quantize: Optional[str], dtype: str = "float32",
                 device: str = "cpu", options: tuple[str, ...] = ()) -> list[str]:
    """The builder as a library (``create_model``), in this process: torch and transformers are already
    imported, which saves a new interpreter's start. Returns the equivalent command line (recorded)."""
    precision, extra = PRECISION[quantize] if quantize else (DTYPES[dtype], [])
    extra = [*extra, *options]
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(dst), "-p", precision,
           "-e", device, "-c", str(scratch / "cache")]
    if extra:
        cmd += ["--extra_options", *extra]
    log = scratch / "builder.log"
    try:
        with _output_to(log):
            from onnxruntime_genai.models import builder

            parsed = builder.parse_extra_options(None, str(src), str(dst), precision, device, str(scratch / "cache"),
                                                 extra)
            builder.create_model(None, str(src), str(dst), precision, device, str(scratch / "cache"), **parsed)
    except BadInput:
        raise  # the streamed reader's damaged or missing shard: the user's input, said as such
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the builder raises anything; its log is the detail
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise RuntimeFailure(f"ONNX Runtime GenAI's builder failed on {src}: {first}",
                             f"re-run with --debug; or {INSTEAD}") from exc
    return cmd


def check_streamable(config: PretrainedConfig, quantize: Optional[str]) -> None:
    """Refused before any weight is read: what the per-weight pass cannot write like the builder."""
    if quantize is not None and any("algo_config" in o for o in PRECISION[quantize][1]):
        raise BadInput(f"--quantize {quantize} runs the builder's k-quant pass over the whole graph, which the streamed "
                       "export does not reproduce", "use --quantize int4 or int8-weights with --stream, or drop --stream")
    if unties(config, quantize):
        raise BadInput(f"--quantize {quantize} of a model with tied embeddings is built from an untied copy of the "
                       "checkpoint, which the streamed export does not write", "drop --stream (or use --quantize int4)")


# a streamed artifact's bytes per weight: int4 measured at 0.91 on the 8 B shape (its fp32 input embedding
# included: docs/results/genai-stream.md); int8-weights bounded by 1 byte + scales + that embedding
STREAMED_BYTES_PER_WEIGHT = {None: 4.0, "int4": 1.0, "int8-weights": 1.5}


def streamed_disk(num_parameters: int, quantize: Optional[str]) -> int:
    """Disk a streamed export needs: the spool and the final data file, each about the artifact's size."""
    return int(2 * STREAMED_BYTES_PER_WEIGHT.get(quantize, 4.0) * num_parameters)


def unties(config: PretrainedConfig, quantize: Optional[str]) -> bool:
    """Whether the build reads an untied copy of the source: the pinned builder's int8 precision writes a tied
    LM head that references a 4-bit initializer it never writes (the graph does not load), so the head is
    stored apart from the input embeddings, with the same values, before the build."""
    return quantize == "int8-weights" and bool(getattr(config, "tie_word_embeddings", False))


def _untied_copy(model: PreTrainedModel, src: Path, dst: Path) -> Path:
    """``src`` with its LM head stored as its own tensor (equal to the input embeddings) and
    ``tie_word_embeddings: false``; the tokenizer and generation files are copied as they are."""
    from safetensors.torch import save_file

    from compressor.sources.integrity import INDEX

    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name not in (INDEX, "config.json"):
            shutil.copy2(f, dst / f.name)
    cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    cfg["tie_word_embeddings"] = False
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    head = model.get_output_embeddings()
    key = next(n for n, m in model.named_modules() if m is head) + ".weight"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != key}
    state[key] = head.weight.detach().clone().contiguous()
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


# texts the served tokenizer must encode as transformers does: words and spaces, code with indentation and
# newlines, accents, a symbol outside Latin-1 and an emoji (byte-level pieces)
TOKENIZER_PROBES = ("The capital of France is Paris.", "def f(x):\n    return x  # two spaces\n",
                    "Café au lait, naïve déjà vu – 5 €", "emoji 🙂 and CJK 中文")


SERVED_TOKENIZER = "served tokenizer (onnxruntime-genai) reads text as the source's"
# what onnxruntime-genai's tokenizer reads from a folder: the check's result is keyed on their content
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "genai_config.json")


def tokenizer_files_digest(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        f = folder / name
        h.update(name.encode() + (b"\0" + f.read_bytes() if f.is_file() else b"\1"))
    return h.hexdigest()


def served_tokenizer(folder: Path, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """Whether ONNX Runtime GenAI's own tokenizer, as it reads ``folder`` (what an edge team serves with),
    reads text as ``tokenizer`` (transformers', which the gate feeds) does. A check record, as
    ``structural_checks`` gives them: failed when it reads garbage (an id that is no token, or a decoded text
    that differs); passed with a ``warning`` when it reads the same text as other tokens (onnxruntime-genai
    0.15.2 splits a newline followed by spaces apart where transformers' byte-level regex keeps them
    together: the served model then sees token splits the gate did not measure). Special tokens are left
    out: transformers' template may add a BOS the runtime's encoder does not (said in the detail)."""
    import onnxruntime_genai as og

    name = SERVED_TOKENIZER
    fix = "save the tokenizer the model was trained with next to it and export again"
    try:
        config = og.Config(str(folder))
        config.clear_providers()  # the tokenizer is the same on every provider; a CUDA graph loads on the CPU too
        served = og.Tokenizer(og.Model(config))
    except Exception as exc:  # noqa: BLE001 - whatever the runtime says is the detail
        return {"name": name, "passed": False, "fix": fix,
                "detail": f"onnxruntime-genai cannot load it: {str(exc).splitlines()[0]}"}
    vocab = len(tokenizer)
    split: list[str] = []
    for text in TOKENIZER_PROBES:
        want = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        got = [int(i) for i in served.encode(text)]
        if any(not 0 <= i < vocab for i in got) or served.decode(got) != tokenizer.decode(want):
            return {"name": name, "passed": False, "fix": fix,
                    "detail": f"it encodes {text!r} as {got[:8]}... (decoded: {served.decode(got)[:40]!r}) where the "
                              f"source tokenizer gives {want[:8]}..."}
        if served.decode(want) != tokenizer.decode(want):
            return {"name": name, "passed": False, "fix": fix, "detail": f"it decodes {text!r} as {served.decode(want)!r}"}
        if got != want:
            split.append(f"{text!r}: {got[:10]} vs {want[:10]}")
    ids = tokenizer("x")["input_ids"]
    bos = "" if not ids or ids[0] != tokenizer.bos_token_id else \
        f"; transformers adds {tokenizer.bos_token} at the start, onnxruntime-genai's encode does not"
    record: dict[str, Any] = {"name": name, "passed": True, "files": tokenizer_files_digest(folder),
                              "detail": f"{len(TOKENIZER_PROBES) - len(split)} of {len(TOKENIZER_PROBES)} texts give "
                                        f"the same ids, all decode alike{bos}"}
    if split:
        record["warning"] = (f"onnxruntime-genai's tokenizer splits {len(split)} of {len(TOKENIZER_PROBES)} probe texts "
                             f"into other tokens than transformers' (same text; e.g. {split[0]}): the served model "
                             "reads such text as token splits the gate did not measure")
    return record


def check_served_tokenizer(folder: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse (exit 3) a GenAI folder whose served tokenizer reads text differently from the source's: its
    gate (which feeds transformers' ids) would pass an artifact that serves garbage. The export's passed check
    is reused when the tokenizer files are the ones it checked (the runtime's tokenizer needs the whole model
    loaded: a second copy of the weights beside the gate's session)."""
    from compressor.export.layout import read_record

    digest = tokenizer_files_digest(folder)
    if any(c.get("name") == SERVED_TOKENIZER and c.get("passed") and c.get("files") == digest
           for c in read_record(folder).get("structural_checks") or [] if isinstance(c, dict)):
        return
    check = served_tokenizer(folder, tokenizer)
    if not check["passed"]:
        raise RuntimeFailure(f"{folder}: ONNX Runtime GenAI's tokenizer does not read text as the source tokenizer "
                             f"does ({check['detail']}), so the served model would read garbage",
                             "save the tokenizer the model was trained with next to it and export again")


def structural_checks(folder: Path, num_layers: int, quantize: Optional[str],
                      kv_layers: Optional[int] = None) -> list[dict[str, Any]]:
    """What a quantized graph must show without running: the fused attention per KV-cache layer (``kv_layers``:
    a hybrid's convolution or linear-attention blocks have none), 4-bit weights."""
    import onnx

    from compressor.export.layout import ONNX_FILE

    ops: dict[str, int] = {}
    for node in onnx.load(str(folder / ONNX_FILE), load_external_data=False).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    attn = num_layers if kv_layers is None else kv_layers
    checks = [{"name": "GroupQueryAttention per layer", "passed": ops.get("GroupQueryAttention", 0) == attn,
               "detail": f"{ops.get('GroupQueryAttention', 0)} for {attn} attention layers"
                         + (f" (of {num_layers})" if attn != num_layers else "")}]
    if quantize:
        checks.append({"name": f"{PRECISION[quantize][0]} weights", "passed": ops.get("MatMulNBits", 0) >= num_layers,
                       "detail": f"{ops.get('MatMulNBits', 0)} MatMulNBits nodes"})
    return checks


def _recorded(cmd: list[str]) -> list[str]:
    """The builder command without this machine's paths (interpreter, source, staging and cache folders)."""
    out, hide = ["python"], {"-i": "SRC", "-o": "OUT", "-c": "CACHE"}
    args = cmd[1:]
    for i, a in enumerate(args):
        out.append(hide[args[i - 1]] if i and args[i - 1] in hide else a)
    return out


def _runs(folder: Path, provider: str = "cpu") -> dict[str, Any]:
    """The graph loads in ONNX Runtime and gives finite logits for a short prompt (a builder precision can
    write a graph that references a missing initializer: 0.15.2's int8 with tied embeddings does)."""
    import numpy as np

    from compressor.export.parity import cache_feed
    from compressor.export.runtime import RuntimeSetupError, make_session

    try:
        sess = make_session(str(folder / "model.onnx"), provider).session
        feed = cache_feed(sess, genai_kv_shape(folder))(np.array([[1, 2, 3, 4]], np.int64), np.ones((1, 4), np.int64),
                                                         None, None)
        logits = sess.run(["logits"], feed)[0]
        ok = bool(np.isfinite(logits).all())
        return {"name": "runs in ONNX Runtime", "passed": ok, "detail": "finite logits for a 4-token prompt" if ok
                else "NaN/inf logits for a 4-token prompt"}
    except (RuntimeSetupError, Exception) as exc:  # noqa: BLE001 - whatever ONNX Runtime says is the detail
        first = (getattr(exc, "problem", None) or str(exc)).splitlines()[0]
        return {"name": "runs in ONNX Runtime", "passed": False, "detail": first[:300]}


def export_genai(model: str, out: str | Path, *, quantize: Optional[str] = None, dtype: str = "float32",
                 device: str = "cpu", force: bool = False, allow_pickle: bool = False, trust_remote_code: bool = False,
                 stream: bool = False, fuse_gate_up: bool = False, on_start: Optional[Callable[[str], None]] = None,
                 on_stage: Optional[Callable[[str, float], None]] = None) -> dict[str, Any]:
    """Build ``model`` (a folder or ``builtin:``) with the Model Builder into ``out``; returns ``export.json``.

    ``stream``: the same graph, written one block at a time from the safetensors shards
    (``compressor.export.genai_stream``); its fp32/fp16 parity runs the reference one block at a time too.

    fp32 and fp16 (``device="cuda"``: the CUDA provider's graph) are parity-checked against the fp32
    PyTorch model (``RuntimeFailure`` and nothing written if it does not hold); int4 is checked
    structurally. The folder also gets ``config.json``, so ``avss verify`` and ``avss bench`` take it
    like an Optimum export."""
    from compressor import __version__, library_versions
    from compressor.architectures import adapter_for_config, kv_layers
    from compressor.export import parity
    from compressor.export.layout import EXPORT_RECORD, check_onnx_files
    from compressor.export.runtime import RuntimeSetupError, check_runtime_install, cuda_in_build
    from compressor.files import check_free_space, check_output_dir, replace_dir, staging_dir
    from compressor.sources.models import load_config, load_model, resolve_model_path

    out = check_output_dir(out, force)
    version = builder_version()
    target = check_target(dtype, device, quantize)
    dtype = ALIASES.get(dtype, dtype)
    try:
        check_runtime_install()
    except RuntimeSetupError as exc:
        raise exc.as_avss_error() from exc
    provider = "cuda" if target == "cuda" and cuda_in_build() else "cpu"
    warnings = ([] if provider == target else
                ["the installed onnxruntime has no CUDA provider, so the fp16 graph built for CUDA was parity-checked "
                 "on ONNX Runtime's CPU provider (install onnxruntime-gpu to check it on CUDA)"])
    timings: dict[str, float] = {}
    peaks: dict[str, float] = {}  # GB: what each stage holds (the streamed writer's point is the build's)

    def timed(name: str, fn: Callable[[], _T]) -> _T:
        from compressor.export.peak_rss import PeakRSS

        if on_start:
            on_start(name)
        t0 = time.perf_counter()
        with PeakRSS(interval=0.05) as peak:
            res = fn()
        timings[name] = round(time.perf_counter() - t0, 3)
        peaks[name] = round(peak.peak / 1e9, 3)
        if on_stage:
            on_stage(name, timings[name])
        return res

    # what the builder cannot build is refused from the config alone, before any weights load
    path, is_local = resolve_model_path(model)
    config = load_config(path, trust_remote_code)
    check_supported(config, adapter_for_config(config).family, quantize, target)
    options = tuple(check_options(quantize, fuse_gate_up))
    if not is_local:
        raise BadInput(f"{model} is not a local folder; the builder reads a checkpoint folder",
                       "download it first (huggingface-cli download) and pass the folder")
    src = Path(path)
    if stream:
        check_streamable(config, quantize)
    loaded = timed("load", lambda: load_model(model, dtype="float32", allow_pickle=allow_pickle,
                                              trust_remote_code=trust_remote_code, stream=stream))
    tokenizer = loaded.tokenizer
    assert tokenizer is not None  # load_model reads it (with_tokenizer is its default)
    untie = unties(config, quantize)
    check_free_space(out, (2 + untie) * loaded.weight_bytes if not stream else streamed_disk(loaded.num_parameters, quantize),
                     f"the GenAI export {out}")
    num_layers = int(loaded.config.num_hidden_layers)
    kv = kv_layers(loaded.config)
    tmp = staging_dir(out)
    final, scratch = tmp / "final", tmp / "scratch"
    scratch.mkdir()
    if untie:
        warnings.append("the LM head was stored apart from the input embeddings (same values) before the build: the "
                        "pinned builder's int8 precision cannot write a tied one; the folder holds both matrices")
    try:
        build_src = _untied_copy(loaded.model, src, scratch / "untied") if untie else src
        from compressor.compat import builder_load_dtype
        from compressor.export.genai_stream import streaming_builder

        with streaming_builder(src, scratch, builder_load_dtype(config)) if stream else contextlib.nullcontext():
            cmd = timed("build", lambda: _run_builder(build_src, final, scratch, quantize, dtype, target, options))
        for name in ("config.json", "generation_config.json"):
            if (src / name).is_file():
                shutil.copy2(src / name, final / name)
        check_onnx_files(final / "model.onnx")
        checks = timed("checks", lambda: structural_checks(final, num_layers, quantize, kv) + [
            _runs(final, provider), served_tokenizer(final, tokenizer)])
        report = None
        if quantize is None:
            if stream:
                report = timed("parity", lambda: parity.check_genai_parity_streamed(
                    src, final, num_layers=num_layers, kv_layers=kv, dtype=dtype, provider=provider))
            else:
                report = timed("parity", lambda: parity.check_genai_parity(loaded.model, final, num_layers=num_layers,
                                                                           kv_layers=kv, dtype=dtype, provider=provider))
            if report.reference_nonfinite:
                raise BadInput(f"{model} gives NaN/inf logits in PyTorch itself, so no export can match it",
                               "its weights are broken: check them; nothing was written")
            if not report.passed:
                raise RuntimeFailure(f"parity check failed: {report.summary()}",
                                     "the builder's graph does not compute what the PyTorch model computes for this "
                                     f"architecture; nothing was written ({INSTEAD})")
        warnings += [c["warning"] for c in checks if c.get("warning")]
        bad = [c for c in checks if not c["passed"]]
        if bad:
            raise RuntimeFailure(f"the builder's folder fails a check: {bad[0]['name']} ({bad[0]['detail']})",
                                 bad[0].get("fix", INSTEAD))
        files = {f.name: f.stat().st_size for f in sorted(final.iterdir()) if f.is_file()}
        record = {"schema_version": 1, "tool": "avss-compressor", "tool_version": __version__,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "exporter": {"name": "genai", "label": "onnx-genai", "package": f"onnxruntime-genai=={version}",
                               "command": _recorded(cmd),
                               "writer": ("streamed: the builder's graph code, weights read, quantized and written "
                                          "one block at a time by avss" if stream else "the builder")},
                  "source": {"spec": loaded.spec, "path": loaded.path}, "versions": library_versions(),
                  "task": "text-generation-with-past", "num_layers": num_layers, "target": target,
                  "dtype": dtype, "warnings": warnings, "quantization": ({"method": quantize, "settings": [*PRECISION[quantize][1], *options], "untied_head": untie}
                                                       if quantize else None),
                  "parity": report.to_dict() if report is not None else None, "structural_checks": checks,
                  "files": files, "timings": timings, "peak_rss_gb": peaks}
        (final / EXPORT_RECORD).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        replace_dir(final, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record
