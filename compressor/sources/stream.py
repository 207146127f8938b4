"""Run a model one block at a time, its weights read from the safetensors shards just before the block
runs and freed after: memory is one block, the embeddings and the calibration activations, whatever
the depth (llm-compressor's sequential onloading, without its graph tracing).

How: the model is built on the ``meta`` device (no weights), then only the body outside the blocks
(embeddings, final norm) is read. A first pass through the body with every block replaced by a recorder
captures what the model's own forward hands each block (masks per attention type, rotary tables,
positions), so every architecture in the registry works with its own block modules. Then each block
is loaded, run on every calibration batch, and released.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, cast

from compressor.architectures import ArchAdapter, body_of, get_layers
from compressor.compat import stored_layout
from compressor.errors import BadInput
from compressor.sources.integrity import INDEX

if TYPE_CHECKING:  # pragma: no cover
    from io import FileIO

    import torch
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel

READ_CHUNK = 256 << 20  # source bytes converted at a time when a tensor is read at another dtype


class ShardReader:
    """One tensor at a time from a safetensors checkpoint (a single file or an index of shards), read
    with plain file reads at the offsets its header gives: a memory map would count every page read into
    the process until the file closes, so a block would be resident twice while it loads. The headers
    are checked first (``Checkpoint.open``: the same rule as every other reader)."""

    def __init__(self, folder: str | Path):
        from compressor.sources.integrity import SINGLE, Checkpoint

        self.folder = Path(folder)
        if not (self.folder / SINGLE).is_file() and not (self.folder / INDEX).is_file():
            raise BadInput(f"--stream reads safetensors shards, and {self.folder} has none",
                           "re-save the model with save_pretrained (safetensors), or drop --stream")
        self.checkpoint = Checkpoint.open(self.folder)

    def keys(self) -> set[str]:
        return set(self.checkpoint.tensors)

    def get_many(self, keys: list[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The tensors ``keys``, at ``dtype`` when given: a large one is converted chunk by chunk as it is read, so
        its stored and converted copies are never both whole in memory (an 8 B model's embedding: 1 GB bf16, 2.1 GB
        fp32)."""
        out = {}
        by_file: dict[Path, list[str]] = {}
        for k in keys:
            by_file.setdefault(self.checkpoint.tensors[k].file, []).append(k)
        for path, ks in by_file.items():
            try:
                fh = path.open("rb", buffering=0)
            except OSError as exc:  # gone or unreadable since its header was checked
                raise BadInput(f"{path} cannot be read ({exc.strerror or exc}); it held {ks[0]}",
                               "restore the checkpoint's files (re-download or re-save the model) and run again") from exc
            with fh:
                for k in ks:
                    out[k] = self._read(fh, path, k, dtype)
        return out

    def _read(self, fh: FileIO, path: Path, k: str, dtype: torch.dtype | None) -> torch.Tensor:
        import torch

        t = self.checkpoint.tensors[k]
        stored = t.dtype.torch()
        target = stored if dtype is None else dtype
        rows = t.shape[0] if t.shape else 1
        row_bytes = t.nbytes // rows if rows else 0
        step = rows if target == stored or not row_bytes else max(1, READ_CHUNK // row_bytes)
        result = None if step >= rows else torch.empty(t.shape, dtype=target)
        for r0 in range(0, rows, step):
            n = min(step, rows - r0)
            buf = bytearray(n * row_bytes if t.shape else t.nbytes)
            fh.seek(t.offset + r0 * row_bytes)
            view, got = memoryview(buf), 0
            while got < len(buf):  # one read returns at most ~2 GB on Linux
                got_now = fh.readinto(view[got:])
                if not got_now:
                    raise BadInput(f"{path} ends inside tensor {k}", "re-download or re-save the model")
                got += got_now
            shape = (n, *t.shape[1:]) if t.shape else t.shape
            chunk = (torch.frombuffer(buf, dtype=stored) if buf else torch.empty(0, dtype=stored)).reshape(shape)
            if result is None:
                return chunk if target == stored else chunk.to(target)
            result[r0:r0 + n].copy_(chunk)
        return result if result is not None else torch.empty(t.shape, dtype=target)  # no rows at all


@dataclass
class BlockCall:
    """What the model's forward handed one block for one batch, besides the hidden states."""
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class _Recorded(Exception):
    """Raised by the last block's recorder: the body's forward has nothing more to give."""


@dataclass
class LayerStream:
    """A meta-device model whose blocks are read from ``reader`` one at a time."""
    reader: ShardReader
    model: PreTrainedModel
    adapter: ArchAdapter
    device: str
    dtype: torch.dtype | None  # None: each tensor's stored dtype
    names: dict[str, str] = field(default_factory=dict)  # parameter name -> checkpoint key
    # parameter name -> (transformers' converter, its stored keys per source pattern): a tensor the checkpoint
    # stores in pieces (``compat.stored_layout``), put together as ``from_pretrained`` does
    converted: dict[str, tuple[Any, dict[str, list[str]]]] = field(default_factory=dict)
    layers_prefix: str = ""
    with_head: bool = False
    body_loaded: bool = False

    def load_body(self) -> None:
        """Read what runs outside the blocks (embeddings, final norm; the LM head with ``with_head``) on
        first use: a command that only cuts (prune from a scores file) never reads them."""
        if self.body_loaded:
            return
        model, adapter = self.model, self.adapter
        layers, body, head = get_layers(model, adapter), body_of(model, adapter), model.get_output_embeddings()
        body_name = next(name for name, m in model.named_modules() if m is body)
        layers_name = self.layers_prefix[:-1]
        for mod_name, module in model.named_modules():
            if module is layers or module is head or not mod_name.startswith(body_name) or module is body:
                continue
            if layers_name.startswith(f"{mod_name}.") or mod_name.startswith(f"{layers_name}."):
                continue  # holds the blocks, or is inside one
            self.load_params(f"{mod_name}.", module, recurse=False)
        if self.with_head and head is not None:
            head_name = next(name for name, m in model.named_modules() if m is head)
            # tied as from_pretrained ties it (build_stream refused an untied head without weights)
            if getattr(model.config, "tie_word_embeddings", False) or f"{head_name}.weight" not in self.names:
                head.weight = model.get_input_embeddings().weight  # tied: the head is the input embedding
            else:
                self.load_params(f"{head_name}.", head)
        self.body_loaded = True

    def key(self, name: str) -> str:
        """The checkpoint key of a model parameter (a checkpoint saved from the bare model lacks the body's prefix)."""
        return self.names[name]

    def layer_key(self, i: int, name: str) -> str:
        """The checkpoint key of parameter ``name`` (relative to the block) of block ``i``."""
        return self.key(f"{self.layers_prefix}{i}.{name}")

    def _set(self, module: nn.Module, name: str, value: torch.Tensor) -> None:
        import torch

        *path, leaf = name.split(".")
        for part in path:
            module = getattr(module, part)
        module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)

    def load_params(self, prefix: str, module: nn.Module, recurse: bool = True) -> None:
        todo = [name for name, p in module.named_parameters(recurse=recurse) if p.device.type == "meta"]
        plain = [name for name in todo if prefix + name not in self.converted]
        got = self.reader.get_many([self.key(prefix + name) for name in plain], dtype=self.dtype)
        for name in plain:
            t = got.pop(self.key(prefix + name))
            self._set(module, name, t.to(device=self.device))
        for name in todo:
            if prefix + name in self.converted:
                converter, sources = self.converted[prefix + name]
                pieces = self.reader.get_many([k for keys in sources.values() for k in keys], dtype=self.dtype)
                parts: dict[str, Any] = {pat: [pieces.pop(k) for k in keys] for pat, keys in sources.items()}
                for op in converter.operations:
                    parts = op.convert(parts, converter.source_patterns, converter.target_patterns)
                self._set(module, name, next(iter(parts.values())).to(device=self.device))

    def release(self, module: nn.Module) -> None:
        import torch

        for name, p in list(module.named_parameters()):
            self._set(module, name, torch.empty_like(p, device="meta"))
        _trim()

    @contextlib.contextmanager
    def block(self, i: int) -> Iterator[nn.Module]:
        """Block ``i`` with its weights loaded; released (back to ``meta``) on exit."""
        layer = get_layers(self.model, self.adapter)[i]
        try:
            self.load_params(f"{self.layers_prefix}{i}.", layer)
            yield layer
        finally:
            self.release(layer)

    def block_inputs(self, batches: list[dict[str, torch.Tensor]]) -> tuple[list[torch.Tensor], list[list[BlockCall]]]:
        """(hidden states entering block 0 per batch, calls[layer][batch]) from one pass of the body with
        every block replaced by a recorder: the masks, positions and rotary tables are the model's own."""
        import torch

        self.load_body()
        layers = get_layers(self.model, self.adapter)
        body = body_of(self.model, self.adapter)
        n = len(layers)
        calls: list[list[BlockCall]] = [[] for _ in range(n)]
        first: list[torch.Tensor] = []

        def recorder(i: int) -> Callable[..., tuple[torch.Tensor]]:
            def forward(hidden: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor]:
                if i == 0:
                    first.append(hidden)
                calls[i].append(BlockCall(args, kwargs))
                if i == n - 1:
                    raise _Recorded
                return (hidden,)  # every body reads output[0] or passes the tuple on, unread
            return forward

        for i, layer in enumerate(layers):
            layer.forward = recorder(i)
        try:
            with torch.inference_mode():
                for batch in batches:
                    kw: dict[str, torch.Tensor | bool] = {"input_ids": batch["input_ids"].to(self.device),
                                                          "attention_mask": batch["attention_mask"].to(self.device)}
                    if self.adapter.family == "decoder":
                        kw["use_cache"] = False
                    try:
                        body(**kw)
                    except _Recorded:
                        pass
        finally:
            for layer in layers:
                del layer.forward  # the instance attribute: the class's forward is back
        return first, calls

    def final_states(self, batches: list[dict[str, torch.Tensor]], progress: Callable[[int, int], None] | None = None
                     ) -> list[torch.Tensor]:
        """The hidden states leaving the last block, per batch: every block loaded once."""
        import torch

        hidden, calls = self.block_inputs(batches)
        n = len(calls)
        with torch.inference_mode():
            for i in range(n):
                with self.block(i) as block:
                    hidden = [self.run_block(block, h, calls[i][b]) for b, h in enumerate(hidden)]
                if progress:
                    progress(i + 1, n)
        return hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The causal LM's logits from the last block's output: final norm, head, and the soft cap
        some models put on their logits (as the model's own forward computes them)."""
        from compressor.architectures import final_norm_of

        self.load_body()
        head = self.model.get_output_embeddings()
        if head is None or head.weight.device.type == "meta":
            raise BadInput("this streamed model was loaded without its LM head", "load it with with_head=True")
        logits: torch.Tensor = head(final_norm_of(self.model, self.adapter)(hidden))
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap is not None:
            import torch

            logits = torch.tanh(logits / cap) * cap
        return logits

    def run_block(self, block: nn.Module, hidden: torch.Tensor, call: BlockCall) -> torch.Tensor:
        out = block(hidden, *call.args, **call.kwargs)
        state: torch.Tensor = out[0] if isinstance(out, (tuple, list)) else out
        return state


def _trim() -> None:
    """Give freed heap memory back to the system. glibc keeps freed blocks of a few MB in its heap, so a
    process that loads and frees a block's tensors again and again grows by tens of MB per block (measured:
    0.75 -> 1.09 GB over 6 TinyLlama blocks, flat at 0.76 GB with this); elsewhere it is a no-op."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, looked up once (``find_library`` runs ``ldconfig``: not once per block)."""
    import ctypes
    import ctypes.util

    try:
        return cast("Callable[[int], int]", ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim)
    except (OSError, AttributeError, TypeError):
        return None


def build_stream(path: str, config: PretrainedConfig, cls: Any, adapter: ArchAdapter, device: str,
                 dtype: torch.dtype | None, with_head: bool = False) -> LayerStream:
    """The meta model; the body outside the blocks (and the LM head when ``with_head``) is read on first
    use. Every key a block needs is checked now, so a damaged checkpoint fails before the first block."""
    from accelerate import init_empty_weights

    reader = ShardReader(path)
    with init_empty_weights(include_buffers=False):  # buffers (rotary tables) are computed, not stored
        model = (cls.from_config(config, dtype=dtype) if cls.__name__.startswith("Auto")
                 else cls._from_config(config, dtype=dtype))
    model.eval()
    body = body_of(model, adapter)
    layers = get_layers(model, adapter)
    body_name = next(name for name, m in model.named_modules() if m is body)
    body_prefix = f"{body_name}." if body_name else ""
    stored, pieced = stored_layout(model, reader.keys())
    names: dict[str, str] = {}
    converted: dict[str, tuple[Any, dict[str, list[str]]]] = {}
    missing, misshapen = [], []
    head = model.get_output_embeddings()
    head_params = {id(p) for p in head.parameters()} if head is not None else set()
    for name, p in model.named_parameters(remove_duplicate=False):
        bare = name[len(body_prefix):] if body_prefix and name.startswith(body_prefix) else None
        found = next((stored[c] for c in (name, bare) if c is not None and c in stored), None)
        pieces = next((pieced[c] for c in (name, bare) if c is not None and c in pieced), None)
        if found is not None:
            names[name] = found
            shape = reader.checkpoint.tensors[found].shape
            if shape != tuple(p.shape):  # the in-memory load refuses this too (check_loading_info)
                misshapen.append(f"{found} {list(shape)} in the weights vs {list(p.shape)} from config.json")
        elif pieces is not None and all(pieces[1].values()):
            converted[name] = pieces
            stored_numel = sum(reader.checkpoint.tensors[k].numel for ks in pieces[1].values() for k in ks)
            if stored_numel != p.numel():
                misshapen.append(f"{name} stored in {sum(map(len, pieces[1].values()))} pieces of {stored_numel} "
                                 f"values vs {list(p.shape)} from config.json")
        elif id(p) in head_params and not getattr(config, "tie_word_embeddings", False):
            missing.append(name)  # an untied head with no weights: never the input embedding in its place
        elif not name.startswith(body_prefix) or id(p) in head_params:
            continue  # the head: read only by ``with_head`` (tied to the embeddings when it has no key)
        else:
            missing.append(name)
    if misshapen:
        raise BadInput(f"{path}: {len(misshapen)} tensor(s) of the weights do not have the shape its config.json "
                       f"gives ({', '.join(misshapen[:2])}{' ...' if len(misshapen) > 2 else ''})",
                       "make config.json match the weights (e.g. hidden sizes, heads, vocab_size), or re-save the "
                       "model with save_pretrained")
    if missing:
        raise BadInput(f"{path} has no weights named {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
                       "(streaming reads each block's weights by name)",
                       "re-save the model with save_pretrained, or pass --no-stream")
    layers_name = next(name for name, m in model.named_modules() if m is layers)
    return LayerStream(reader, model, adapter, device, dtype, names, converted, f"{layers_name}.", with_head=with_head)
