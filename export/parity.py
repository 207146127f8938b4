"""ONNX Runtime vs PyTorch on fresh inputs the exporter never saw.

Optimum's dummy inputs are batch 2 and sequence 16; a graph with a shape baked in, a broken KV cache
or mis-numbered layers can still match on those. So: batch 3, three different lengths, left padding
for decoders (how they serve batches), right padding for encoders; then the KV-cache interface
(2 x layers ``present.*`` outputs), one decode step with past against the no-cache forward, and
8 greedy tokens. Every check records its max abs diff and the tolerance it used.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt
    import torch
    from onnxruntime import InferenceSession
    from transformers import GenerationMixin, PreTrainedModel
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    Ids = npt.NDArray[np.int64]
    Feed = dict[str, np.ndarray]  # ONNX Runtime's inputs or outputs by name
    # ``feed(ids, mask, positions, past outputs)``: a graph's inputs for one step
    FeedFn = Callable[[Ids, Ids, Ids, Feed | None], Feed]

BATCH_LENGTHS = (11, 7, 4)  # batch 3, never the exporter's (2, 16)
GENERATE_TOKENS = 8
SEED = 20241104
# |onnx - torch| <= atol + rtol * max|torch| on the compared logits
TOLERANCES = {"float32": (1e-4, 5e-5), "float16": (2e-2, 1e-2)}
REFERENCE_NONFINITE = "PyTorch itself produced NaN/inf"  # the weights are broken, not the export


@dataclass
class ParityCheck:
    name: str
    passed: bool
    max_abs_diff: float | None = None
    tolerance: float | None = None
    detail: str = ""


@dataclass
class ParityReport:
    provider: str
    dtype: str
    checks: list[ParityCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def reference_nonfinite(self) -> bool:
        """The PyTorch side was already NaN/inf: the source model's weights are broken, not the export."""
        return any(c.detail.startswith(REFERENCE_NONFINITE) for c in self.checks)

    @property
    def max_abs_diff(self) -> float:
        diffs = [c.max_abs_diff for c in self.checks if c.max_abs_diff is not None]
        return max(diffs) if diffs else 0.0

    def summary(self) -> str:
        bad = [c for c in self.checks if not c.passed] or self.checks
        return "; ".join(f"{c.name}: {c.detail}" for c in bad)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "provider": self.provider, "dtype": self.dtype,
                "max_abs_diff": self.max_abs_diff, "checks": [asdict(c) for c in self.checks]}


def _tol(dtype: str, ref_scale: float) -> float:
    atol, rtol = TOLERANCES[dtype]
    return atol + rtol * ref_scale


def _compare(name: str, ort_vals: npt.ArrayLike, ref: npt.ArrayLike, dtype: str) -> ParityCheck:
    import numpy as np

    ort_vals = np.asarray(ort_vals, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ort_vals.shape != ref.shape:
        return ParityCheck(name, False, None, None, f"shape {ort_vals.shape} != PyTorch {ref.shape}")
    if not np.isfinite(ref).all():
        return ParityCheck(name, False, None, None, f"{REFERENCE_NONFINITE} (the model's weights, not the export)")
    if not np.isfinite(ort_vals).all():
        return ParityCheck(name, False, None, None, "ONNX Runtime produced NaN/inf")
    diff = float(np.abs(ort_vals - ref).max()) if ref.size else 0.0
    tol = _tol(dtype, float(np.abs(ref).max()) if ref.size else 0.0)
    ok = diff <= tol
    return ParityCheck(name, ok, diff, tol, f"max abs diff {diff:.2e} {'<=' if ok else '>'} tolerance {tol:.2e}")


def _random_batch(vocab: int, lengths: tuple[int, ...], left: bool,
                  pad_id: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    import numpy as np

    rng = np.random.default_rng(SEED)
    S = max(lengths)
    ids = np.full((len(lengths), S), pad_id, dtype=np.int64)
    mask = np.zeros((len(lengths), S), dtype=np.int64)
    lo = min(5, vocab - 1)
    for b, n in enumerate(lengths):
        toks = rng.integers(lo, vocab, size=n)
        if left:
            ids[b, S - n:], mask[b, S - n:] = toks, 1
        else:
            ids[b, :n], mask[b, :n] = toks, 1
    return ids, mask


def _positions(mask: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    import numpy as np

    pos = np.cumsum(mask, axis=-1) - 1
    return np.where(mask == 0, 1, pos).astype(np.int64)  # what generate() uses for padded slots


def check_parity(model: PreTrainedModel, folder: str | Path, task: str, *, dtype: str, num_layers: int,
                 provider: str = "cpu") -> ParityReport:
    """Run every check; never raises for a mismatch (the report says what failed)."""
    from compressor.export.runtime import make_session

    sess = make_session(str(Path(folder) / "model.onnx"), provider)
    report = ParityReport(sess.provider, dtype)
    try:
        if task == "text-generation-with-past":
            _decoder_checks(model, sess.session, report, dtype, num_layers)
        else:
            _encoder_checks(model, sess.session, report, dtype, task)
    except Exception as exc:  # noqa: BLE001 - an ORT failure on new shapes IS a parity failure
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        report.checks.append(ParityCheck("run", False, None, None, f"ONNX Runtime failed on a new shape: {first[:300]}"))
    return report


def _torch_inputs(model: PreTrainedModel, **arrays: np.ndarray) -> dict[str, torch.Tensor]:
    import torch

    dev = next(model.parameters()).device
    return {k: torch.from_numpy(v).to(dev) for k, v in arrays.items()}


def _decoder_checks(model: PreTrainedModel, sess: InferenceSession, report: ParityReport, dtype: str,
                    num_layers: int) -> None:
    import numpy as np
    import torch

    from compressor.export.runtime import empty_past_shape

    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    presents = [n for n in outputs if n.startswith("present")]
    ok = len(presents) == 2 * num_layers
    report.checks.append(ParityCheck("kv-cache outputs", ok, None, None,
                                     f"{len(presents)} present.* outputs for {num_layers} layers (want {2 * num_layers})"))
    vocab = int(model.config.vocab_size)
    pad = model.config.pad_token_id
    pad = int(pad) if isinstance(pad, int) else 0
    ids, mask = _random_batch(vocab, BATCH_LENGTHS, left=True, pad_id=pad)
    pos = _positions(mask)
    fdt = np.float16 if dtype == "float16" else np.float32

    def feed(ids_: Ids, mask_: Ids, pos_: Ids, past: Feed | None) -> Feed:
        f: Feed = {"input_ids": ids_, "attention_mask": mask_}
        if "position_ids" in inputs:
            f["position_ids"] = pos_
        for name, inp in inputs.items():
            if name.startswith("past_key_values"):
                if past is None:
                    f[name] = np.zeros(empty_past_shape(inp.shape, ids_.shape[0]), fdt)
                else:
                    f[name] = past[name.replace("past_key_values", "present")]
        return f

    def run(f: Feed) -> Feed:
        vals = sess.run(None, f)
        return dict(zip(outputs, vals))

    # 1. prompt (empty past) vs PyTorch without cache, real tokens only
    res = run(feed(ids, mask, pos, None))
    with torch.no_grad():
        ref = model(**_torch_inputs(model, input_ids=ids, attention_mask=mask, position_ids=pos),
                    use_cache=False).logits.float().cpu().numpy()
    real = mask.astype(bool)
    report.checks.append(_compare("prompt logits (batch 3, left-padded, lengths 11/7/4)",
                                  res["logits"][real], ref[real], dtype))
    # 2. one decode step with past vs the no-cache forward of the extended sequence
    rng = np.random.default_rng(SEED + 1)
    nxt = rng.integers(min(5, vocab - 1), vocab, size=(ids.shape[0], 1)).astype(np.int64)
    mask2 = np.concatenate([mask, np.ones_like(nxt)], axis=1)
    pos2 = _positions(mask2)
    step = run(feed(nxt, mask2, pos2[:, -1:], res))
    ids2 = np.concatenate([ids, nxt], axis=1)
    with torch.no_grad():
        ref2 = model(**_torch_inputs(model, input_ids=ids2, attention_mask=mask2, position_ids=pos2),
                     use_cache=False).logits[:, -1].float().cpu().numpy()
    report.checks.append(_compare("decode step with past vs no-cache forward", step["logits"][:, -1], ref2, dtype))
    # 3. greedy generation, ONNX Runtime loop with the KV cache vs transformers' generate()
    report.checks.append(_generation_check(model, run, feed, ids, mask, dtype))


def _generation_check(model: PreTrainedModel, run: Callable[[Feed], Feed], feed: FeedFn, ids: Ids, mask: Ids,
                      dtype: str) -> ParityCheck:
    """Same tokens, except where PyTorch itself has a near-tie (top-2 margin within tolerance)."""
    import copy

    import numpy as np
    import torch

    gc = copy.deepcopy(model.generation_config)
    assert gc is not None  # a causal LM has one (can_generate)
    gc.do_sample, gc.num_beams, gc.max_new_tokens, gc.min_new_tokens = False, 1, GENERATE_TOKENS, None
    gc.eos_token_id, gc.temperature, gc.top_p, gc.top_k = None, None, None, None
    gc.repetition_penalty, gc.forced_eos_token_id = None, None
    gc.pad_token_id = model.config.pad_token_id if isinstance(model.config.pad_token_id, int) else 0
    decoder = cast("GenerationMixin", model)  # each causal LM class mixes generate() in; PreTrainedModel does not
    with torch.no_grad():
        inputs = _torch_inputs(model, input_ids=ids, attention_mask=mask)
        gen = cast("GenerateDecoderOnlyOutput",  # greedy with return_dict_in_generate
                   decoder.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                    generation_config=gc, output_scores=True, return_dict_in_generate=True))
    assert gen.scores is not None  # output_scores=True
    ref_tokens = gen.sequences[:, ids.shape[1]:].cpu().numpy()
    scores = [s.float().cpu().numpy() for s in gen.scores]
    toks = []
    cur_ids, cur_mask, past = ids, mask, None
    for _ in range(GENERATE_TOKENS):
        pos = _positions(cur_mask)
        res = run(feed(cur_ids, cur_mask, pos if past is None else pos[:, -1:], past))
        nxt = res["logits"][:, -1].argmax(-1).astype(np.int64)[:, None]
        toks.append(nxt[:, 0])
        past = res
        cur_ids = nxt
        cur_mask = np.concatenate([cur_mask, np.ones_like(nxt)], axis=1)
    ort_tokens = np.stack(toks, axis=1)
    if ref_tokens.shape != ort_tokens.shape:
        return ParityCheck("greedy generation (8 tokens)", False, None, None,
                           f"PyTorch made {ref_tokens.shape[1]} tokens, ONNX Runtime {ort_tokens.shape[1]}")
    diverged = np.argwhere(ref_tokens != ort_tokens)
    if not len(diverged):
        return ParityCheck("greedy generation (8 tokens)", True, None, None,
                           f"identical tokens for {ort_tokens.size} generated positions")
    # the first divergence per row decides; after it the two continuations legitimately differ
    for b in sorted(set(int(r) for r in diverged[:, 0])):
        t = int(diverged[diverged[:, 0] == b][:, 1].min())
        logits = scores[t][b]
        margin = float(logits[ref_tokens[b, t]] - logits[ort_tokens[b, t]])
        tol = _tol(dtype, float(np.abs(logits).max()))
        if margin > tol:
            return ParityCheck("greedy generation (8 tokens)", False, margin, tol,
                               f"row {b} step {t}: ONNX Runtime picked token {ort_tokens[b, t]}, PyTorch "
                               f"{ref_tokens[b, t]} with a logit margin {margin:.2e} > tolerance {tol:.2e}")
    return ParityCheck("greedy generation (8 tokens)", True, None, None,
                       "tokens equal up to near-ties (PyTorch's top-2 margin within tolerance)")


def _encoder_checks(model: PreTrainedModel, sess: InferenceSession, report: ParityReport, dtype: str,
                    task: str) -> None:
    import numpy as np
    import torch

    inputs = {i.name for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    vocab = int(model.config.vocab_size)
    pad = model.config.pad_token_id
    pad = int(pad) if isinstance(pad, int) else 0
    ids, mask = _random_batch(vocab, BATCH_LENGTHS, left=False, pad_id=pad)
    f = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in inputs:
        f["token_type_ids"] = np.zeros_like(ids)
    vals = dict(zip(outputs, sess.run(None, f)))
    with torch.no_grad():
        out = model(**_torch_inputs(model, **f))
    if task == "text-classification":
        report.checks.append(_compare("logits (batch 3, right-padded, lengths 11/7/4)", vals["logits"],
                                      out.logits.float().cpu().numpy(), dtype))
    else:
        real = mask.astype(bool)
        report.checks.append(_compare("last_hidden_state (batch 3, right-padded, real tokens)",
                                      vals["last_hidden_state"][real],
                                      out.last_hidden_state.float().cpu().numpy()[real], dtype))


def check_genai_parity(model: PreTrainedModel, folder: str | Path, *, num_layers: int, kv_layers: int | None = None,
                       dtype: str = "float32", provider: str = "cpu") -> ParityReport:
    """The Model Builder's fp32 (or fp16) graph against the fp32 PyTorch model, at ``dtype``'s tolerance (``compressor.export.genai``): a right-padded batch
    (GroupQueryAttention reads positions from the mask's sum: exact with right padding, wrong with left),
    then for each sequence alone a decode step on the KV cache and greedy tokens. Never raises for a
    mismatch. ``kv_layers``: the blocks with a KV cache (a hybrid's others carry a fixed-size state instead)."""
    from compressor.export.layout import genai_kv_shape
    from compressor.export.runtime import make_session

    sess = make_session(str(Path(folder) / "model.onnx"), provider)
    report = ParityReport(sess.provider, dtype)
    try:
        report.checks.append(cache_inputs_check(sess.session, num_layers, kv_layers))
        _genai_checks(model, sess.session, report, genai_kv_shape(folder), dtype)
    except Exception as exc:  # noqa: BLE001 - an ORT failure on new shapes IS a parity failure
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        report.checks.append(ParityCheck("run", False, None, None, f"ONNX Runtime failed on a new shape: {first[:300]}"))
    return report


def cache_inputs_check(sess: InferenceSession, num_layers: int, kv_layers: int | None = None) -> ParityCheck:
    """Two ``past_key_values.*`` inputs per KV-cache block, and one ``past.N.*`` state per other block of a hybrid."""
    from compressor.export.runtime import KV, STATE

    kv_layers = num_layers if kv_layers is None else kv_layers
    names = [i.name for i in sess.get_inputs()]
    kv, states = sum(n.startswith(KV) for n in names), sum(n.startswith(STATE) for n in names)
    ok = kv == 2 * kv_layers and states == num_layers - kv_layers
    detail = f"{kv} past_key_values.* inputs for {kv_layers} KV-cache layers"
    if states or kv_layers != num_layers:
        detail += f", {states} past.*.state inputs for {num_layers - kv_layers} state layers"
    return ParityCheck("kv-cache outputs", ok, None, None, detail)


def cache_feed(sess: InferenceSession,
               kv: tuple[int, int] | None) -> Callable[[Ids, Ids, Ids | None, Feed | None], Feed]:
    """``feed(ids, mask, pos, past)`` for a GenAI graph: empty caches and zero states first, then each
    input from the previous step's outputs (the builder's graph takes no position_ids)."""
    import numpy as np

    from compressor.export.runtime import empty_cache_shape, is_cache_input, present_of

    cache = [i for i in sess.get_inputs() if is_cache_input(i.name)]

    def feed(ids_: Ids, mask_: Ids, pos_: Ids | None, past: Feed | None) -> Feed:
        f: Feed = {"input_ids": ids_, "attention_mask": mask_}
        for i in cache:
            f[i.name] = (np.zeros(empty_cache_shape(i.name, i.shape, ids_.shape[0], kv),
                                  np.float16 if "float16" in i.type else np.float32)
                         if past is None else past[present_of(i.name)])
        return f

    return feed


def _genai_checks(model: PreTrainedModel, sess: InferenceSession, report: ParityReport, kv: tuple[int, int] | None,
                  dtype: str) -> None:
    import numpy as np
    import torch

    outputs = [o.name for o in sess.get_outputs()]
    feed = cache_feed(sess, kv)

    def run(f: Feed) -> Feed:
        return {k: (v.astype(np.float32) if k == "logits" else v) for k, v in zip(outputs, sess.run(None, f))}

    vocab = int(model.config.vocab_size)
    pad = model.config.pad_token_id
    ids, mask = _random_batch(vocab, BATCH_LENGTHS, left=False, pad_id=int(pad) if isinstance(pad, int) else 0)
    res = run(feed(ids, mask, None, None))
    with torch.no_grad():
        ref = model(**_torch_inputs(model, input_ids=ids, attention_mask=mask), use_cache=False).logits.float().cpu().numpy()
    real = mask.astype(bool)
    report.checks.append(_compare("prompt logits (batch 3, right-padded, lengths 11/7/4)",
                                  res["logits"][real], ref[real], dtype))
    rng = np.random.default_rng(SEED + 1)
    steps = []
    for b, n in enumerate(BATCH_LENGTHS):  # one decode step per sequence, alone (no padding in its cache)
        row, ones = ids[b:b + 1, :n], np.ones((1, n), np.int64)
        first = run(feed(row, ones, None, None))
        nxt = rng.integers(min(5, vocab - 1), vocab, size=(1, 1)).astype(np.int64)
        step = run(feed(nxt, np.ones((1, n + 1), np.int64), None, first))
        with torch.no_grad():
            ref2 = model(**_torch_inputs(model, input_ids=np.concatenate([row, nxt], axis=1)),
                         use_cache=False).logits[:, -1].float().cpu().numpy()
        steps.append(_compare("decode step with past vs no-cache forward (each sequence)", step["logits"][:, -1],
                              ref2, dtype))
    failing = [c for c in steps if not c.passed]
    report.checks.append(failing[0] if failing else max(steps, key=lambda c: c.max_abs_diff or 0.0))
    longest = int(np.argmax(BATCH_LENGTHS))
    report.checks.append(_generation_check(model, run, feed, ids[longest:longest + 1, :BATCH_LENGTHS[longest]],
                                           np.ones((1, BATCH_LENGTHS[longest]), np.int64), dtype))


def check_genai_parity_streamed(source: str | Path, folder: str | Path, *, num_layers: int, kv_layers: int | None = None,
                                dtype: str = "float32", provider: str = "cpu") -> ParityReport:
    """The streamed export's check: the graph's prompt logits on the right-padded batch against the fp32 model
    run one block at a time from ``source`` (the reference never holds the whole model). The decode-step and
    greedy checks of the in-memory path are left out: each is another pass over every block."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from compressor.architectures import adapter_for_config
    from compressor.export.layout import genai_kv_shape
    from compressor.export.runtime import make_session
    from compressor.sources.models import load_config
    from compressor.sources.stream import build_stream

    config = load_config(str(source), False)
    sess = make_session(str(Path(folder) / "model.onnx"), provider)
    report = ParityReport(sess.provider, dtype)
    report.checks.append(cache_inputs_check(sess.session, num_layers, kv_layers))
    pad = getattr(config, "pad_token_id", None)
    ids, mask = _random_batch(int(config.vocab_size), BATCH_LENGTHS, left=False, pad_id=pad if isinstance(pad, int) else 0)
    feed = cache_feed(sess.session, genai_kv_shape(folder))(ids, mask, None, None)
    try:
        got = sess.session.run(["logits"], feed)[0].astype(np.float32)
    except Exception as exc:  # noqa: BLE001 - an ORT failure on new shapes IS a parity failure
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        report.checks.append(ParityCheck("run", False, None, None, f"ONNX Runtime failed: {first[:300]}"))
        return report
    stream = build_stream(str(source), config, AutoModelForCausalLM, adapter_for_config(config), "cpu", torch.float32,
                          with_head=True)
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    with torch.inference_mode():
        ref = stream.logits(stream.final_states([batch])[0]).float().numpy()
    real = mask.astype(bool)
    report.checks.append(_compare("prompt logits (batch 3, right-padded, lengths 11/7/4; streamed reference)",
                                  got[real], ref[real], dtype))
    return report
