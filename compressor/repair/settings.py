"""What decides a repair, one record: ``RepairSettings`` is part of every resume and cache key that depends on
a repair (``compressor.repair.methods.repair_settings`` builds it validated from user-level values)."""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEFAULT_STEPS = 30  # healing: training steps, one calibration batch each (~5 s per 2,048-token step on 2 cores)
DEFAULT_LR = 3e-4  # distill's learning rate (lora's is its class's default_lr)
LOSSES = ("hidden", "kl")  # healing objectives: relative MSE of hidden states, or top-k KL of the next token

Progress = Callable[[str, int, int, float | None], None]  # (step label, done, total, loss)
# a progress display for one repair (the CLI's bars): it yields a Progress callback
RepairBars = Callable[[], AbstractContextManager[Progress | None]]


@dataclass(frozen=True)
class RepairSettings:
    """What decides a repair's result (part of every resume and cache key that depends on it)."""

    method: str = "none"
    ridge: float = 1e-4
    heal_steps: int = DEFAULT_STEPS
    heal_lr: float | None = None  # None: the healing method's own default (distill 3e-4, lora 1e-3)
    heal_tokens: int | None = None  # overrides heal_steps: steps = tokens / tokens per batch
    seed: int = 0
    heal_loss: str = "hidden"
    heal_minutes: float | None = None  # wall-time bound on the training (the step budget still applies)

    @property
    def steps(self) -> tuple[str, ...]:
        return () if self.method == "none" else tuple(self.method.split("+"))

    @property
    def enabled(self) -> bool:
        """Whether any repair runs (``--repair none``: the plain cut)."""
        return bool(self.steps)

    @property
    def copies(self) -> int:
        """Copies of the base's weights the work holds in memory: an in-memory repair cuts a copy of the base
        (measured 2.34-2.46x the checkpoint), a plain cut none. The fit check and the choice to stream ask this."""
        return 2 if self.enabled else 1

    def distill_steps(self, batches: list[dict[str, torch.Tensor]]) -> int:
        """``heal_steps``, or ``heal_tokens`` converted to steps (one calibration batch per step)."""
        if self.heal_tokens is None:
            return self.heal_steps
        per = max(1, int(sum(int(b["attention_mask"].sum()) for b in batches) / max(len(batches), 1)))
        return max(1, self.heal_tokens // per)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "ridge": self.ridge, "heal_steps": self.heal_steps, "heal_lr": self.heal_lr,
                "heal_tokens": self.heal_tokens, "seed": self.seed, "heal_loss": self.heal_loss,
                "heal_minutes": self.heal_minutes}
