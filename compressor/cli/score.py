"""Score every transformer layer; least important first. Data (table) on stdout, the rest on stderr."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from compressor.cli import options as o
from compressor.score.methods import names_text, option_scorers


def score(
    model: o.Model,
    out: Annotated[Optional[str], typer.Option("--out", help="Write the scores JSON here.")] = None,
    plot: Annotated[Optional[str], typer.Option("--plot", help="Write a PNG bar chart here.")] = None,
    method: o.Method = "avss",
    avss_mode: o.AvssMode = None,
    objective: o.Objective = None,
    max_remove: o.MaxRemove = None,
    protect: Annotated[Optional[str], typer.Option("--protect", help=names_text(option_scorers("protect")) + " only: blocks it never removes (first,last | 0-based indices); its order depends on them.")] = None,
    last_state: o.LastState = None,
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
    device_map: o.DeviceMap = None,
    offload_folder: o.OffloadFolder = None,
    stream: o.Stream = None,
    allow_pickle: o.AllowPickle = False,
    trust_remote_code: o.TrustRemoteCode = False,
    max_memory: o.MaxMemory = None,
    force: o.Force = False,
) -> None:
    from compressor.cli import common
    from compressor.cli.output import note, progress_bar
    from compressor.score.api import score_checkpoint
    from compressor.sources.memory import parse_size

    limit = parse_size(max_memory) if max_memory is not None else None

    report = score_checkpoint(model, method=method, mode=avss_mode, objective=objective, max_remove=max_remove,
                              protect=protect, last_state=last_state, data=data, profile=profile, samples=samples,
                              seq_len=seq_len, batch_size=batch_size, text_field=text_field, pack=pack, seed=seed,
                              device=device, dtype=dtype, device_map=device_map, offload_folder=offload_folder, stream=stream, allow_pickle=allow_pickle,
                              trust_remote_code=trust_remote_code, out=out, plot=plot, force=force, bar=progress_bar,
                              max_memory=limit)
    common.print_scores(report)
    sel = report.default_selection
    note(f"method: {report.label}; ranking (least important first): {report.ranking}")
    note(f"default selection ({sel['rule']} {sel['ratio']} -> {sel['num_layers']} layers) would remove {sel['removed']}")
    if out:
        note(f"wrote {out}")
    if plot:
        note(f"wrote {plot}")
