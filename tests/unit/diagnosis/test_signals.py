"""kaft.diagnosis.signals against hand-computed values: ILP's pass@N, Best-of-N, unlearned, K(x), JS (Eq. 3),
high-confidence error (Eq. 6); Ren's ranking consistency (Spearman's rho as the Pearson r of ranks) and KL."""

import math

import pytest

from kaft.diagnosis import signals as sig


def test_js_divergence_by_hand():
    assert sig.js_divergence([1, 0], [0, 1]) == pytest.approx(math.log(2))  # disjoint: the maximum, ln 2
    assert sig.js_divergence([0.3, 0.7], [0.3, 0.7]) == pytest.approx(0.0)
    # M = (0.75, 0.25): ½·½ ln(4/3) (from P = (½, ½)) + ½ ln(4/3) (from Q = (1, 0))
    assert sig.js_divergence([0.5, 0.5], [1, 0]) == pytest.approx(0.75 * math.log(4 / 3))
    assert sig.js_divergence([2, 2], [3, 0]) == pytest.approx(0.75 * math.log(4 / 3))  # normalised first
    assert sig.js_divergence([0.2, 0.8], [0.6, 0.4]) == pytest.approx(sig.js_divergence([0.6, 0.4], [0.2, 0.8]))


def test_kl_divergence_by_hand():
    assert sig.kl_divergence([0.5, 0.5], [0.25, 0.75], eps=0) == pytest.approx(0.5 * math.log(4 / 3))
    assert sig.kl_divergence([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)
    assert math.isfinite(sig.kl_divergence([0.5, 0.5], [1.0, 0.0]))  # smoothed: finite, large
    assert sig.kl_divergence([0.5, 0.5], [1.0, 0.0]) > 5


def test_ranks_share_ties():
    assert sig.ranks([0.4, 0.3, 0.2, 0.1]) == [1, 2, 3, 4]
    assert sig.ranks([0.1, 0.5, 0.5, 0.2]) == [4, 1.5, 1.5, 3]


def test_rank_consistency_is_spearman():
    assert sig.rank_consistency([0.4, 0.3, 0.2, 0.1], [0.9, 0.05, 0.03, 0.02]) == pytest.approx(1.0)
    assert sig.rank_consistency([0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(-1.0)
    # ranks (1,2,3,4) vs (2,1,4,3): d² = 4, rho = 1 - 6·4 / (4·15) = 0.6
    assert sig.rank_consistency([0.4, 0.3, 0.2, 0.1], [0.3, 0.4, 0.1, 0.2]) == pytest.approx(0.6)
    assert sig.rank_consistency([0.25] * 4, [0.4, 0.3, 0.2, 0.1]) is None  # no ranking to compare


class _Fixed:
    def __init__(self, values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


def test_sample_runs_draw_from_the_answer_token_distribution():
    # cumulative 0.3, 0.6, 0.9: u = 0.1 -> A, 0.35 -> B, 0.95 -> the 0.1 left over, no option (-1)
    assert sig.sample_runs([0.3, 0.3, 0.3], 3, _Fixed([0.1, 0.35, 0.95])) == [0, 1, -1]
    assert sig.sample_runs([0, 1, 0, 0], 4, _Fixed([0.0, 0.2, 0.5, 0.99])) == [1, 1, 1, 1]


def test_pass_rate_best_of_n_unlearned():
    assert sig.pass_rate([1, 1, 0, -1, 1], 1) == pytest.approx(0.6)
    assert sig.best_of_n([0, 2, 2], [0.3, 0.9, 0.9]) == 2
    assert sig.best_of_n([3, 1], [0.5, 0.5]) == 3  # the first run on ties
    assert sig.unlearned(0.4, 0.5) and not sig.unlearned(0.5, 0.5)  # "falls below" tau: strict


def test_knows_and_high_confidence_error():
    assert sig.knows(2, 2) and not sig.knows(1, 2)
    assert sig.high_conf_error(2, 0.85, 1, 0.8)
    assert not sig.high_conf_error(2, 0.8, 1, 0.8)  # above tau_c: strict
    assert not sig.high_conf_error(1, 0.99, 1, 0.8)  # a confident right answer is no error


def test_argmax_and_normalize():
    assert sig.argmax([0.2, 0.4, 0.4]) == 1
    assert sig.normalize([1, 3]) == [0.25, 0.75] and sig.normalize([0, 0]) == [0.5, 0.5]
