"""A scorer and its own options, one record: built once by the CLI shell (or a Python caller) and handed to
``score_checkpoint`` and ``prune_checkpoint``, which check it before anything loads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class ScorerSettings:
    """``method`` None: no scorer (``avss prune --scores FILE``); ``mode`` is ``--avss-mode``; ``seed`` feeds
    ``--method random``."""

    method: str | None = "avss"
    mode: str | None = None
    objective: str | None = None
    max_remove: int | None = None
    last_state: str | None = None
    seed: int = 0

    @property
    def own(self) -> list[tuple[str, str | int]]:
        """The options given that only a scorer reads (a scores file was computed with its own)."""
        return [(f, v) for f, v in (("--avss-mode", self.mode), ("--objective", self.objective),
                                    ("--max-remove", self.max_remove), ("--last-state", self.last_state))
                if v is not None]

    def check(self) -> None:
        """The scorer exists, and takes the options given (before any model loads)."""
        from compressor.score import methods

        assert self.method is not None
        methods.check_mode(self.method, self.mode)
        methods.check_options(self.method, self.objective, self.max_remove, self.last_state)

    def options(self, num_layers: int, protect: str | Iterable[int] | None = None,
                rounds: int | None = None) -> dict[str, Any]:
        """``score_layers``' options for a model of ``num_layers`` (see ``scorer_options``)."""
        assert self.method is not None
        return scorer_options(self.method, num_layers, objective=self.objective, max_remove=self.max_remove,
                              last_state=self.last_state, protect=protect, rounds=rounds)


def scorer_options(method: str, num_layers: int, *, objective: str | None = None, max_remove: int | None = None,
                   last_state: str | None = None, protect: str | Iterable[int] | None = None,
                   rounds: int | None = None) -> dict[str, Any]:
    """``score_layers``' options for ``method`` from user-level values: ``protect`` parsed (first,last |
    indices) for the scorer whose order depends on it; ``rounds`` (the cut's size) as the default
    ``max_remove`` of a scorer that computes removals round by round, so it computes no more than needed."""
    from compressor.score import methods
    from compressor.score.select import parse_protect

    scorer = methods.get_scorer(method)
    opts: dict[str, Any] = {"objective": objective, "max_remove": max_remove, "last_state": last_state}
    if "protect" in scorer.own_options:  # e.g. SLEB: its removal order depends on what it may not remove
        opts["protect"] = parse_protect(protect, num_layers)
    if "max_remove" in scorer.own_options and max_remove is None and rounds is not None:
        opts["max_remove"] = rounds
    if "max_remove" in scorer.own_options and opts["max_remove"] is not None:  # before the model loads
        kept = parse_protect(protect, num_layers) + ([0] if scorer.needs_patch else [])
        from compressor.score.sleb import check_max_remove

        check_max_remove(opts["max_remove"], num_layers, kept)
    return opts
