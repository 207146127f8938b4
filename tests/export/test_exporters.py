"""The exporter registry: callers ask it what an exporter builds; none compares an exporter's name."""
import re
from pathlib import Path

import pytest

from compressor.errors import BadInput
from compressor.export.exporters import EXPORTERS, available, get_exporter, help_text, names

ROOT = Path(__file__).resolve().parents[2]


def test_every_exporter_is_found_by_its_name_and_the_default_is_the_first_that_runs_here():
    from compressor.compat import lane

    assert names() == ["optimum", "genai"] and EXPORTERS.find("genai").name == "genai"
    assert get_exporter(None) is EXPORTERS["optimum" if lane() == "card" else "genai"]
    for name in available():
        assert get_exporter(name).name == name and name in help_text()


def test_an_exporter_that_cannot_run_in_this_lane_is_refused_with_why_and_what_instead(monkeypatch):
    """The current lane's refusal of Optimum, shown in either lane (the lane is what compat says)."""
    from compressor import compat

    monkeypatch.setattr(compat, "lane", lambda: "current")
    assert available() == ["genai"] and get_exporter(None).name == "genai"
    with pytest.raises(BadInput) as exc:
        get_exporter("optimum")
    assert exc.value.problem.startswith("--exporter optimum cannot run here: optimum-onnx 0.1.0 (its only release) "
                                        "caps transformers below 4.58")
    assert exc.value.fix == "use --exporter genai, or the card's lane (make install) for Optimum"


def test_an_unknown_exporter_is_refused_with_the_choices():
    with pytest.raises(BadInput) as exc:
        get_exporter("tensorrt")
    assert "unknown --exporter 'tensorrt'" in exc.value.problem and "optimum, genai" in exc.value.fix


@pytest.mark.parametrize("name,quantize,ok", [pytest.param("optimum", "int8", True, marks=pytest.mark.optimum),
                                              ("genai", "int8", False), ("genai", "int4", True),
                                              pytest.param("optimum", "int3", False, marks=pytest.mark.optimum)])
def test_what_an_exporter_builds_is_what_it_accepts(name, quantize, ok):
    e = get_exporter(name)
    assert (quantize in e.precisions) is ok
    if ok:
        e.check_flags(dtype="fp32", device="cpu", quantize=quantize)
    else:
        with pytest.raises(BadInput):
            e.check_flags(dtype="fp32", device="cpu", quantize=quantize)


def test_a_run_config_takes_its_exporter_choices_from_the_registry():
    from compressor.run.config import RunConfig

    with pytest.raises(ValueError, match="unknown exporter 'tensorrt'"):
        RunConfig(model="m", profile="p", out="o", exporter="tensorrt")
    with pytest.raises(ValueError, match="the genai exporter builds fp32, int4, int8-weights or int4-mixed graphs, not int8"):
        RunConfig(model="m", profile="p", out="o", exporter="genai", quantize="int8")


def test_no_code_outside_the_registry_compares_an_exporter_name():
    pattern = re.compile(r"""(==|!=|\bin\b)\s*\(?\s*["'](optimum|genai)["']""")
    allowed = {ROOT / "export" / "exporters.py"}
    hits = []
    for folder in ("compressor", "export"):
        for f in (ROOT / folder).rglob("*.py"):
            if f in allowed:
                continue
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line) and " for " not in line:  # a comparison, not a loop over logger names
                    hits.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, hits
