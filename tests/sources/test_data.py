"""Calibration sources: built-ins split disjointly, local files, fields, hashing, bad input."""
import json

import pytest

from compressor.errors import BadInput
from compressor.sources.data import CalibrationSpec, load_calibration, read_documents


def test_builtin_splits_are_disjoint():
    cal = read_documents("builtin:python-docs", split="calibration")
    ev = read_documents("builtin:python-docs", split="evaluation")
    assert cal and ev and not set(cal) & set(ev)
    plots = read_documents("builtin:rt-plots", split="all")
    assert len(plots) > 1000  # 1,097 real plot summaries


def test_packing_hash_and_token_count(decoder_tokenizer):
    spec = CalibrationSpec(samples=5, seq_len=64, batch_size=2)
    a = load_calibration(spec, decoder_tokenizer)
    b = load_calibration(spec, decoder_tokenizer)
    assert a.packed and a.tokens == 5 * 64 and [x["input_ids"].shape[0] for x in a.batches] == [2, 2, 1]
    assert a.sha256 == b.sha256
    c = load_calibration(CalibrationSpec(samples=5, seq_len=64, batch_size=2, source="builtin:rt-plots"), decoder_tokenizer)
    assert c.sha256 != a.sha256


def test_jsonl_and_csv_with_text_field(tmp_path, decoder_tokenizer):
    j = tmp_path / "d.jsonl"
    j.write_text("\n".join(json.dumps({"body": f"document number {i} about layers"}) for i in range(4)))
    d = load_calibration(CalibrationSpec(source=str(j), text_field="body", samples=4, seq_len=16, pack=False), decoder_tokenizer)
    assert d.tokens > 0 and not d.packed
    c = tmp_path / "d.csv"
    c.write_text("id,body\n1,hello there\n2,general kenobi\n")
    d = load_calibration(CalibrationSpec(source=str(c), text_field="body", samples=2, seq_len=16, pack=False), decoder_tokenizer)
    assert sum(int(b["input_ids"].shape[0]) for b in d.batches) == 2
    with pytest.raises(BadInput, match="no field 'text'"):
        read_documents(str(j))
    with pytest.raises(BadInput, match="no column 'text'"):
        read_documents(str(c))


@pytest.mark.parametrize("name,content,msg", [
    ("empty.txt", "", "is empty"),
    ("blank.txt", "\n\n   \n", "is empty"),
    ("bad.jsonl", "{not json", "not valid JSON Lines"),
    ("bin.txt", b"\xff\xfe\x00\x81", "not UTF-8"),
    ("data.parquet", "x", "unsupported data file type"),
])
def test_bad_files(tmp_path, name, content, msg):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(BadInput, match=msg):
        read_documents(str(p))


def test_missing_file_and_bad_numbers(decoder_tokenizer):
    with pytest.raises(BadInput, match="does not exist"):
        read_documents("/nonexistent/file.txt")
    with pytest.raises(BadInput, match="unknown built-in data"):
        read_documents("builtin:wikitext")
    with pytest.raises(BadInput, match="--seq-len must be at least 1"):
        load_calibration(CalibrationSpec(seq_len=0), decoder_tokenizer)


def test_short_data_warns(tmp_path, decoder_tokenizer):
    p = tmp_path / "short.txt"
    p.write_text("only a few words here")
    d = load_calibration(CalibrationSpec(source=str(p), samples=8, seq_len=64), decoder_tokenizer)
    assert d.warnings and "only 1 of the 8" in d.warnings[0]


def test_builtin_mixed_interleaves_both_sources_by_characters():
    from compressor.sources.data import read_documents

    mixed = read_documents("builtin:mixed")
    docs, plots = read_documents("builtin:python-docs"), read_documents("builtin:rt-plots")
    assert set(mixed) == set(docs) | set(plots) and len(mixed) == len(docs) + len(plots)
    head = mixed[:60]
    a = sum(len(d) for d in head if d in set(docs))
    b = sum(len(d) for d in head if d in set(plots))
    assert a > 0 and b > 0 and 0.5 < a / b < 2.0  # both domains early on, in similar amounts of text
    assert set(read_documents("builtin:mixed", split="evaluation")).isdisjoint(mixed)  # halves stay disjoint


def test_calibration_spec_from_data_profile_and_overrides():
    from pathlib import Path

    from compressor.profiles import calibration_spec, load_profile

    prof = Path(__file__).resolve().parents[2] / "profiles" / "default.yaml"
    assert calibration_spec() == CalibrationSpec()
    assert calibration_spec("notes.txt", samples=4, pack=False) == CalibrationSpec(source="notes.txt", samples=4,
                                                                                    pack=False)
    by_path = calibration_spec(profile=str(prof), seq_len=64)
    assert by_path == calibration_spec(profile=load_profile(prof), seq_len=64)  # a path or a loaded profile
    assert by_path.seq_len == 64 and by_path.source == load_profile(prof).calibration.source
    with pytest.raises(BadInput, match="--data and --profile both"):
        calibration_spec("notes.txt", str(prof))
    with pytest.raises(BadInput, match="--batch-size must be at least 1"):
        calibration_spec(batch_size=0)


def test_calibration_for_reads_the_text_as_the_model_does(tiny, text_file):
    from compressor.sources.data import calibration_for
    from compressor.sources.models import load_model
    from helpers import library_log

    spec = CalibrationSpec(source=str(text_file), samples=2, seq_len=16, batch_size=2)
    with library_log() as log:
        dec = calibration_for(load_model(str(tiny("llama"))), spec)
        enc = calibration_for(load_model(str(tiny("bert"))), spec, given=False)
    assert dec.packed and not enc.packed  # decoders read packed windows, encoders one document per row
    assert log == [("info", f"no --data or --profile given: calibrating on {text_file} (calibration split)")]
