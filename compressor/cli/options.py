"""Flags shared by several commands, declared once."""
from __future__ import annotations

import math
from typing import Annotated, Callable, Optional

import typer

from compressor.repair.api import choices as repair_choices
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
