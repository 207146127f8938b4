"""Flags shared by several commands, declared once."""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace
from typing import Annotated, Any, Callable, Optional, TypeVar, get_args, get_origin

import typer
from typer.models import ParameterInfo

from compressor.repair.methods import choices as repair_choices
from compressor.score.methods import SCORERS, last_state_scorers, names_text, option_scorers


def finite(flag: str) -> Callable[[Optional[float]], Optional[float]]:
    """A float option's check at parse time: NaN and inf are refused before the command does anything
    (click takes "nan" and "inf" as floats; a range check written ``x < 0`` lets NaN through)."""
    def check(value: Optional[float]) -> Optional[float]:
        if value is not None and not math.isfinite(value):
            from compressor.errors import BadInput

            raise BadInput(f"{flag} must be a finite number (got {value})", f"pass a number, e.g. {flag} 0.5")
        return value
    return check


Model = Annotated[str, typer.Argument(help="builtin:smollm2-135m, builtin:minilm-l6, a local model folder, or a Hub id.")]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto (cuda never falls back to cpu).")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto (fp32 on CPU, bf16 on CUDA), float32, float16, bfloat16.")]
Stream = Annotated[Optional[bool], typer.Option(
    "--stream/--no-stream",
    help="Run one block at a time, its weights read from the safetensors shards just before it runs (memory: one "
         "block + embeddings + activations; scores equal the in-memory ones). Default: only when the model would not "
         "fit in free memory (or --max-memory). Not for leave-one-out, sleb or distill.")]
OffloadFolder = Annotated[Optional[str], typer.Option(
    "--offload-folder", help="With --device-map auto: where weights that fit on no device go (disk); --max-memory caps "
                             "each device.")]
DeviceMap = Annotated[Optional[str], typer.Option("--device-map", help="'auto' spreads a large model over GPUs (accelerate).")]
AllowPickle = Annotated[bool, typer.Option("--allow-pickle", help="Allow pickle (.bin) weights. They can run code: trusted sources only.")]
TrustRemoteCode = Annotated[bool, typer.Option("--trust-remote-code", help="Allow custom model code from the checkpoint.")]
Data = Annotated[Optional[str], typer.Option("--data", help="Calibration text: builtin:python-docs, builtin:rt-plots, or a .txt/.jsonl/.csv file.")]
Profile = Annotated[Optional[str], typer.Option("--profile", help="Take calibration settings from a profile YAML.")]
Samples = Annotated[Optional[int], typer.Option("--samples", help="Calibration sequences (default: 32, or the profile's).")]
SeqLen = Annotated[Optional[int], typer.Option("--seq-len", help="Tokens per calibration sequence (default: 256, or the profile's).")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Sequences per forward pass (default: 8, or the profile's).")]
TextField = Annotated[Optional[str], typer.Option("--text-field", help="Field/column holding the text in .jsonl/.csv (default: text).")]
Pack = Annotated[Optional[bool], typer.Option("--pack/--no-pack", help="Pack text into full windows (default for decoders) or one document per row, padded (default for encoders).")]
Method = Annotated[str, typer.Option("--method", help=", ".join(SCORERS) + ".")]
Objective = Annotated[Optional[str], typer.Option("--objective", help="sleb only: nll (calibration next-token loss, SLEB's; default) or kl (KL to the full model's outputs).")]
MaxRemove = Annotated[Optional[int], typer.Option("--max-remove", help=names_text(option_scorers("max_remove")) + " only: removal rounds to compute (default: half the layers); every cut up to it is nested.")]
LastState = Annotated[Optional[str], typer.Option("--last-state", help=names_text(last_state_scorers()) + ": the last block's output as block (raw, default) or final-norm (after the final norm, as ShortGPT/PruneMe).")]
AvssMode = Annotated[Optional[str], typer.Option("--avss-mode", help="AVSS only: robust (default) or official (the official code's exact formula; collapses on real LLMs).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for --method random.")]
Force = Annotated[bool, typer.Option("--force", help="Replace existing outputs.")]
Repair = Annotated[Optional[str], typer.Option("--repair", help="Repair the cut: " + ", ".join(repair_choices()) + " (none is the default; linear: closed-form patch, seconds; distill, lora: healing, minutes).")]
Ridge = Annotated[Optional[float], typer.Option("--ridge", callback=finite("--ridge"), help="linear: relative ridge of the least-squares patch (default: 1e-4).")]
HealSteps = Annotated[Optional[int], typer.Option("--heal-steps", help="distill, lora: training steps, one calibration batch each (default: 30).")]
HealTokens = Annotated[Optional[int], typer.Option("--heal-tokens", help="distill, lora: token budget instead of --heal-steps.")]
MaxMemory = Annotated[Optional[str], typer.Option("--max-memory", help="Memory this command may use, e.g. 24GB or 24GiB (default: what is free now, RAM on CPU, GPU memory on CUDA): a load that cannot fit is refused before it starts, with the numbers.")]
HealLr = Annotated[Optional[float], typer.Option("--heal-lr", callback=finite("--heal-lr"), help="distill, lora: learning rate (default: 3e-4 for distill, 1e-3 for lora; cosine decay).")]
HealLoss = Annotated[Optional[str], typer.Option("--heal-loss", help="distill, lora: hidden (relative MSE of hidden states at the cuts and the final norm; default) or kl (KL to the full model's next-token distribution over its top 64 tokens).")]
HealMinutes = Annotated[Optional[float], typer.Option("--heal-minutes", callback=finite("--heal-minutes"), help="distill, lora: wall-clock bound on the training, in minutes (the step budget still applies; the best held-out weights are kept).")]
MinRetention = Annotated[Optional[float], typer.Option("--min-retention", callback=finite("--min-retention"), help="Override the profile's gate.min_retention (task-level thresholds still win).")]
Provider = Annotated[str, typer.Option("--provider", help="ONNX Runtime provider for an ONNX export folder: auto (CUDA when its runtime works here, else CPU), cpu or cuda (cuda never falls back).")]


# --- option groups: the options several commands share, declared once, each group built into one settings
# object by the shell before the command body runs (so the body and the library see settings, never flags)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Group:
    """``build``'s Typer-annotated parameters become the command's options; its plain parameters are the
    command's own of that name (e.g. ``seed``); it returns the settings the command receives. ``raw``: the
    options' values as a dict instead (``avss run`` merges them with its config file)."""

    build: Callable[..., Any]
    omit: tuple[str, ...] = ()
    raw: bool = False

    def without(self, *names: str) -> "Group":
        """This group less options a command does not take (they keep ``build``'s defaults)."""
        return replace(self, omit=self.omit + names)

    def values(self) -> "Group":
        return replace(self, raw=True)

    def params(self) -> tuple[list[inspect.Parameter], list[str]]:
        options, shared = [], []
        for p in inspect.signature(self.build, eval_str=True).parameters.values():
            if p.name in self.omit:
                continue
            if _is_option(p.annotation):
                options.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
            elif not self.raw:
                shared.append(p.name)
        return options, shared


def _is_option(annotation: Any) -> bool:
    return get_origin(annotation) is Annotated and any(isinstance(m, ParameterInfo) for m in get_args(annotation)[1:])


def grouped(**groups: Group) -> Callable[[F], F]:
    """A command whose parameters named like ``groups`` receive each group's settings; Typer sees the
    groups' options in their place. The command's own annotations are resolved here (Typer reads the
    signature this returns as it is)."""
    def wrap(fn: F) -> F:
        own = inspect.signature(fn)
        params: list[inspect.Parameter] = []
        plan: dict[str, tuple[list[str], list[str]]] = {}
        for p in own.parameters.values():
            if p.name in groups:
                options, shared = groups[p.name].params()
                missing = [s for s in shared if s not in own.parameters]
                assert not missing, f"{fn.__name__}: group {p.name} reads {missing}, which the command lacks"
                plan[p.name] = ([o.name for o in options], shared)
                params += options
            else:
                ann = eval(p.annotation, fn.__globals__) if isinstance(p.annotation, str) else p.annotation  # noqa: S307
                params.append(p.replace(annotation=ann, kind=inspect.Parameter.KEYWORD_ONLY))

        def command(**kwargs: Any) -> Any:
            for name, (options, shared) in plan.items():
                given = {o: kwargs.pop(o) for o in options}
                group = groups[name]
                kwargs[name] = given if group.raw else group.build(**given, **{s: kwargs[s] for s in shared})
            return fn(**kwargs)

        command.__signature__ = own.replace(parameters=params, return_annotation=None)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__doc__, command.__module__ = fn.__name__, fn.__doc__, fn.__module__
        return command  # type: ignore[return-value]
    return wrap


def _load(device: Device = "cpu", dtype: Dtype = "auto", device_map: DeviceMap = None,
          offload_folder: OffloadFolder = None, stream: Stream = None, allow_pickle: AllowPickle = False,
          trust_remote_code: TrustRemoteCode = False, max_memory: MaxMemory = None) -> Any:
    from compressor.sources.memory import parse_size
    from compressor.sources.settings import LoadSettings

    return LoadSettings(device, dtype, device_map, offload_folder, stream, allow_pickle, trust_remote_code,
                        parse_size(max_memory) if max_memory is not None else None)


def _calibration(data: Data = None, profile: Profile = None, samples: Samples = None, seq_len: SeqLen = None,
                 batch_size: BatchSize = None, text_field: TextField = None, pack: Pack = None) -> Any:
    from compressor.profiles import load_profile
    from compressor.sources.settings import CalibrationSettings

    given = CalibrationSettings(data, profile, samples, seq_len, batch_size, text_field, pack)  # --data and --profile
    return replace(given, profile=load_profile(profile)) if profile else given


def _scorer(method: Optional[str], seed: int, avss_mode: AvssMode = None, objective: Objective = None,
            max_remove: MaxRemove = None, last_state: LastState = None) -> Any:
    from compressor.score.settings import ScorerSettings

    return ScorerSettings(method, avss_mode, objective, max_remove, last_state, seed)


def _repair(repair: Optional[str], seed: int, ridge: Ridge = None, heal_steps: HealSteps = None,
            heal_tokens: HealTokens = None, heal_lr: HealLr = None, heal_loss: HealLoss = None,
            heal_minutes: HealMinutes = None) -> Any:
    from compressor.repair.methods import repair_settings

    return repair_settings(repair, ridge=ridge, heal_steps=heal_steps, heal_tokens=heal_tokens, heal_lr=heal_lr,
                           seed=seed, heal_loss=heal_loss, heal_minutes=heal_minutes)


LOAD = Group(_load)  # -> compressor.sources.settings.LoadSettings
CALIBRATION = Group(_calibration)  # -> CalibrationSettings, the profile loaded
SCORER = Group(_scorer)  # -> compressor.score.settings.ScorerSettings
REPAIR = Group(_repair)  # -> compressor.repair.settings.RepairSettings, validated
