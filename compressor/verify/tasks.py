"""The task kinds' names where callers have always imported them (``profiles``, the benchmarks, the
CLI's tests). The kinds live in ``compressor.verify.kinds``: one module per kind, holding its class and
its evaluation; this module only re-exports, so a new kind never touches it.
"""
from __future__ import annotations

from compressor.verify.kinds.base import (
    KINDS,
    PLUGIN_KINDS,
    DataEntry,
    DataSpec,
    Progress,
    TaskEntry,
    TaskKind,
    all_kinds,
    kind,
    register,
    unregister,
)
from compressor.verify.kinds.classification import Classification, ZeroShotClassification
from compressor.verify.kinds.generation import Generation
from compressor.verify.kinds.multiple_choice import MultipleChoice
from compressor.verify.kinds.perplexity import Perplexity
from compressor.verify.loglik import encode_pair, leading_special
from compressor.verify.metrics import TaskOutput

__all__ = ["KINDS", "PLUGIN_KINDS", "Classification", "DataEntry", "DataSpec", "Generation", "MultipleChoice",
           "Perplexity", "Progress", "TaskEntry", "TaskKind", "TaskOutput", "ZeroShotClassification", "all_kinds",
           "encode_pair", "kind", "leading_special", "register", "unregister"]
