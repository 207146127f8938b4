"""Resolve a model spec (built-in, local folder, Hub id) and load it safely.

Safety defaults follow the safetensors philosophy: no pickle unless ``allow_pickle``, no remote
code unless ``trust_remote_code``. The architecture is checked from the config *before* weights load,
so an unsupported model fails in a second, not after a download.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from compressor import diagnostics
from compressor.architectures import ArchAdapter, adapter_for_config, supported_model_types
from compressor.compat import transformers_version
from compressor.errors import BadInput, RuntimeFailure
from compressor.sources import builtins
from compressor.sources.memory import check_load_fits, check_stream_fits, stream_reason

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from compressor.sources.stream import LayerStream

_PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt", "model*.bin")


@dataclass
class LoadedModel:
    spec: str  # what the user typed
    path: str  # local folder or Hub id that transformers loaded
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None  # None when loaded ``with_tokenizer=False``
    adapter: ArchAdapter
    device: str  # "cpu", "cuda", or "auto-map" for accelerate device maps
    dtype: str
    # set when the weights stay in the shards and blocks are read one at a time (``--stream``): then
    # ``model`` is a meta-device skeleton with only the body outside the blocks loaded
    stream: LayerStream | None = None

    @property
    def streamed(self) -> bool:
        return self.stream is not None

    @property
    def config(self) -> PretrainedConfig:
        return self.model.config

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def num_parameters(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters()))

    @property
    def weight_bytes(self) -> int:
        """The checkpoint's size in its load dtype (what one saved copy needs on disk)."""
        return int(sum(p.numel() * p.element_size() for p in self.model.parameters()))


def quiet_transformers() -> None:
    """transformers' info/warning chatter would drown our one-line diagnostics on stderr."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when it really works; an explicit ``cuda`` never silently becomes CPU."""
    import torch

    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise BadInput(f"unknown device {device!r}", "use --device cpu, cuda, cuda:N or auto")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput("--device cuda was requested but CUDA is not available here", "use --device cpu (or auto)")
    return device


_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "float32" if device == "cpu" else "bfloat16"
    if dtype not in _DTYPES:
        raise BadInput(f"unknown dtype {dtype!r}", "use --dtype auto, float32, float16 or bfloat16")
    return _DTYPES[dtype]


def resolve_model_path(spec: str) -> tuple[str, bool]:
    """Return (path-or-hub-id, is_local)."""
    if builtins.is_builtin(spec):
        return str(builtins.resolve_builtin_model(spec)), True
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir():
            raise BadInput(f"{spec} is a file, not a model folder", "pass the folder that holds config.json")
        if not (p / "config.json").exists():
            raise BadInput(f"{spec} has no config.json", "pass a Hugging Face model folder (save_pretrained output)")
        return str(p), True
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep == "\\" and "\\" in spec:
        raise BadInput(f"model folder {spec} does not exist", "check the path, or use builtin:smollm2-135m")
    return spec, False


def check_weights_safety(path: str, is_local: bool, allow_pickle: bool) -> None:
    if not is_local or allow_pickle:
        return
    p = Path(path)
    if any(p.glob("*.safetensors")):
        return
    pickles = [f.name for pat in _PICKLE_PATTERNS for f in p.glob(pat)]
    if pickles:
        raise BadInput(
            f"{path} holds only pickle weights ({pickles[0]}), which can run arbitrary code when loaded",
            "convert them to safetensors, or pass --allow-pickle if you trust the source",
        )
    raise BadInput(f"{path} has no weight files (*.safetensors)", "pass a folder written by save_pretrained")


def weights_fix(path: str | Path) -> str:
    """What to do about a damaged model folder: a built-in model is converted again once deleted."""
    from compressor.sources.cache import cache_location

    if Path(path).resolve().is_relative_to((cache_location()[0] / "models").resolve()):
        return f"delete {path} so avss converts the built-in model again"
    return "re-download or re-save the model (save_pretrained)"


def load_config(path: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The model's config, checked before anything is built from it (``sources.configs``): its counts are
    whole numbers, its per-layer lists have one entry per layer and, for a local folder with safetensors
    weights, it agrees with them (whose headers ``Checkpoint.open`` checks on the way)."""
    from transformers import AutoConfig

    from compressor.sources.configs import check_config_against_weights, check_config_json

    folder = Path(path)
    local = folder.is_dir()
    if local:
        check_config_json(folder)
    try:
        config: PretrainedConfig = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        msg = str(exc)
        if "trust_remote_code" in msg:
            raise BadInput(f"{path} needs custom code to load", "pass --trust-remote-code if you trust it") from exc
        if "does not recognize this architecture" in msg:  # a model type this transformers does not have
            from compressor.architectures import since_transformers
            from compressor.compat import unknown_model_type_fix

            kind = getattr(exc, "args", [""])[0].split("model type `")[-1].split("`")[0]
            if since_transformers(kind) > int(transformers_version().split(".")[0]):  # a family we cut, in the next lane
                raise BadInput(f"{path} is a {kind} model, which needs transformers >= {since_transformers(kind)} "
                               f"(this lane has {transformers_version()})",
                               "use the current lane (make install LANE=current)") from exc
            raise BadInput(f"{path} is a {kind} model, which transformers {transformers_version()} does not know",
                           unknown_model_type_fix()) from exc
        raise BadInput(f"cannot read the config of {path}: {msg.splitlines()[0]}", "check the model folder or Hub id") from exc
    except TypeError as exc:  # a field of a type the config class cannot take
        raise BadInput(f"cannot read the config of {path}: {str(exc).splitlines()[0]}",
                       "fix config.json (or re-save the model with save_pretrained)") from exc
    except OSError as exc:
        raise BadInput(
            f"cannot load model {path!r}: {str(exc).splitlines()[0]}",
            "pass a local model folder, a builtin: model, or a Hub id on a machine with network access",
        ) from exc
    if local and getattr(config, "model_type", None) in supported_model_types():
        from compressor.sources.integrity import check_safetensors

        check_config_against_weights(config, adapter_for_config(config), folder, check_safetensors(folder,
                                                                                                  weights_fix(path)))
    return config


def model_class_for(config: PretrainedConfig, family: str) -> Any:
    """Keep the checkpoint's own head (``architectures[0]``) so the pruned model is the same kind.

    A class this transformers does not have is refused: loading it as a bare ``AutoModel`` would
    silently drop the head. Without ``architectures`` (rare; some hand-made configs) a decoder loads
    as ``AutoModelForCausalLM`` and an encoder as its bare ``AutoModel``, as documented.
    """
    import transformers

    names = getattr(config, "architectures", None) or []
    if names:
        cls = getattr(transformers, names[0], None)
        if cls is None:
            raise BadInput(f"the config names the model class {names[0]!r}, which transformers "
                           f"{transformers.__version__} does not have (loading it without its head would "
                           "give a different model)", "fix `architectures` in config.json to the transformers class "
                           "of its model type (e.g. LlamaForCausalLM)")
        return cls
    return transformers.AutoModelForCausalLM if family == "decoder" else transformers.AutoModel


def _first(names: list[str], n: int = 3) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _checkpoint_shapes(path: str, keys: list[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of ``keys`` as stored in a local folder's safetensors files (headers only; no tensor is read)."""
    from compressor.sources.integrity import check_safetensors

    checkpoint = check_safetensors(path) if Path(path).is_dir() else None
    return {k: checkpoint.tensors[k].shape for k in keys if k in checkpoint.tensors} if checkpoint else {}


def check_loading_info(path: str, model: PreTrainedModel, info: dict[str, Any]) -> None:
    """Refuse a model whose weights do not fill it exactly.

    transformers fills a missing tensor with random values and drops an unused one with only a
    warning (which we silence): a config.json whose ``num_hidden_layers`` disagrees with the weights
    would otherwise load as a different, silently wrong model. Tied weights (lm_head with
    ``tie_word_embeddings``) are not reported missing by transformers.
    """
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    mismatched = sorted(k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys") or [])
    errors = [str(e).splitlines()[0] for e in info.get("error_msgs") or []]
    fix = ("make config.json match the weights (e.g. num_hidden_layers, hidden sizes, vocab_size), "
           "or re-save the model with save_pretrained")
    if mismatched:
        stored = _checkpoint_shapes(path, mismatched)
        model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k in set(mismatched)}

        def shape(k: str) -> str:
            got = stored.get(k)
            return f"{k} {list(got) if got else '?'} in the weights vs {list(model_shapes.get(k, ()))} from config.json"

        raise BadInput(f"{path}: {len(mismatched)} tensor(s) of the weights do not have the shape its config.json "
                       f"gives ({_first([shape(k) for k in mismatched], 2)})", fix)
    if missing:
        raise BadInput(f"{path}: {len(missing)} tensor(s) the model needs are missing from its weights and would "
                       f"be random ({_first(missing)})", fix)
    if unexpected:
        raise BadInput(f"{path}: {len(unexpected)} tensor(s) in its weights are not part of the model its "
                       f"config.json describes and would be dropped ({_first(unexpected)})", fix)
    if errors:
        raise BadInput(f"{path}: its weights did not load cleanly ({_first(errors, 1)})", fix)


def embedding_rows(model: PreTrainedModel) -> int:
    emb = model.get_input_embeddings()
    return getattr(emb, "num_embeddings", None) or int(cast("torch.Tensor", emb.weight).shape[0])


def check_vocabulary(path: str, rows: int, tokenizer: PreTrainedTokenizerBase) -> None:
    """Token ids past the input embeddings' ``rows`` would index out of range (or, on some kernels, read
    garbage); a larger embedding matrix than the tokenizer is ordinary padding (e.g. to a multiple of 64)."""
    n_tok = len(tokenizer)
    if rows < n_tok:
        raise BadInput(f"{path}: its input embeddings have {rows} rows but its tokenizer has {n_tok} tokens "
                       f"(ids {rows}..{n_tok - 1} have no embedding)",
                       "save the tokenizer the model was trained with next to it, or resize the embeddings "
                       "(model.resize_token_embeddings(len(tokenizer))) and fine-tune")


def load_model(
    spec: str,
    *,
    device: str = "cpu",
    dtype: str = "auto",
    device_map: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    with_tokenizer: bool = True,
    announce: bool = False,
    stream: bool | None = False,
    with_head: bool = False,
    max_memory: int | None = None,
    offload_folder: str | None = None,
    copies: int = 1,
) -> LoadedModel:
    """Load a supported model in eval mode with its tokenizer. ``announce``: say what is loading and
    what loaded on the ``avss`` logger (a load can take minutes; the commands show it). ``stream``:
    load only the skeleton, the body outside the blocks (and the LM head with ``with_head``); blocks are
    read one at a time by the passes that stream (``compressor.sources.stream``); None: stream when the
    whole model would not fit. ``max_memory``: bytes the load may use (default: what is free now); a load
    that cannot fit is refused before it starts. With ``device_map="auto"`` (accelerate) ``max_memory``
    caps each device instead, and ``offload_folder`` takes the weights that fit on none (lm-eval's HFLM
    ``max_memory_per_gpu`` / ``max_cpu_memory`` / ``offload_folder``). ``copies``: how many copies of the
    weights the caller's work holds in memory (an in-memory repair: 2), for the fit check and the choice
    to stream."""
    if announce:
        diagnostics.note(f"loading {spec}{' (streamed: one block at a time)' if stream else ''} ...")
        loaded = load_model(spec, device=device, dtype=dtype, device_map=device_map, allow_pickle=allow_pickle,
                            trust_remote_code=trust_remote_code, with_tokenizer=with_tokenizer, stream=stream,
                            with_head=with_head, max_memory=max_memory, offload_folder=offload_folder,
                            copies=copies)
        diagnostics.note(f"loaded {loaded.config.model_type} with {loaded.num_layers} layers on {loaded.device} "
                         f"({loaded.dtype}{', streamed' if loaded.streamed else ''})")
        return loaded
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_transformers()
    path, is_local = resolve_model_path(spec)
    config = load_config(path, trust_remote_code)
    adapter = adapter_for_config(config)
    check_weights_safety(path, is_local, allow_pickle)
    if is_local:  # a damaged file is bad input naming the file, not a deserializer's internal error
        from compressor.sources.integrity import check_safetensors

        check_safetensors(path, weights_fix(path))
    if device_map not in (None, "auto"):
        raise BadInput(f"unsupported --device-map {device_map!r}", "use --device-map auto or leave it out")
    if offload_folder is not None and device_map != "auto":
        raise BadInput("--offload-folder is where --device-map auto puts the weights that fit on no device",
                       "add --device-map auto, or drop --offload-folder (--stream reads blocks from the shards)")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    where = "auto-map" if device_map == "auto" else dev
    if stream is None:  # the caller's work can stream: do it when the whole model would not fit
        reason = stream_reason(path, adapter, dt, where, max_memory, copies)
        if reason:
            diagnostics.note(reason)
        stream = reason is not None
    if stream:
        check_stream_fits(path, adapter, dt, where, max_memory)
    else:
        check_load_fits(path, adapter, dt, where, max_memory, copies)
    cls = model_class_for(config, adapter.family)
    if stream:
        if device_map is not None:
            raise BadInput("--stream and --device-map auto are two ways to fit a large model; pick one",
                           "drop --device-map (one GPU or CPU, one block at a time) or pass --no-stream")
        if not is_local:
            raise BadInput(f"--stream reads the checkpoint's shards from disk, and {spec} is not a local folder",
                           "download it first (huggingface-cli download) and pass the folder")
        from compressor.sources.stream import build_stream

        layer_stream = build_stream(path, config, cls, adapter, dev, getattr(torch, dt), with_head=with_head)
        return LoadedModel(spec, path, layer_stream.model, _load_tokenizer(path, layer_stream.model, trust_remote_code)
                           if with_tokenizer else None, adapter, dev, dt, stream=layer_stream)
    kwargs: dict[str, Any] = dict(dtype=getattr(torch, dt), trust_remote_code=trust_remote_code)
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    if device_map == "auto":
        kwargs["device_map"] = "auto"
        if max_memory is not None:
            kwargs["max_memory"] = _per_device(max_memory)
        if offload_folder is not None:
            kwargs["offload_folder"] = offload_folder
    # ignore_mismatched_sizes turns a shape mismatch into a named entry of the loading info (instead of
    # a RuntimeError naming only the module class); check_loading_info refuses it either way.
    kwargs.update(output_loading_info=True, ignore_mismatched_sizes=True)
    try:
        model, info = cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "safetensors" in first.lower() and not allow_pickle:
            raise BadInput(f"{path} has no safetensors weights ({first})", "pass --allow-pickle if you trust the source") from exc
        raise BadInput(f"cannot load model {path!r}: {first}", "check the folder or Hub id") from exc
    except Exception as exc:  # noqa: BLE001
        if type(exc).__name__ == "SafetensorError":  # e.g. a Hub snapshot damaged on disk (local ones are checked)
            raise BadInput(f"the weights of {path!r} are damaged ({str(exc).splitlines()[0]})",
                           "re-download or re-save the model") from exc
        raise RuntimeFailure(f"loading {path!r} failed: {exc}") from exc
    check_loading_info(path, model, info)
    if device_map != "auto":
        model.to(dev)
    model.eval()
    tokenizer = _load_tokenizer(path, model, trust_remote_code) if with_tokenizer else None
    return LoadedModel(spec, path, model, tokenizer, adapter, "auto-map" if device_map == "auto" else dev, dt)


def _load_tokenizer(path: str, model: PreTrainedModel, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001
        if "trust_remote_code" in str(exc):
            raise BadInput(f"the tokenizer of {path} needs custom code to load (its tokenizer_config.json "
                           "names a class by auto_map)", "pass --trust-remote-code if you trust it") from exc
        raise BadInput(f"{path} has no usable tokenizer ({str(exc).splitlines()[0]})",
                       "save the tokenizer next to the model (tokenizer.save_pretrained)") from exc
    check_vocabulary(path, embedding_rows(model), tokenizer)
    if tokenizer.pad_token is None:
        # Padding is masked out (robust statistics) or faithfully included (official); its id only
        # has to exist.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def _per_device(max_memory: int) -> dict[int | str, int]:
    """accelerate's ``max_memory``: the same cap on every GPU and on the CPU."""
    import torch

    caps: dict[int | str, int] = {i: max_memory for i in range(torch.cuda.device_count())}
    caps["cpu"] = max_memory
    return caps
