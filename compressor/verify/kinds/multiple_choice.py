"""``kind: multiple-choice``: lm-evaluation-harness's ``multiple_choice``, each choice scored by its
log-likelihood after the prompt (encoded as the harness encodes it, so the numbers match)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, cast

from compressor.errors import BadInput
from compressor.verify.kinds.base import DataEntry, Progress, TaskKind, register
from compressor.verify.loglik import encode_pair, loglikelihoods
from compressor.verify.metrics import MC_PREDICTION, FiniteCount, TaskOutput, all_finite, mc_metrics, mc_predictions

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def eval_multiple_choice(model: PreTrainedModel, tok: PreTrainedTokenizerBase, task: MultipleChoice.Entry,
                         examples: list[dict[str, Any]], batch_size: int, max_length: int,
                         progress: Progress | None = None) -> TaskOutput:
    """lm-evaluation-harness's ``multiple_choice``: each choice after ``target_delimiter`` (" "), ``acc``
    on the summed log-likelihood, ``acc_norm`` on it divided by the choice's length in characters,
    ``acc_bytes`` by its UTF-8 bytes (the choice without the delimiter, as lm-eval 0.4.13)."""
    pairs, keys = [], []
    for i, e in enumerate(examples):
        ctx = task.template.format(context=e.get("context", ""), question=e["question"])
        for c, choice in enumerate(e["choices"]):
            pairs.append(encode_pair(tok, ctx, " " + choice))
            keys.append((i, c))
    lls = loglikelihoods(model, pairs, batch_size, max_length, progress)
    per: dict[int, list[float]] = {}
    for (i, _c), ll in zip(keys, lls):
        per.setdefault(i, []).append(ll)
    finite = FiniteCount("examples")
    for i in range(len(examples)):
        finite.see(all_finite(per[i]))
    finite.check()
    records = [{**mc_predictions(per[i], e["choices"]), "answer": int(e["answer"]), "lls": per[i]}
               for i, e in enumerate(examples)]
    return TaskOutput(records, mc_metrics(records))


@register
class MultipleChoice(TaskKind):
    name = "multiple-choice"
    example_fields = {"context": str, "question": str, "choices": list, "answer": int}
    optional_fields = {"context": ""}
    builtin_shapes = frozenset({"questions"})

    class Entry(DataEntry):
        """Log-likelihood of each choice after the prompt, as lm-evaluation-harness's ``multiple_choice``
        (``acc_norm``: per character of the choice; ``acc_bytes``: per UTF-8 byte)."""

        kind: Literal["multiple-choice"]
        metric: Literal["acc", "acc_norm", "acc_bytes"] = "acc_norm"
        template: str = "Context: {context}\nQuestion: {question}\nAnswer:"

    def check(self, example: dict[str, Any], where: str) -> None:
        if not 0 <= example["answer"] < len(example["choices"]):
            raise BadInput(f"{where}: answer {example['answer']} is not an index into its choices", "use a 0-based index")

    evaluator = staticmethod(eval_multiple_choice)
    metrics_of = staticmethod(mc_metrics)

    def agreement(self, metric: str, base: list[dict[str, Any]], cand: list[dict[str, Any]]) -> float | None:
        key = MC_PREDICTION.get(metric, "pred")
        return cast("float", sum(rb[key] == rc[key] for rb, rc in zip(base, cand)) / max(len(base), 1))
