"""Selection rules: counts, rounding, the paper's mass rule done right (and the official bug),
protection, and every bad request."""
import math
from types import SimpleNamespace

import pytest

from compressor.errors import BadInput
from compressor.score.report import LayerScore
from compressor.score.select import count_for_ratio, parse_protect, select_layers


def rep(scores, method="avss", extra=None):
    return SimpleNamespace(num_layers=len(scores), method=method, extra=extra or {},
                           layers=[LayerScore(i, s) for i, s in enumerate(scores)])


SCORES = [9.0, 1.0, 5.0, 0.5, 3.0, 2.0, 8.0, 7.0]


def test_num_layers_takes_the_lowest():
    s = select_layers(rep(SCORES), num_layers=3)
    assert s.removed == [1, 3, 5] and s.kept == [0, 2, 4, 6, 7] and s.rule == "num-layers"


def test_ratio_rounds_half_up():
    assert count_for_ratio(0.25, 30) == 8  # 7.5
    assert count_for_ratio(0.25, 10) == 3  # 2.5 (Python's round() gives 2)
    assert select_layers(rep(SCORES), ratio=0.25).removed == [1, 3]


def test_ties_break_by_index():
    assert select_layers(rep([1.0, 1.0, 1.0, 2.0]), num_layers=2).removed == [0, 1]


def test_mass_sorts_first_then_accumulates():
    total = sum(SCORES)  # 35.5; lowest shares 0.5, 1, 2, 3 -> cumulative 6.5/35.5 = 0.18
    s = select_layers(rep(SCORES), mass=0.2)
    assert s.removed == [1, 3, 4, 5]
    assert sum(SCORES[i] for i in s.removed) / total <= 0.2


def test_mass_depth_order_reproduces_the_official_bug():
    # official code: cumsum in layer order, then keep rows <= mass -> a prefix of early layers
    s = select_layers(rep(SCORES), mass=0.3, mass_order="depth")
    assert s.removed == [0, 1]  # 9 + 1 = 10 / 35.5 = 0.28, then 15/35.5 > 0.3
    assert s.mass_order == "depth"


def test_protect():
    assert parse_protect("first,last", 8) == [0, 7]
    assert parse_protect("none", 8) == []
    assert parse_protect("2, 3", 8) == [2, 3]
    s = select_layers(rep(SCORES), num_layers=2, protect="3")
    assert s.removed == [1, 5]


def test_contiguous_block_for_angular():
    m = [[0.0] * 6 for _ in range(6)]
    for i in range(6):
        for j in range(6):
            m[i][j] = abs(i - j) * 0.1 + (0.5 if i == 0 else 0.0)
    m[2][4] = 0.01
    s = select_layers(rep([0.3, 0.2, 0.1, 0.4, 0.5], method="angular", extra={"angular_distance_matrix": m}), num_layers=2)
    assert s.removed == [2, 3] and "contiguous" in s.rule


@pytest.mark.parametrize("kwargs,msg", [
    ({"ratio": 1.5}, "between 0 and 1"),
    ({"ratio": 0.0}, "between 0 and 1"),
    ({"ratio": 0.01}, "rounds to 0"),
    ({"num_layers": 8}, "at least one layer must remain"),
    ({"num_layers": 0}, "at least 1"),
    ({"mass": 0.001}, "selects no layer"),
    ({"mass": 2.0}, "between 0 and 1"),
    ({"ratio": 0.25, "num_layers": 2}, "exactly one"),
    ({}, "exactly one"),
    ({"num_layers": 7, "protect": "first,last"}, "only 6 are not protected"),
    ({"num_layers": 1, "protect": "9"}, "out of range"),
    ({"num_layers": 1, "protect": "middle"}, "bad --protect"),
])
def test_bad_requests(kwargs, msg):
    with pytest.raises(BadInput, match=msg):
        select_layers(rep(SCORES), **kwargs)


def test_mass_needs_non_negative_scores():
    with pytest.raises(BadInput, match="non-negative"):
        select_layers(rep([1.0, -0.5, 2.0], method="leave-one-out"), mass=0.3)


def test_angular_scores_without_their_matrix_are_refused_not_scattered():
    with pytest.raises(BadInput, match="no angular_distance_matrix"):
        select_layers(rep([0.3, 0.2, 0.1, 0.4, 0.5], method="angular", extra={}), num_layers=2)


def _official(rows):
    """A report of official AVSS scores: (variance, sparsity) per layer, as avss_official records them."""
    from compressor.score.methods import avss_official

    out = avss_official([{"variance": v, "sparsity": s} for v, s in rows])
    return SimpleNamespace(num_layers=len(rows), method="avss", extra={}, layers=out.layers)


def _pandas_official_selection(rows, mass):
    """Transcription of the official AVSS.py selection, with pandas' semantics written out: scores
    variance / sparsity with no guard (x/0 = inf, 0/0 = NaN), shares = score / sum (sum skips NaN),
    cumsum in layer order skipping NaN (a NaN row keeps NaN), keep the rows with cumsum <= mass."""
    raw = [v / s if s else (math.inf if v else math.nan) for v, s in rows]
    total = sum(x for x in raw if not math.isnan(x))
    kept, cum = [], 0.0
    for i, x in enumerate(raw):
        share = x / total
        if math.isnan(share):
            continue
        cum += share
        if cum <= mass:
            kept.append(i)
    return kept


def test_mass_depth_follows_the_official_inf_nan_arithmetic_when_a_sparsity_is_zero():
    # layers 2 and 5 have no |a| < 1e-5 at all (sparsity 0): the official code's scores are inf there,
    # every finite layer's share becomes 0 and is selected, the inf layers never are
    rows = [(4.0, 0.01), (2.0, 0.02), (9.0, 0.0), (1.0, 0.05), (3.0, 0.01), (7.0, 0.0), (5.0, 0.02)]
    s = select_layers(_official(rows), mass=0.25, mass_order="depth")
    assert s.removed == _pandas_official_selection(rows, 0.25) == [0, 1, 3, 4, 6]
    # our guarded scores (variance / 1e-12) would have selected a different set with the same rule
    guarded = rep([v / max(sp, 1e-12) for v, sp in rows])
    assert select_layers(guarded, mass=0.25, mass_order="depth").removed != s.removed
    # without a zero sparsity the official arithmetic is the plain depth-order rule
    finite = [(v, sp or 0.03) for v, sp in rows]
    assert select_layers(_official(finite), mass=0.25, mass_order="depth").removed == \
        _pandas_official_selection(finite, 0.25)
