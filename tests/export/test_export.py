"""Export through Optimum + our parity check: full and pruned models of four architectures,
a deliberately broken surgery caught, the layout Optimum users load, and the CLI contract."""
import json

import numpy as np
import pytest

from compressor.errors import BadInput, RuntimeFailure
from compressor.export.convert import export_model
from compressor.export.layout import uses_external_data
from compressor.prune.surgery import prune_model
from compressor.sources.models import load_model

ARCHS = ["llama", "qwen2", "gpt2", "bert"]


def _source(tiny, arch, pruned, tmp_path):
    src = tiny(arch)
    if not pruned:
        return src
    slim = tmp_path / "slim"
    prune_model(load_model(str(src)), [1], slim, provenance={"method": "test"})
    return slim


@pytest.mark.optimum
@pytest.mark.parametrize("pruned", [False, True], ids=["full", "pruned"])
@pytest.mark.parametrize("arch", ARCHS)
def test_export_and_parity(arch, pruned, tiny, tmp_path):
    src = _source(tiny, arch, pruned, tmp_path)
    out = tmp_path / "onnx"
    res = export_model(str(src), out)
    layers = 3 if pruned else 4
    assert res.parity.passed and res.num_layers == layers
    assert res.parity.provider == "CPUExecutionProvider"
    names = {c.name.split(" (")[0] for c in res.parity.checks}
    if arch == "bert":
        assert res.task == "text-classification" and names == {"logits"}
    else:
        assert res.task == "text-generation-with-past"
        assert names == {"kv-cache outputs", "prompt logits", "decode step with past vs no-cache forward",
                         "greedy generation"}
    for c in res.parity.checks:
        if c.max_abs_diff is not None:
            assert c.max_abs_diff <= c.tolerance < 1e-3
    # the layout Optimum users expect, weights always as external data, our records
    for f in ("model.onnx", "model.onnx_data", "config.json", "tokenizer_config.json", "export.json"):
        assert (out / f).is_file(), f
    assert uses_external_data(out / "model.onnx")
    if arch != "bert":
        assert (out / "generation_config.json").is_file()
    assert (out / "compression.json").is_file() == pruned
    rec = json.loads((out / "export.json").read_text())
    assert rec["parity"]["passed"] and rec["num_layers"] == layers and rec["opset"] == 18
    assert rec["parity"]["max_abs_diff"] == res.parity.max_abs_diff
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"))
    presents = [o.name for o in sess.get_outputs() if o.name.startswith("present")]
    assert len(presents) == (0 if arch == "bert" else 2 * layers)
    assert not list(tmp_path.glob(".onnx.tmp-*"))  # no temporary folder left behind


def _broken(tiny, arch):
    """Layer 1 removed the naive way: blocks and config updated, layer_idx NOT renumbered (pitfall P1)."""
    from torch import nn

    from compressor.architectures import get_layers, set_layers

    lm = load_model(str(tiny(arch)))
    layers = get_layers(lm.model, lm.adapter)
    set_layers(lm.model, nn.ModuleList([layers[i] for i in (0, 2, 3)]), lm.adapter)
    cfg = lm.model.config
    cfg.num_hidden_layers = 3
    for name in lm.adapter.per_layer_lists:
        v = getattr(cfg, name, None)
        if isinstance(v, list) and len(v) == 4:
            setattr(cfg, name, [v[i] for i in (0, 2, 3)])
    return lm


@pytest.mark.optimum
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_broken_surgery_is_caught(arch, tiny, tmp_path):
    out = tmp_path / "onnx"
    with pytest.raises(RuntimeFailure, match="parity check failed"):
        export_model(_broken(tiny, arch), out)
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.optimum
def test_in_memory_pruned_model_exports(tiny, tmp_path):
    """The correct surgery, exported straight from memory (the path `avss run` takes)."""
    from compressor.prune.surgery import remove_layers

    lm = load_model(str(tiny("qwen2")))
    remove_layers(lm.model, [1], lm.adapter)
    res = export_model(lm, tmp_path / "onnx")
    assert res.parity.passed and res.num_layers == 3


@pytest.mark.optimum
def test_optimum_loads_the_export_and_generates_like_pytorch(tiny, tmp_path):
    from optimum.onnxruntime import ORTModelForCausalLM

    src = _source(tiny, "llama", True, tmp_path)
    out = tmp_path / "onnx"
    export_model(str(src), out)
    pt = load_model(str(src))
    ort_model = ORTModelForCausalLM.from_pretrained(str(out))
    enc = pt.tokenizer(["The river bank", "A much longer prompt about the lazy dog"], return_tensors="pt",
                       padding=True, padding_side="left")
    kw = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=pt.tokenizer.pad_token_id)
    a = pt.model.generate(**enc, **kw)
    b = ort_model.generate(**enc, **kw)
    assert np.array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("kwargs,needle", [
    ({"dtype": "fp16"}, "--dtype fp16 export is only supported with --device cuda"),
    ({"dtype": "bf16"}, "unknown export dtype"),
    ({"task": "text-classification"}, "does not fit this decoder model"),
    ({"task": "translation"}, "unknown export task"),
    ({"opset": 3}, "opset 3"),
])
def test_bad_export_options(kwargs, needle, tiny, tmp_path):
    with pytest.raises(BadInput, match=needle):
        export_model(str(tiny("llama")), tmp_path / "onnx", **kwargs)
    assert not (tmp_path / "onnx").exists()


@pytest.mark.optimum
def test_cli_export_contract(tiny, tmp_path, capsys):
    from compressor.cli.app import main

    def run(argv):
        with pytest.raises(SystemExit) as e:
            main(argv)
        cap = capsys.readouterr()
        return e.value.code, cap.out, cap.err

    out = tmp_path / "onnx"
    code, stdout, err = run(["export", str(tiny("gpt2")), "--out", str(out)])
    assert code == 0, err
    assert "max abs diff" in stdout and "greedy generation" in stdout  # the parity table is data: stdout
    assert "export:" in err and "parity:" in err  # per-stage timing: stderr
    for argv, needle in [
        (["export", str(tiny("gpt2")), "--out", str(out)], "already exists"),
        (["export", str(tiny("gpt2")), "--out", str(tmp_path / "x"), "--device", "cuda"], "CUDA is not available"),
        (["export", str(tiny("gpt2")), "--out", str(tmp_path / "x"), "--dtype", "fp16"], "--device cuda"),
        (["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x")], "does not exist"),
    ]:
        code, stdout, err = run(argv)
        assert code == 2, err
        errors = [l for l in err.splitlines() if l.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0], err
        assert "Traceback" not in err
    assert not (tmp_path / "x").exists()
    code, _, err = run(["export", str(tiny("gpt2")), "--out", str(out), "--force"])
    assert code == 0, err


@pytest.mark.parametrize("dists,needle", [
    (["onnxruntime", "onnxruntime-gpu"], "both onnxruntime and onnxruntime-gpu are installed"),
    ([], "no ONNX Runtime is installed"),
])
def test_onnxruntime_install_problems_name_the_fix(dists, needle, tiny, tmp_path, capsys, monkeypatch):
    from compressor.cli.app import main
    from compressor.export import runtime

    monkeypatch.setattr(runtime, "installed_runtimes", lambda: dists)
    for argv in (["export", str(tiny("gpt2")), "--out", str(tmp_path / "x")], ["bench", str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        errors = [l for l in err.splitlines() if l.startswith("error:")]
        assert e.value.code == 2 and len(errors) == 1 and needle in errors[0] and "pip" in errors[0], err
    assert not (tmp_path / "x").exists()
