"""The closed-form patch's algebra: the normal equations of the least-squares map that makes the kept block
before a removed span produce what the span produced (``accumulate``), their ridge solution with the error
before and after (``solve``), and what can be patched exactly. Below both its users: the scorer that ranks
spans by what the patch leaves (``score.residual``) and the repair that folds it (``repair.linear``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compressor.errors import BadInput, RuntimeFailure

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from compressor.architectures import ArchAdapter

DEFAULT_RIDGE = 1e-4  # relative: lambda = ridge * trace(M^T M) / d


def spans_of(removed: list[int]) -> list[list[int]]:
    """Runs of consecutive indices: [1, 2, 5] -> [[1, 2], [5]]."""
    spans: list[list[int]] = []
    for i in sorted(removed):
        if spans and i == spans[-1][-1] + 1:
            spans[-1].append(i)
        else:
            spans.append([i])
    return spans


def check_foldable(adapter: ArchAdapter, removed: list[int]) -> None:
    """Refuse, before any work, what the linear patch cannot repair exactly."""
    if adapter.no_fold:
        raise BadInput(f"--repair linear cannot be folded exactly into a {adapter.model_type} model: {adapter.no_fold}",
                       "use --repair distill (trained healing) for this architecture, or --repair none")
    if adapter.mlp_out is None:  # pragma: no cover - every registered decoder names its projection
        raise BadInput(f"no MLP output projection is known for {adapter.model_type}", "use --repair distill")
    if removed and min(removed) == 0:
        raise BadInput("--repair linear needs a kept block before every removed span, and layer 0 is removed "
                       "(nothing precedes it to fold a patch into)",
                       "keep layer 0 (--protect first), or use --repair distill")


def _rows(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Real tokens of a [batch, seq, d] tensor as float64 rows."""
    return t[mask].double()


def accumulate(acc: dict[str, Any], M_out: torch.Tensor, L_prev: torch.Tensor, L_end: torch.Tensor,
               mask: torch.Tensor) -> dict[str, Any]:
    """Add one batch's real tokens to the normal equations: M = the fold block's MLP output, the
    target Y = L_end - L_prev + M (what the span added, plus what the MLP gave)."""
    import torch

    M = _rows(M_out, mask)
    Y = _rows(L_end, mask) - _rows(L_prev, mask) + M
    if not acc:
        d = M.shape[1]
        acc = {"MtM": torch.zeros(d, d, dtype=torch.float64, device=M.device),
               "MtY": torch.zeros(d, d, dtype=torch.float64, device=M.device),
               "yy": torch.zeros((), dtype=torch.float64, device=M.device), "tokens": 0}
    acc["MtM"] += M.T @ M
    acc["MtY"] += M.T @ Y
    acc["yy"] += (Y * Y).sum()
    acc["tokens"] += int(M.shape[0])
    return acc


def solve(acc: dict[str, Any], ridge: float) -> tuple[torch.Tensor, dict[str, float]]:
    """T = (MtM + lambda I)^-1 MtY, with the relative error before (T = I: the plain cut) and after."""
    import torch

    MtM, MtY, yy = acc["MtM"], acc["MtY"], acc["yy"]
    d = MtM.shape[0]
    lam = ridge * float(torch.trace(MtM)) / d
    T = torch.linalg.solve(MtM + lam * torch.eye(d, dtype=MtM.dtype, device=MtM.device), MtY)

    def rel_err(X: torch.Tensor) -> float:
        e = torch.trace(X.T @ MtM @ X) - 2 * torch.trace(X.T @ MtY) + yy
        return float(e / yy) if float(yy) > 0 else 0.0

    eye = torch.eye(d, dtype=MtM.dtype, device=MtM.device)
    if not torch.isfinite(T).all():
        raise RuntimeFailure("the linear repair's solve produced non-finite values", "raise --ridge or use float32")
    return T, {"tokens": acc["tokens"], "ridge_lambda": lam, "error_before": rel_err(eye), "error_after": rel_err(T)}
