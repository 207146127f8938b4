"""Score every transformer layer; least important first. Data (table) on stdout, the rest on stderr."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from compressor.cli import options as o


def score(
    model: o.Model,
    out: Annotated[Optional[str], typer.Option("--out", help="Write the scores JSON here.")] = None,
    plot: Annotated[Optional[str], typer.Option("--plot", help="Write a PNG bar chart here.")] = None,
    method: o.Method = "avss",
    avss_mode: o.AvssMode = None,
    objective: o.Objective = None,
    max_remove: o.MaxRemove = None,
    protect: Annotated[Optional[str], typer.Option("--protect", help="sleb only: blocks it never removes (first,last | 0-based indices); its order depends on them.")] = None,
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
    allow_pickle: o.AllowPickle = False,
    trust_remote_code: o.TrustRemoteCode = False,
    force: o.Force = False,
) -> None:
    from compressor.cli import common
    from compressor.cli.output import note
    from compressor.errors import BadInput
    from compressor.prune.select import parse_protect
    from compressor.score import methods
    from compressor.score.report import save_plot

    scorer = methods.get_scorer(method)
    methods.check_mode(method, avss_mode)
    methods.check_options(method, objective, max_remove, last_state)
    if protect is not None and "protect" not in scorer.own_options:
        raise BadInput(f"--protect on avss score only applies to --method {methods.names_text(methods.option_scorers('protect'))} "
                       f"(got --method {method}); other scores do not depend on it",
                       "drop --protect here and pass it to avss prune")
    common.refuse_existing([out, plot], force)
    calib, have_data = common.calibration_spec(data, profile, samples, seq_len, batch_size, text_field, pack)
    loaded = common.load(model, device, dtype, device_map, allow_pickle, trust_remote_code)
    opts: dict[str, Any] = {"objective": objective, "max_remove": max_remove, "last_state": last_state}
    if "protect" in scorer.own_options:
        opts["protect"] = parse_protect(protect, loaded.num_layers)
    report = common.run_scoring(loaded, method, avss_mode, calib, have_data, seed, **opts)
    common.print_scores(report)
    sel = report.default_selection
    note(f"method: {report.label}; ranking (least important first): {report.ranking}")
    note(f"default selection ({sel['rule']} 0.25 -> {sel['num_layers']} layers) would remove {sel['removed']}")
    if out:
        report.save(out)
        note(f"wrote {out}")
    if plot:
        save_plot(report, set(sel["removed"]), plot)
        note(f"wrote {plot}")
