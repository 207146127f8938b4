"""Remove the least important layers and write a checkpoint that loads with plain transformers."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from compressor.cli import options as o


def prune(
    model: o.Model,
    out: Annotated[str, typer.Option("--out", help="Folder for the slim checkpoint (atomic write).")],
    scores: Annotated[Optional[str], typer.Option("--scores", help="A scores JSON from `avss score`.")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="Score now with this method instead of --scores.")] = None,
    avss_mode: o.AvssMode = None,
    objective: o.Objective = None,
    max_remove: o.MaxRemove = None,
    last_state: o.LastState = None,
    ratio: Annotated[Optional[float], typer.Option("--ratio", callback=o.finite("--ratio"), help="Remove round-half-up(ratio x layers) layers.")] = None,
    num_layers: Annotated[Optional[int], typer.Option("--num-layers", help="Remove exactly this many layers.")] = None,
    mass: Annotated[Optional[float], typer.Option("--mass", callback=o.finite("--mass"), help="Remove the lowest layers whose normalised scores sum to <= MASS (sorted first).")] = None,
    mass_order: Annotated[str, typer.Option("--mass-order", help="sorted (correct) or depth (the official AVSS code's bug, for comparison).")] = "sorted",
    protect: Annotated[str, typer.Option("--protect", help="Never remove these: first,last | none | 0-based indices.")] = "none",
    data: o.Data = None,
    profile: o.Profile = None,
    samples: o.Samples = None,
    seq_len: o.SeqLen = None,
    batch_size: o.BatchSize = None,
    text_field: o.TextField = None,
    pack: o.Pack = None,
    seed: o.Seed = 0,
    repair: o.Repair = None,
    ridge: o.Ridge = None,
    heal_steps: o.HealSteps = None,
    heal_tokens: o.HealTokens = None,
    heal_lr: o.HealLr = None,
    heal_loss: o.HealLoss = None,
    heal_minutes: o.HealMinutes = None,
    device: o.Device = "cpu",
    dtype: o.Dtype = "auto",
    device_map: o.DeviceMap = None,
    offload_folder: o.OffloadFolder = None,
    stream: o.Stream = None,
    allow_pickle: o.AllowPickle = False,
    trust_remote_code: o.TrustRemoteCode = False,
    max_memory: o.MaxMemory = None,
    force: o.Force = False,
) -> None:
    from rich.table import Table

    from compressor.cli import common
    from compressor.cli.output import note, progress_bar
    from compressor.cli.output import out as stdout
    from compressor.prune.api import prune_checkpoint
    from compressor.sources.memory import parse_size

    limit = parse_size(max_memory) if max_memory is not None else None

    done = prune_checkpoint(
        model, out, scores=scores, method=method, avss_mode=avss_mode, objective=objective, max_remove=max_remove,
        last_state=last_state, ratio=ratio, num_layers=num_layers, mass=mass, mass_order=mass_order, protect=protect,
        data=data, profile=profile, samples=samples, seq_len=seq_len, batch_size=batch_size, text_field=text_field,
        pack=pack, seed=seed, repair=repair, ridge=ridge, heal_steps=heal_steps, heal_tokens=heal_tokens,
        heal_lr=heal_lr, heal_loss=heal_loss, heal_minutes=heal_minutes, device=device, dtype=dtype, device_map=device_map, offload_folder=offload_folder, stream=stream, allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code, force=force, bar=progress_bar, repair_bars=common.repair_progress,
        max_memory=limit)
    res = done.result
    if done.repaired:
        common.print_repair(res.repair or {})
    t = Table(title=f"pruned {model} -> {out}")
    t.add_column("")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_row("layers", str(res.num_layers_before), str(res.num_layers_after))
    t.add_row("parameters", f"{res.parameters_before:,}", f"{res.parameters_after:,}")
    t.add_row("removed (0-based)", "", str(res.removed))
    stdout.print(t)
    note(f"wrote {out} (compression.json records the method, scores and removed layers)")
