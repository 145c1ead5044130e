"""Ren et al. Exp-IV's partial Spearman correlation (analysis/ren_consistency.py), checked against the closed form
r_xy.z = (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)) over Spearman coefficients, and its Table 3 layout."""

import json
import math

import pytest
from scipy import stats

from analysis import ren_consistency as R

X = [0.1, 0.4, 0.35, 0.8, 0.6, 0.9, 0.2, 0.55]
Y = [0.30, 0.42, 0.41, 0.52, 0.47, 0.50, 0.33, 0.45]
Z = [0.5, 0.1, 0.7, 0.2, 0.9, 0.4, 0.3, 0.6]


def _rho(a, b):
    return stats.spearmanr(a, b).statistic


def test_partial_spearman_equals_the_closed_form_and_its_t_test():
    rxy, rxz, ryz = _rho(X, Y), _rho(X, Z), _rho(Y, Z)
    want = (rxy - rxz * ryz) / math.sqrt((1 - rxz**2) * (1 - ryz**2))
    got = R.partial_spearman(X, Y, Z)
    assert got.r == pytest.approx(want, abs=1e-12) and got.n == 8
    t = want * math.sqrt(5 / (1 - want**2))  # n - 3 degrees of freedom
    assert got.p == pytest.approx(2 * stats.t.sf(abs(t), 5), rel=1e-9)


def test_a_constant_control_leaves_spearman_and_a_monotone_pair_gives_one():
    assert R.partial_spearman(X, Y, [1.0] * 8).r == pytest.approx(_rho(X, Y), abs=1e-12)
    assert R.partial_spearman(X, [2 * x + 1 for x in X], Z).r == pytest.approx(1.0)
    with pytest.raises(ValueError, match=">= 4"):
        R.partial_spearman(X[:3], Y[:3], Z[:3])


def _job(root, i, cons, acc, base):
    d = root / f"{i}_job"
    d.mkdir(parents=True)
    res = {
        "status": "done",
        "metrics": {"benchmarks": {"b": {"acc": acc}}},
        "base_metrics": {"benchmarks": {"b": {"acc": base}}},
        "diagnosis": {"ren": {"consistency_mean": cons}},
    }
    (d / "results.json").write_text(json.dumps(res))


def test_the_table_reads_jobs_with_a_diagnosis(tmp_path, capsys):
    for i, (x, y, z) in enumerate(zip(X, Y, Z)):
        _job(tmp_path, i, x, y, z)
    (tmp_path / "9_nodiag").mkdir()
    (tmp_path / "9_nodiag" / "results.json").write_text(json.dumps({"status": "done", "metrics": {}}))
    rows = R.job_rows([tmp_path])
    assert len(rows) == 8
    assert R.main([str(tmp_path)]) == 0
    want = R.partial_spearman(X, Y, Z)
    assert f"| b | 8 | {want.r:.2f} | {want.p:.3f} |" in capsys.readouterr().out
    assert R.main([str(tmp_path / "9_nodiag")]) == 1
