"""benchmarks/scale.py's synthetic checkpoint builder, at a tiny shape: what it writes is what it declares
(shapes, bf16, shards, index), it loads with plain transformers and with the tool's own loader, and the same
shape always gives the same bytes. Nothing is measured here (the benchmark itself takes minutes)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scale  # noqa: E402

SHAPE = scale.Shape("test", hidden=64, intermediate=160, layers=3, heads=4, kv_heads=2, vocab=49152, rope_theta=10000.0)
SHARD = 4 * 10**6  # the 49,152 x 64 embedding (6.3 MB) is larger: it gets a shard of its own


@pytest.fixture(scope="module")
def built(tmp_path_factory, smollm2_dir):
    folder = tmp_path_factory.mktemp("scale") / scale.checkpoint_key(SHAPE, SHARD)
    path, fresh = scale.build_checkpoint(SHAPE, folder, shard_bytes=SHARD, tokenizer_from=smollm2_dir)
    assert fresh
    return path


def test_declared_shapes_dtype_and_shards(built):
    from safetensors import safe_open

    index = json.loads((built / "model.safetensors.index.json").read_text(encoding="utf-8"))
    shards = sorted(built.glob("model-*.safetensors"))
    record = json.loads((built / "scale-build.json").read_text(encoding="utf-8"))
    assert len(shards) == record["shards"] >= 3
    assert sorted(set(index["weight_map"].values())) == [f.name for f in shards]
    per_shard = {f.name: [k for k, v in index["weight_map"].items() if v == f.name] for f in shards}
    # within the limit (plus its header), or one tensor larger than a shard alone (the embedding, the LM head)
    assert all(f.stat().st_size <= SHARD + 2**16 or len(per_shard[f.name]) == 1 for f in shards)
    assert per_shard[index["weight_map"]["model.embed_tokens.weight"]] == ["model.embed_tokens.weight"]
    total, names = 0, set()
    for f in shards:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                t = fh.get_slice(k)
                assert t.get_dtype() == "BF16", k
                total += 2 * math.prod(t.get_shape())
                names.add(k)
    assert total == index["metadata"]["total_size"] == SHAPE.bytes == record["bytes"]
    assert names == set(index["weight_map"])
    assert "lm_head.weight" in names  # untied, as in Llama 3
    with safe_open(str(built / index["weight_map"]["model.layers.0.self_attn.k_proj.weight"]), framework="pt") as fh:
        assert fh.get_slice("model.layers.0.self_attn.k_proj.weight").get_shape() == [2 * 16, 64]


def test_loads_with_transformers_and_the_tool(built):
    import torch
    from transformers import AutoModelForCausalLM

    from compressor.sources.models import load_model

    model = AutoModelForCausalLM.from_pretrained(str(built), dtype="auto")
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.vocab_size) == (64, 160, 3, 4, 2, 49152)
    assert model.dtype == torch.bfloat16 and not cfg.tie_word_embeddings
    assert sum(p.numel() for p in model.parameters()) == SHAPE.params
    w = model.model.layers[1].mlp.down_proj.weight.detach().float()
    assert 0.015 < float(w.std()) < 0.025 and float(model.model.norm.weight.detach().float().mean()) == 1.0
    loaded = load_model(str(built), dtype="bfloat16")  # the tool's checks: loading info, vocabulary
    ids = loaded.tokenizer("def f(x): return x", return_tensors="pt")
    with torch.inference_mode():
        logits = loaded.model(**ids).logits
    assert torch.isfinite(logits).all()


def test_same_shape_same_bytes_and_reuse(built, tmp_path, smollm2_dir):
    again, fresh = scale.build_checkpoint(SHAPE, tmp_path / "again", shard_bytes=SHARD, tokenizer_from=smollm2_dir)
    assert fresh
    assert scale.same_checkpoint(built, again).startswith("identical")
    assert scale.build_checkpoint(SHAPE, built, shard_bytes=SHARD) == (built, False)  # complete: reused as is


def test_shard_plan_and_key():
    plan = scale.plan_shards([("a", (1000,)), ("b", (1000,)), ("c", (5000,)), ("d", (10,))], 4000)
    assert [[n for n, _ in s] for s in plan] == [["a", "b"], ["c"], ["d"]]
    assert scale.checkpoint_key(SHAPE, SHARD) != scale.checkpoint_key(SHAPE, SHARD * 2)
    real = scale.SHAPES["llama3-8b-32blk"]
    assert abs(real.params - 8.03e9) < 0.01e9  # Llama-3-8B's parameter count


def test_missing_flags_are_rows_not_crashes(monkeypatch):
    monkeypatch.setitem(scale._HELP, "score", {"--out", "--method"})
    rows = scale.mode_rows("score", "score", ["score", "M"], 10)
    assert [r.mode for r in rows] == ["build default (in-memory)", "streamed"]
    assert rows[1].argv is None and "not available" in rows[1].result
    monkeypatch.setitem(scale._HELP, "score", {"--out", "--stream", "--no-stream"})
    rows = scale.mode_rows("score", "score", ["score", "M"], 10)
    assert [r.argv[-1] for r in rows] == ["--no-stream", "--stream"]
