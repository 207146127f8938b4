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
    ratio: Annotated[Optional[float], typer.Option("--ratio", help="Remove round-half-up(ratio x layers) layers.")] = None,
    num_layers: Annotated[Optional[int], typer.Option("--num-layers", help="Remove exactly this many layers.")] = None,
    mass: Annotated[Optional[float], typer.Option("--mass", help="Remove the lowest layers whose normalised scores sum to <= MASS (sorted first).")] = None,
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
    device: o.Device = "cpu",
    dtype: o.Dtype = "auto",
    device_map: o.DeviceMap = None,
    allow_pickle: o.AllowPickle = False,
    trust_remote_code: o.TrustRemoteCode = False,
    force: o.Force = False,
) -> None:
    from compressor.cli import common
    from compressor.cli.output import note, warn
    from compressor.cli.output import out as stdout
    from compressor.errors import BadInput
    from compressor.files import check_output_dir
    from compressor.prune.select import select_layers
    from compressor.repair.api import prune_and_repair
    from compressor.score.report import ScoreReport

    if (scores is None) == (method is None):
        raise BadInput("give exactly one of --scores FILE or --method NAME", "e.g. --scores scores.json")
    if scores is not None and avss_mode is not None:
        raise BadInput("--avss-mode applies to --method; a scores file already records its mode",
                       "drop --avss-mode, or score with --method avss --avss-mode ...")
    given = [f for f, v in (("--objective", objective), ("--max-remove", max_remove), ("--last-state", last_state))
             if v is not None]
    if scores is not None and given:
        raise BadInput(f"{given[0]} applies to --method; a scores file was computed with its own settings",
                       f"drop {given[0]}, or score now with --method")
    if method is not None:
        from compressor.score import methods as scorers

        scorers.check_options(method, objective, max_remove, last_state)
    if sum(x is not None for x in (ratio, num_layers, mass)) != 1:
        raise BadInput("give exactly one of --ratio, --num-layers, --mass", "e.g. --num-layers 7")
    settings = common.repair_settings(repair, ridge, heal_steps, heal_tokens, heal_lr, seed)
    check_output_dir(out, force, note=note)
    report = ScoreReport.load(scores) if scores else None
    calib, have_data = common.calibration_spec(data, profile, samples, seq_len, batch_size, text_field, pack)
    loaded = common.load(model, device, dtype, device_map, allow_pickle, trust_remote_code)
    common.check_room(out, loaded, f"the slim checkpoint {out}")
    if settings.method != "none":
        from compressor.repair.api import check_repair, protect_for

        check_repair(settings, loaded.adapter)  # an architecture it cannot repair fails before scoring
        if protect_for(settings, protect) != protect:
            note(f"--repair {settings.method} keeps layer 0 (its patch folds into the block before each removed span)")
            protect = protect_for(settings, protect)
    if report is not None:
        if report.num_layers != loaded.num_layers:
            raise BadInput(f"{scores} scores {report.num_layers} layers but {model} has {loaded.num_layers}",
                           "score this model first: avss score MODEL --out FILE")
        if report.model.get("model_type") != loaded.config.model_type:
            raise BadInput(f"{scores} was computed for a {report.model.get('model_type')} model, not {loaded.config.model_type}",
                           "score this model first")
        if report.model.get("spec") != model:
            warn(f"{scores} was computed for {report.model.get('spec')!r}; pruning {model!r}")
    else:
        from compressor.prune.select import parse_protect

        assert method is not None  # exactly one of --scores and --method (checked above)

        opts: dict = {"objective": objective, "max_remove": max_remove, "last_state": last_state}
        scorer = scorers.get_scorer(method)
        if "protect" in scorer.own_options:  # e.g. SLEB: its removal order depends on what it may not remove
            opts["protect"] = parse_protect(protect, loaded.num_layers)
        if "max_remove" in scorer.own_options and max_remove is None and num_layers is not None:
            opts["max_remove"] = num_layers  # compute only the rounds this cut needs
        report = common.run_scoring(loaded, method, avss_mode, calib, have_data, seed, **opts)
    sel = select_layers(report, ratio=ratio, num_layers=num_layers, mass=mass, mass_order=mass_order, protect=protect)
    if sel.num_layers > report.num_layers // 2:
        warn(f"this removes {sel.num_layers} of {report.num_layers} layers, more than half of the model")
    note(f"method {report.label}: removing {sel.num_layers} of {report.num_layers} layers {sel.removed} ({sel.rule})")
    provenance = {
        "method": report.method,
        "mode": report.mode,
        "label": report.label,
        "selection": sel.to_dict(),
        "scores": [{"index": l.index, "score": l.score} for l in report.layers],
        "ranking": report.ranking,
        "calibration": report.calibration,
        "scores_file": scores,
    }
    cal = None
    if settings.method != "none":
        from compressor.sources.data import load_calibration

        cal = load_calibration(calib, loaded.tokenizer, loaded.adapter.family)
    with common.repair_progress() as update:
        res = prune_and_repair(loaded, sel.removed, out, settings, cal, force=force, provenance=provenance,
                               progress=update)
    for w in res.warnings:
        warn(w)
    if settings.method != "none":
        common.print_repair(res.repair or {})
    from rich.table import Table

    t = Table(title=f"pruned {model} -> {out}")
    t.add_column("")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_row("layers", str(res.num_layers_before), str(res.num_layers_after))
    t.add_row("parameters", f"{res.parameters_before:,}", f"{res.parameters_after:,}")
    t.add_row("removed (0-based)", "", str(res.removed))
    stdout.print(t)
    note(f"wrote {out} (compression.json records the method, scores and removed layers)")
