"""Everything a run checks before its first step: bad input fails here, before anything is written.

Why a stage of its own: a refusal after an hour of scoring (an unusable cache, a missing task file,
an architecture the exporter cannot build, a full disk) is the worst kind; each check here needs at
most the model's config and is cheap.
"""
from __future__ import annotations

from compressor.errors import BadInput
from compressor.run.context import RunContext
from compressor.run.stages import Data, Setting


def prepare(ctx: RunContext) -> None:
    """What can be checked without a model: profile, gate target, scorers, task and calibration data."""
    from compressor.profiles import load_profile
    from compressor.score import methods
    from compressor.sources.cache import check_cache
    from compressor.sources.data import read_documents
    from compressor.verify.api import check_gate, task_data_digest

    c = ctx.cfg
    c.max_memory_bytes()  # a --max-memory that is not a size: now
    if ctx.store.check():  # an existing run folder: lock it now, so a second run stops at once
        claim(ctx)
    check_cache()  # verify's results are cached: an unusable $AVSS_CACHE fails now, not after pruning
    if not c.skip_export:
        from compressor.export.convert import check_opset

        check_opset(c.opset)
    ctx.profile = profile = load_profile(c.profile)
    target = profile.gate.target
    if target in ("onnx", "quantized") and c.skip_export:
        raise BadInput(f"profile {profile.name!r} gates the {target} artifact (gate.target: {target}), but "
                       "--skip-export writes none", "drop --skip-export, or set gate.target: pytorch")
    if target == "quantized" and not c.quantize and c.search != "fastest":
        raise BadInput(f"profile {profile.name!r} gates the quantized artifact (gate.target: quantized)",
                       "pass --quantize int8 (or int4), or set gate.target: all")
    used = c.search_methods if c.search else [c.method]
    for m in used:
        methods.check_mode(m, c.avss_mode if methods.get_scorer(m).modes else None)
    for option, value, scorers in (("--objective", c.objective, methods.option_scorers("objective")),
                                   ("--last-state", c.last_state, methods.last_state_scorers())):
        if value is not None and not set(scorers) & set(used):
            raise BadInput(f"{option} only applies to {'--method ' if option == '--objective' else ''}"
                           f"{methods.names_text(scorers)} (none of this run's scorers)", f"drop {option}")
    check_gate(profile, c.min_retention)  # what verify would refuse (no tasks): now, not after pruning
    cal = profile.calibration
    ctx.calibration = Data(lambda: read_documents(cal.source, cal.text_field, "calibration"))
    ctx.repair = c.repair_settings()
    ctx.protect = c.protect
    check_cut(ctx)
    task_data = Data(lambda: task_data_digest(profile))
    task_data.digest()  # a missing or malformed task file fails now, not after pruning
    ctx.calibration.digest()  # and so does a missing calibration file
    # settings by value, data by content: file paths are left out (a moved checkout still resumes),
    # what they point at is in the ``tasks`` and ``calibration_data`` digests
    gate = profile.model_dump(mode="json", exclude={"calibration", "description"})
    for t in gate["tasks"]:
        t.pop("data", None)
    ctx.calibration_settings = Setting(cal.model_dump(mode="json", exclude={"source"}))
    ctx.gate_inputs = {
        "profile": Setting(gate), "tasks": task_data, "calibration_data": ctx.calibration,
        "min_retention": Setting(c.min_retention), "load": Setting({"device": c.device, "dtype": c.dtype})}


def check_cut(ctx: RunContext) -> None:
    """The cut (its count or ratio, --protect, --max-remove, the search's range) against the model's layer
    count from its config (read and checked, with the weights' headers, by ``load_config``): a cut the
    model cannot take is refused before the base loads, not after the score stage wrote its files."""
    from compressor.architectures import num_layers
    from compressor.repair.methods import protect_for
    from compressor.run.search import search_limits
    from compressor.score.select import check_cut_rule
    from compressor.score.settings import scorer_options
    from compressor.sources.models import load_config, resolve_model_path

    c = ctx.cfg
    total = num_layers(load_config(resolve_model_path(c.model)[0], c.trust_remote_code))
    protect = protect_for(ctx.repair, c.protect) if ctx.repair.enabled else c.protect
    rounds: int | None
    if c.search:
        rounds = search_limits(total, protect, c.max_remove)
    else:
        rounds = check_cut_rule(ratio=c.ratio, num_layers=c.num_layers, protect=protect, total=total)
    for method in (c.search_methods if c.search else [c.method]):
        scorer_options(method, total, protect=protect, rounds=rounds)  # a nested scorer's rounds fit the model


def load_base(ctx: RunContext) -> None:

    c = ctx.cfg
    ctx.stream = stream_choice(ctx)
    check_memory(ctx)  # the run's largest step, from the checkpoint's headers, before the base loads
    ctx.ev.note(f"loading {c.model} ...")
    ctx.base = base = ctx.load(c.model, ctx.repair.copies)
    ctx.ev.note(f"loaded {base.config.model_type} with {base.num_layers} layers on {base.device} ({base.dtype}"
                f"{', streamed: one block at a time' if base.streamed else ''})")
    if ctx.repair.enabled:
        from compressor.repair.methods import check_repair, protect_for

        check_repair(ctx.repair, base.adapter)  # refused before any stage runs
        ctx.protect = protect_for(ctx.repair, c.protect)
        if ctx.protect != c.protect:
            ctx.ev.note(f"--repair {ctx.repair.method} keeps layer 0 (the patch folds into the block before "
                        f"each removed span): protecting {ctx.protect}")


def check_model_settings(ctx: RunContext) -> None:
    """What needs the model's config but no compute."""
    from compressor.files import check_free_space
    from compressor.run.search import search_limits
    from compressor.score.select import parse_protect

    c, base = ctx.cfg, ctx.base
    parse_protect(ctx.protect, base.num_layers)  # also a --protect from --config
    if c.search == "fastest":  # the exporters that build it (none: an empty space, refused now)
        from compressor.run.steps.fastest import space

        space(ctx)
    elif not c.skip_export:  # an architecture the exporter cannot build: now
        ctx.exporter.check_model(base.config, base.adapter.family, c.quantize)
    if c.search:
        search_limits(base.num_layers, ctx.protect, c.max_remove)
    if not (c.skip_export or c.skip_bench):
        from compressor.export.bench import check_positions

        check_positions(c.bench.prompt_len, c.bench.new_tokens, base.config, base.adapter.family == "decoder",
                        "--bench-prompt-len")
    check_free_space(ctx.out, disk_need(ctx), f"the artifacts of this run ({c.out})")


def stream_choice(ctx: RunContext) -> bool | None:
    """The run streams only if every step can: its scorers, its repair and its profile's tasks (a
    ``--stream`` with one that needs the whole model is refused here, before the base loads)."""
    from compressor.repair.methods import stream_choice as repair_choice
    from compressor.score.api import stream_choice as scorer_choice
    from compressor.verify.api import stream_choice as profile_choice

    c = ctx.cfg
    stream = c.stream
    for method in (c.search_methods if c.search else [c.method]):
        stream = scorer_choice(method, stream) if stream is not False else False
    stream = repair_choice(ctx.repair.method, stream) if stream is not False else False
    return profile_choice(ctx.profile, stream) if stream is not False else False


def check_memory(ctx: RunContext) -> None:
    """Refuse a run whose largest step cannot fit: the base's load (score, cut), verify (one model at a
    time) and the export (fp32, in RAM: the bench's full-model reference, else the slim model), each
    against the memory of the device it runs on. Nothing to estimate without safetensors headers."""
    from compressor.architectures import adapter_for_config
    from compressor.sources import memory as m
    from compressor.sources.models import load_config, resolve_device, resolve_dtype, resolve_model_path

    c = ctx.cfg
    path, _ = resolve_model_path(c.model)
    adapter = adapter_for_config(load_config(path, c.trust_remote_code))
    size = m.checkpoint_size(path, adapter)
    if size is None:
        return
    dev = resolve_device(c.device)
    dt = resolve_dtype(c.dtype, dev)
    copies = c.repair_settings().copies
    whole = m.need_in_memory(size, dt, copies)
    if ctx.stream is None:  # every step can stream: the loader's own decision (sources.memory.stream_reason)
        ctx.stream = m.stream_reason(path, adapter, dt, dev, c.max_memory_bytes(), copies) is not None
    if ctx.stream:
        part = m.need_streamed(size, dt, m.STREAM_ACTIVATIONS)
        half = m.need_streamed(size, "bfloat16", m.STREAM_ACTIVATIONS)
        steps = [("load", f"streaming {path} one block at a time in {dt}", part, dev),
                 ("verify", f"verifying against {path} (streamed, {dt})", part, dev)]
    else:
        half = m.need_in_memory(size, "bfloat16")
        steps = [("load", f"loading {path} in {dt}", whole, dev),
                 ("verify", f"verifying against {path} (one model at a time, {dt})", m.need_verify(size, dt), dev)]
    # the smallest cut this run can make bounds the slim model (a search's first candidate removes 1)
    removed = 1 if c.search else c.cut_size(size.blocks)
    slim = m.need_export(size.slim(max(size.blocks - removed, 0)))
    if not c.skip_export and ctx.stream and ctx.exporter.streams:  # every export of the run streams
        steps.append(("export", f"exporting {path} to ONNX one block at a time ({ctx.exporter.name})",
                      m.need_export_streamed(size), "cpu"))
    elif not c.skip_export and c.skip_bench:
        steps.append(("export", f"exporting the slim model of {path} to ONNX (fp32)", slim, "cpu"))
    elif not c.skip_export:
        steps.append(("export", f"exporting {path} to ONNX (fp32, the bench's full-model reference)",
                      m.need_export(size), "cpu"))
    fixes = {"export": "pass --skip-export" if c.skip_bench else f"pass --skip-bench (the slim model's export needs "
                                                                 f"about {m.gb(slim)})",
             "load": f"pass --dtype bfloat16 (needs about {m.gb(half)})"
             if dt == "float32" else "free memory or use a machine with more"}
    limit = c.max_memory_bytes()
    for device in dict.fromkeys(s[3] for s in steps):
        kind, what, need, _ = max((s for s in steps if s[3] == device), key=lambda s: s[2])
        where = "" if device == "cpu" else f" on {device}"
        m.check_fits(need, m.available_bytes(device, limit), f"{what}, the largest step of this run{where},",
                     f"{fixes.get(kind, fixes['load'])}, or --max-memory SIZE if more memory can be freed for it",
                     capped=limit is not None)


def disk_need(ctx: RunContext) -> int:
    """About how many bytes the run writes: a checkpoint per model/, cut/ and search candidate (the slim size
    for a fixed cut, else full), an export per ONNX folder, and a quantized copy (under half the fp32 graph);
    a streamed, quantized run writes only quantized graphs, each once to a spool and once into place."""
    from compressor.export.convert import export_bytes

    c, b = ctx.cfg, ctx.base
    fastest = c.search == "fastest"  # its passing cuts and the frontier's artifacts are kept until it chooses
    full, params = b.weight_bytes, b.num_parameters
    slim_share = 1.0
    if not c.search and b.num_layers:  # the cut's size is known: the slim copies are that much smaller
        from compressor.architectures import adapter_for_config
        from compressor.sources.memory import checkpoint_size

        size = checkpoint_size(b.path, adapter_for_config(b.config))
        if size is not None and size.total:
            slim_share = size.slim(max(size.blocks - c.cut_size(size.blocks), 0)).total / size.total
    slim, slim_params = int(full * slim_share), int(params * slim_share)
    need: int = slim * (1 + ctx.repair.enabled) + full * (bool(c.search) + 2 * fastest)
    if not c.skip_export and ctx.stream and ctx.exporter.streams and c.quantize:
        from compressor.export.genai import streamed_disk

        need += streamed_disk(slim_params + params * (not c.skip_bench), c.quantize)
    elif not c.skip_export:
        need += (export_bytes(params) * (1 + (not c.skip_bench) + 2 * fastest)
                 + 2 * params * bool(c.quantize or fastest))
    return need


def claim(ctx: RunContext) -> None:
    """Lock the run folder and clean its leftovers (``run.json`` is left alone until stages start)."""
    if ctx.claimed:
        return
    for line in ctx.store.claim(*ctx.entries):
        ctx.ev.note(line)
    ctx.claimed = True
