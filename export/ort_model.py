"""An ONNX export as a model ``verify`` can evaluate: what ships is what is gated.

The task evaluators (``compressor.verify.kinds``) call a small part of a transformers model:
``model(input_ids=…, attention_mask=…, past_key_values=…, use_cache=…).logits``, a KV cache with
``batch_repeat_interleave`` / ``get_seq_length`` (shared few-shot and context prefixes), greedy
``generate`` and ``get_input_embeddings().weight.device``. ``OrtModelForCausalLM`` and
``OrtModelForSequenceClassification`` provide exactly that over one ONNX Runtime session made by
``compressor.export.runtime.make_session`` (the one place sessions are created, with its provider
rules: ``cuda`` never falls back). Positions follow transformers: ``past length + arange`` in a
forward pass (our batches are right-padded), ``cumsum(mask) - 1`` in ``generate`` (left-padded).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, cast

from compressor.errors import BadInput
from compressor.export import layout
from compressor.export.runtime import KV as PAST
from compressor.export.runtime import PRESENT

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

    from compressor.sources.models import LoadedModel

    from .runtime import Session  # relative: mypy reads export/ as the package ``export``

    # what ``generate`` calls each step: a logits processor (tokens so far, scores) -> scores, and a
    # stopping criterion (tokens so far, no scores) -> which rows are done
    LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    StopFn = Callable[[torch.Tensor, None], torch.Tensor | bool]


def is_onnx_export(path: str | Path) -> bool:
    """A folder written by ``avss export`` or ``optimum-cli export onnx`` (model.onnx + config.json)."""
    p = Path(path)
    return p.is_dir() and (p / layout.ONNX_FILE).is_file() and (p / "config.json").is_file()


@dataclass
class _Device:
    device: torch.device


class _Embeddings:
    """``compressor.architectures.input_device`` reads ``get_input_embeddings().weight.device``: where input tensors go (the CPU)."""

    def __init__(self) -> None:
        import torch

        self.weight = _Device(torch.device("cpu"))


class OrtCache:
    """The KV cache as ONNX Runtime returns it (``present.*`` arrays), with the two cache methods the
    evaluators use. Deep-copying copies the arrays."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def get_seq_length(self) -> int:
        """From a KV array (batch, heads, sequence, head size); a hybrid's state arrays have no sequence axis."""
        first = next(v for k, v in self.arrays.items() if k.endswith((".key", ".value")))
        return int(first.shape[2])

    def batch_repeat_interleave(self, n: int) -> None:
        import numpy as np

        self.arrays = {k: np.repeat(v, n, axis=0) for k, v in self.arrays.items()}

    def __deepcopy__(self, memo: dict[int, Any]) -> "OrtCache":
        return OrtCache({k: v.copy() for k, v in self.arrays.items()})


@dataclass
class _Output:
    logits: torch.Tensor
    past_key_values: OrtCache | None = None


class _OrtBase:
    def __init__(self, session: Session, config: PretrainedConfig):
        self.sess = session
        self.config = config
        self._inputs = {i.name: i for i in session.session.get_inputs()}
        self._outputs = [o.name for o in session.session.get_outputs()]
        self._emb = _Embeddings()

    def get_input_embeddings(self) -> _Embeddings:
        return self._emb

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def eval(self) -> "_OrtBase":
        return self

    @property
    def device(self) -> torch.device:
        """Where inputs go and outputs come back (ONNX Runtime copies to and from its provider)."""
        import torch

        return torch.device("cpu")

    def tie_weights(self) -> None:  # lm-evaluation-harness calls it on any model it wraps
        return None

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self.sess.session.run(None, feed)))

    def forward(self, *args: Any, **kwargs: Any) -> _Output:
        raise NotImplementedError  # each wrapper runs its own graph

    def __call__(self, *args: Any, **kwargs: Any) -> _Output:
        return self.forward(*args, **kwargs)  # lm-evaluation-harness passes input_ids positionally


class OrtModelForCausalLM(_OrtBase):
    """A decoder export with KV cache (``text-generation-with-past``)."""

    def __init__(self, session: Session, config: PretrainedConfig, kv_shape: tuple[int, int] | None = None,
                 right_padding_only: bool = False):
        super().__init__(session, config)
        # a GenAI (Model Builder) graph: its empty past's (kv heads, head size) from genai_config.json, and
        # GroupQueryAttention reads positions from the mask's sum, so left-padded rows must decode alone
        self._kv_shape, self._right_padding_only = kv_shape, right_padding_only
        from compressor.export.runtime import is_cache_input

        self._past_names = [n for n in self._inputs if is_cache_input(n)]
        if "logits" not in self._outputs or not any(n.startswith(PAST) for n in self._past_names):
            raise BadInput("the ONNX model has no logits output or no KV-cache inputs (past_key_values.*)",
                           "export it with `avss export` (task text-generation-with-past)")
        t = self._inputs[self._past_names[0]].type
        import numpy as np

        self._fdt = np.float16 if "float16" in t else np.float32

    def get_output_embeddings(self) -> bool:  # verify's kind check: a decoder with an LM head
        return True

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                past_key_values: OrtCache | None = None, use_cache: bool = False,
                position_ids: torch.Tensor | None = None, **_: Any) -> _Output:
        import numpy as np
        import torch

        from compressor.export.runtime import empty_cache_shape, present_of

        assert input_ids is not None  # every caller passes the tokens (None is transformers' signature only)
        ids = input_ids.cpu().numpy().astype(np.int64)
        b, n = ids.shape
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        mask = (np.ones((b, past_len + n), np.int64) if attention_mask is None
                else attention_mask.cpu().numpy().astype(np.int64))
        limit = getattr(self.config, "max_position_embeddings", None)
        if self._kv_shape is not None and isinstance(limit, int) and past_len + n > limit:
            # the builder's graph holds rotary tables for max_position_embeddings positions only: ONNX Runtime's
            # GroupQueryAttention fails past them ("cos_cache dimension 0 shall not be less than ...")
            raise BadInput(f"this GenAI graph holds {limit} positions (its rotary tables) and was given "
                           f"{past_len + n}", f"lower the profile's window / eval.max_length to at most {limit}")
        if self._right_padding_only and past_key_values is not None and past_len and n > 1 and (b > 1 or not mask.all()):
            return self._rows_on_past(ids, mask, past_key_values)
        feed: dict[str, np.ndarray] = {"input_ids": ids}
        if "attention_mask" in self._inputs:
            feed["attention_mask"] = mask
        if "position_ids" in self._inputs:
            pos = (position_ids.cpu().numpy().astype(np.int64) if position_ids is not None
                   else np.broadcast_to(np.arange(past_len, past_len + n, dtype=np.int64), (b, n)).copy())
            feed["position_ids"] = pos
        for name in self._past_names:
            if past_key_values is None:
                feed[name] = np.zeros(empty_cache_shape(name, self._inputs[name].shape, b, self._kv_shape), self._fdt)
            else:
                feed[name] = past_key_values.arrays[present_of(name)]
        res = self._run(feed)
        logits = torch.from_numpy(np.asarray(res["logits"], dtype=np.float32))
        cache = OrtCache({k: v for k, v in res.items() if k.startswith(PRESENT)}) if use_cache else None
        return _Output(logits, cache)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int | None = None, pad_token_id: int | None = None, eos_token_id: int | None = None,
                 do_sample: bool = False, num_beams: int = 1, max_length: int | None = None,
                 stopping_criteria: StopFn | None = None, logits_processor: Iterable[LogitsFn] | None = None,
                 **_: Any) -> torch.Tensor:
        """Greedy decoding as transformers' ``generate`` does it (finished rows continue with the pad id);
        ``max_length`` and ``stopping_criteria`` as lm-evaluation-harness passes them, ``logits_processor``
        as ``verify`` passes its NaN watch."""
        import torch

        if do_sample or num_beams != 1:
            raise BadInput("ONNX evaluation only decodes greedily", "use do_sample=False, num_beams=1")
        ids = input_ids.cpu()
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.cpu().long()
        if self._right_padding_only and (ids.shape[0] > 1 or not bool(mask.all())):
            return self._generate_rows(ids, mask, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id,
                                       eos_token_id=eos_token_id, max_length=max_length,
                                       stopping_criteria=stopping_criteria, logits_processor=logits_processor)
        if max_new_tokens is None:
            max_new_tokens = max((max_length or ids.shape[1] + 1) - ids.shape[1], 0)
        pad = pad_token_id if pad_token_id is not None else (eos_token_id or 0)
        done = torch.zeros(ids.shape[0], dtype=torch.bool)
        out = ids
        past = None
        step_ids = ids
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        for _step in range(max_new_tokens):
            res = self.forward(input_ids=step_ids, attention_mask=mask, past_key_values=past, use_cache=True,
                               position_ids=pos)
            scores = res.logits[:, -1]
            for proc in logits_processor or ():
                scores = proc(out, scores)
            nxt = scores.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            if eos_token_id is not None:
                done = done | (nxt == eos_token_id)
            if stopping_criteria is not None:
                stop = stopping_criteria(out, None)
                done = done | (stop if isinstance(stop, torch.Tensor) else torch.full_like(done, bool(stop)))
            if bool(done.all()):
                break
            past, step_ids = res.past_key_values, nxt[:, None]
            mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype)], dim=1)
            pos = pos[:, -1:] + 1
        return out


    def _rows_on_past(self, ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64], past: OrtCache) -> _Output:
        """Several new tokens on a past, GenAI graph: GroupQueryAttention takes them one sequence at a time
        and counts positions from the mask's sum, so each row runs alone on its real tokens. Logits of
        padded slots are 0 (never read); no cache comes back (the callers do not reuse it)."""
        import torch

        b, n = ids.shape
        past_len = past.get_seq_length()
        logits = None
        for j in range(b):
            real = int(mask[j, past_len:].sum())
            row_past = OrtCache({k: v[j:j + 1] for k, v in past.arrays.items()})
            out = self.forward(input_ids=torch.from_numpy(ids[j:j + 1, :real]),
                               attention_mask=torch.from_numpy(mask[j:j + 1, :past_len + real]),
                               past_key_values=row_past, use_cache=False)
            if logits is None:
                logits = torch.zeros((b, n, out.logits.shape[-1]), dtype=out.logits.dtype)
            logits[j, :real] = out.logits[0]
        assert logits is not None  # b >= 1: a call with several new tokens on a past
        return _Output(logits, None)

    def _generate_rows(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int | None,
                       pad_token_id: int | None, eos_token_id: int | None, **kw: Any) -> torch.Tensor:
        """Each (left-padded) row decoded alone without its padding, laid out as ``generate`` returns a
        batch: the padded prompts, then the new tokens (a row that stops early is filled with the pad id).
        A logits processor sees row 0 of each call, so it is wrapped to report the row it watches."""
        import torch

        procs = kw.pop("logits_processor", None) or []
        if max_new_tokens is None:
            max_new_tokens = max((kw.pop("max_length", None) or ids.shape[1] + 1) - ids.shape[1], 0)
        kw.pop("max_length", None)
        pad = pad_token_id if pad_token_id is not None else (eos_token_id or 0)
        rows = []
        for j in range(ids.shape[0]):
            real = ids[j][mask[j].bool()][None, :]
            row_procs = [_RowProcessor(p, j) for p in procs]
            out = self.generate(real, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id,
                                eos_token_id=eos_token_id, logits_processor=row_procs, **kw)
            rows.append(out[0, real.shape[1]:])
        width = max(len(r) for r in rows)
        new = torch.full((ids.shape[0], width), pad, dtype=ids.dtype)
        for j, r in enumerate(rows):
            new[j, :len(r)] = r
        return torch.cat([ids, new], dim=1)


class _RowProcessor:
    """A batch logits processor applied to one row decoded alone: it sees that row as row ``index``."""

    def __init__(self, inner: LogitsFn, index: int):
        self.inner, self.index = inner, index

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        n = self.index + 1
        wide = torch.zeros((n, scores.shape[-1]), dtype=scores.dtype)
        wide[self.index] = scores[0]
        return self.inner(input_ids.expand(n, -1), wide)[self.index:self.index + 1]


class OrtModelForSequenceClassification(_OrtBase):
    """An encoder classifier export (``text-classification``)."""

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **_: Any) -> _Output:
        import numpy as np
        import torch

        assert input_ids is not None  # every caller passes the tokens (None is transformers' signature only)
        feed = {"input_ids": input_ids.cpu().numpy().astype(np.int64)}
        if "attention_mask" in self._inputs:
            feed["attention_mask"] = (np.ones_like(feed["input_ids"]) if attention_mask is None
                                      else attention_mask.cpu().numpy().astype(np.int64))
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = (np.zeros_like(feed["input_ids"]) if token_type_ids is None
                                      else token_type_ids.cpu().numpy().astype(np.int64))
        res = self._run(feed)
        return _Output(torch.from_numpy(np.asarray(res["logits"], dtype=np.float32)))


def load_onnx_model(spec: str, *, provider: str = "cpu", trust_remote_code: bool = False) -> LoadedModel:
    """An export folder as a ``LoadedModel`` whose ``model`` runs in ONNX Runtime."""
    from compressor.architectures import adapter_for_config
    from compressor.export.runtime import RuntimeSetupError, make_session
    from compressor.sources.models import LoadedModel, check_vocabulary, load_config, quiet_transformers

    quiet_transformers()
    folder = Path(spec).expanduser()
    config = load_config(str(folder), trust_remote_code)
    adapter = adapter_for_config(config)
    layout.check_onnx_files(folder / layout.ONNX_FILE)  # a damaged file is bad input naming it
    try:
        sess = make_session(str(folder / layout.ONNX_FILE), provider)
    except RuntimeSetupError as exc:
        raise exc.as_avss_error() from exc
    if adapter.family == "decoder":
        from compressor.export.layout import genai_kv_shape, is_genai_folder

        genai = is_genai_folder(folder)
        model: _OrtBase = OrtModelForCausalLM(sess, config, kv_shape=genai_kv_shape(folder) if genai else None,
                                              right_padding_only=genai)
    else:
        model = OrtModelForSequenceClassification(sess, config)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001
        raise BadInput(f"{folder} has no usable tokenizer ({str(exc).splitlines()[0]})",
                       "export with `avss export`, which saves the tokenizer next to the model") from exc
    if adapter.family == "decoder" and genai:  # gated only if it is served as it reads text here
        from compressor.export.genai import check_served_tokenizer

        check_served_tokenizer(folder, tok)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    rows = getattr(config, "vocab_size", None)
    if isinstance(rows, int):
        check_vocabulary(str(folder), rows, tok)
    rec = layout.read_record(folder)
    # the exporter names its artifacts in the record it writes ("onnx", "onnx-genai"): shown as the model's dtype
    exporter = rec.get("exporter") or {}  # records older than "label" still name their exporter
    label = exporter.get("label") or (f"onnx-{exporter['name']}" if exporter.get("name") else "onnx")
    dtype = f"{label}-{(rec.get('quantization') or {}).get('method') or rec.get('dtype', 'float32')}"
    # the wrapper stands in for a transformers model: it has the part of one that ``verify`` calls (module doc)
    return LoadedModel(spec, str(folder), cast("PreTrainedModel", model), tok, adapter, f"onnx:{sess.provider}", dtype)

