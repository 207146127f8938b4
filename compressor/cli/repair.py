"""Repair a pruned checkpoint: a closed-form linear patch (seconds) and/or short distillation healing."""
from __future__ import annotations

from typing import Annotated

import typer

from compressor.cli import options as o
from compressor.repair.api import choices as repair_choices


def repair(
    base: Annotated[str, typer.Argument(help="The full model the slim one was pruned from.")],
    slim: Annotated[str, typer.Argument(help="A checkpoint written by `avss prune` (its compression.json names the removed layers).")],
    out: Annotated[str, typer.Option("--out", help="Folder for the repaired checkpoint (atomic write).")],
    method: Annotated[str, typer.Option("--method", help=", ".join(c for c in repair_choices() if c != "none") + ".")] = "linear",
    ridge: o.Ridge = None,
    heal_steps: o.HealSteps = None,
    heal_tokens: o.HealTokens = None,
    heal_lr: o.HealLr = None,
    heal_loss: o.HealLoss = None,
    heal_minutes: o.HealMinutes = None,
    data: o.Data = None,
    profile: o.Profile = None,
    samples: o.Samples = None,
    seq_len: o.SeqLen = None,
    batch_size: o.BatchSize = None,
    text_field: o.TextField = None,
    pack: o.Pack = None,
    seed: o.Seed = 0,
    device: o.Device = "cpu",
    dtype: o.Dtype = "auto",
    stream: o.Stream = None,
    allow_pickle: o.AllowPickle = False,
    trust_remote_code: o.TrustRemoteCode = False,
    max_memory: o.MaxMemory = None,
    force: o.Force = False,
) -> None:
    from compressor.cli import common
    from compressor.cli.output import note
    from compressor.repair.api import repair_pruned
    from compressor.sources.memory import parse_size

    record = repair_pruned(base, slim, out, method=method, ridge=ridge, heal_steps=heal_steps, heal_tokens=heal_tokens,
                           heal_lr=heal_lr, heal_loss=heal_loss, heal_minutes=heal_minutes, data=data, profile=profile, samples=samples, seq_len=seq_len,
                           batch_size=batch_size, text_field=text_field, pack=pack, seed=seed, device=device,
                           dtype=dtype, stream=stream, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, force=force,
                           bars=common.repair_progress, max_memory=parse_size(max_memory) if max_memory else None)
    common.print_repair(record)
    note(f"wrote {out} (compression.json records the repair: method, settings, per-span errors)")
