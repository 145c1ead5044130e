"""analysis.report's claims on fabricated sweep trees (no model, fast): each claim is a paired difference over
seeds with a 95 % t interval, and only an interval that excludes 0 decides it (issue 13: sign agreement over three
seeds is no test); explanatory text follows the computed intervals."""

import pytest
from scipy import stats as st
from test_analysis_tables import _res, _write

from analysis import claims as C
from analysis import report as R
from analysis import stats as S
from analysis import testbed_section as TBS

TB = {"model": "testbed", "dataset": "testbed"}
# per seed: an offset for every row, and KaFT - no-conflict (all positive but tiny next to its spread)
SEEDS = {0: (0.00, 0.001), 1: (0.02, 0.0005), 2: (0.01, 0.03), 3: (-0.01, 0.0002), 4: (0.03, 0.02)}


def _det(recall, wrong):
    return {
        "mean": 0.6,
        "std": 0.2,
        "histogram_10bins": [1] * 10,
        "auroc_contradict": 0.9,
        "mean_by_kind": {"contradict": 0.1, "known": 0.8},
        "contradict_in_lowest_subset": recall,
    }, wrong


def _sweeps(root, seeds=SEEDS):
    main, rewards, ab, lam = [], [], [], []
    for seed, (bump, gap) in seeds.items():
        main += [
            _res(strategy="none", seed=seed, acc=0.50 + bump, **TB),
            _res(strategy="wrong_only", seed=seed, acc=0.20 + bump, **TB),
            _res(strategy="full", seed=seed, acc=0.60 + bump, **TB),
            _res(strategy="no_conflict", seed=seed, acc=0.66 + bump, **TB),
            _res(strategy="full", loss="kaft", seed=seed, acc=0.66 + bump + gap, **TB),
        ]
        det, wrong = _det(0.8, 50)
        main[-1].update(detection=det, subsets={"wrong": wrong, "might-wrong": 50, "might-right": 50, "right": 50})
        # constant > auto-adapt (contradicted) < KaFT (reproduced)
        rewards += [
            _res(strategy="full", loss=lo, seed=seed, acc=a + bump, **TB)
            for lo, a in (("constant", 0.63), ("auto_adapt", 0.60), ("kaft", 0.65))
        ]
        # accuracy falls with alpha; flat in beta but at alpha=0.1 a larger beta lowers it
        ab += [
            _res(
                strategy="full",
                loss="kaft",
                alpha=a,
                beta=b,
                seed=seed,
                acc=0.7 - a / 10 + bump - (0.02 * b if a == 0.1 else 0),
                **TB,
            )
            for a in (0.1, 0.5, 1.0)
            for b in (0.1, 0.5, 1.0)
        ]
        lam += [
            _res(strategy="wrong_ratio", ratio=r, seed=seed, acc=0.66 - r / 10 + bump, **TB) for r in (0.0, 0.25, 1.0)
        ]
    _write(root / "table6_halueval", main)
    _write(root / "table12_rewards", rewards)
    _write(root / "table13_alpha_beta", ab)
    _write(root / "table10_wrong_ratio", lam)
    return root


def _by_claim(root):
    return {f.claim: f for f in R.findings(root)}


def test_interval_is_scipys_t_interval():
    d = [1.0, 2.5, -0.5, 3.0]
    iv = S.t_interval(d)
    low, high = st.t.interval(0.95, len(d) - 1, loc=st.tmean(d), scale=st.sem(d))
    assert (iv.low, iv.high, iv.n) == (pytest.approx(low), pytest.approx(high), 4)
    assert iv.half == pytest.approx(3.182446 * st.sem(d), rel=1e-6)  # t_{0.975, 3}
    assert S.verdict(iv) == "not resolved" and S.verdict(S.t_interval([0.8, 1.0, 1.2])) == "reproduced"
    assert S.verdict(S.t_interval([-0.8, -1.0, -1.2])) == "contradicted"
    assert S.verdict(S.t_interval([2.0])) == "not resolved (1 seed)"
    assert S.verdict(S.t_interval([])).startswith("n/a")
    assert S.verdict(S.t_interval([6.9, 7.0, 7.1]), margin=5.0) == "reproduced"
    assert S.verdict(S.t_interval([4.0, 4.1, 3.9]), margin=5.0) == "contradicted"  # a drop, but under the margin


def test_three_way_verdicts_over_seeds(tmp_path):
    f = _by_claim(_sweeps(tmp_path))
    tiny = f[C.KAFT_VS_NO_CONFLICT]
    assert all(d > 0 for d in tiny.diffs) and len(tiny.diffs) == 5  # every seed agrees in sign ...
    assert tiny.verdict == "not resolved" and tiny.interval.low < 0  # ... but the interval contains 0
    clear = f["Training on the wrong subset alone collapses the model"]
    assert clear.verdict == "reproduced" and clear.difference() == "+30.0 ± 0.0 [+30.0, +30.0]"
    assert clear.paper.startswith("base − wrong-only > 0: ")
    assert f["Reward strategies: auto-adapt > constant"].verdict == "contradicted"
    assert f["Reward strategies: KaFT > auto-adapt"].verdict == "reproduced"


def test_orderings_become_adjacent_pairwise_claims(tmp_path):
    f = _by_claim(_sweeps(tmp_path))
    alpha = [c for c in f if c.startswith("Accuracy falls as α")]
    assert [c.split(": ", 1)[1] for c in alpha] == ["α=0.1 > α=0.5", "α=0.5 > α=1"]
    assert all(f[c].verdict == "reproduced" for c in alpha)
    assert f[alpha[0]].interval.mean == pytest.approx(4.0 - 2 * 1.6 / 3)  # mean over β (β costs at α = 0.1)
    beta = [c for c in f if c.startswith("A middle β")]
    assert [c.rsplit(": ", 1)[1] for c in beta] == ["β=0.5 > β=0.1", "β=0.5 > β=1"]
    assert S.adjacent(["a", "b", "c", "d"]) == [("a", "b"), ("b", "c"), ("c", "d")]


def test_explanations_follow_the_numbers(tmp_path):
    out = _sweeps(tmp_path)
    text = "\n".join(R.disagreements(R.findings(out), out, {str(s): 40 for s in SEEDS}))
    assert "**Reward strategies: auto-adapt > constant** — contradicted" in text
    assert "KaFT − no-conflict is not resolved here" in text
    # 80 % of 40 contradictions in a wrong subset of 50: recall 80 %, precision 64 %
    assert "holds 80.0 ± 0.0 % of the planted contradictions (recall)" in text
    assert "64.0 ± 0.0 % of its items are contradictions (precision)" in text
    assert "raising β (the might-wrong subset's reward) from 0.5 to 1 lowers accuracy" in text
    assert "(λ = 0 → 25 %) lowers accuracy" in text
    assert "restores" not in text and "halves" not in text
    assert "precision n/a" in "\n".join(TBS.score_by_kind(out))  # no count of contradictions: said, not guessed


def test_one_seed_is_not_resolved(tmp_path):
    f = _by_claim(_sweeps(tmp_path, {0: SEEDS[0]}))
    assert {c.verdict for c in f.values()} == {"not resolved (1 seed)"}


def test_render_table_and_tables(tmp_path):
    out = _sweeps(tmp_path / "sweeps")
    text = R.render(out, list(SEEDS), {"table6_halueval": 60.0}, tmp_path / "REPORT.md")
    assert "| claim | paper's direction | testbed (mean ± std) | paired difference | seeds | verdict |" in text
    row = next(ln for ln in text.splitlines() if ln.startswith(f"| {C.KAFT_VS_NO_CONFLICT} |"))
    assert "| KaFT − no-conflict > 0: " in row and row.endswith("| 5 | not resolved |")
    off = text.split("## Where the testbed does not reproduce the paper", 1)[1].split("## Tables", 1)[0]
    assert "**Training on the wrong subset alone collapses the model**" not in off
    assert "Wall time of the sweeps: 1.0 min" in text and "### `sweeps/table13_alpha_beta.yaml`" in text
    assert (tmp_path / "figures" / "fig4_alpha_beta.png").exists()


def test_no_results_says_so(tmp_path):
    (tmp_path / "sweeps").mkdir()
    text = R.render(tmp_path / "sweeps", [0], {}, tmp_path / "REPORT.md")
    assert "No results yet" in text and "Every claim above is reproduced" not in text


def test_cli_no_run_renders_without_results(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "testbed_models", lambda seeds, cache_dir: [])
    assert R.main(["--no-run", "--sweeps-dir", str(tmp_path / "s"), "--out", str(tmp_path / "R.md")]) == 0
    text = (tmp_path / "R.md").read_text()
    assert "--seeds 0,1,2,3,4" in text and "No results yet" in text


def test_claims_are_data(tmp_path):
    out = _sweeps(tmp_path)
    layouts = {"table12_rewards": "12"}
    claim = C.Claim(
        "table12_rewards",
        "{hi} beats {lo} by more than a point",
        "made up",
        (("kaft", "constant"),),
        labels=C.MAIN,
        margin=1.0,
    )
    (f,) = C.findings(out, layouts, [claim])
    assert f.claim == "KaFT beats constant by more than a point" and f.paper == "KaFT − constant > 1: made up"
    assert f.interval.mean == pytest.approx(2.0) and f.verdict == "reproduced"
    assert C.findings(out, layouts, [C.Claim("table12_rewards", "x", "y", (("kaft", "dpo"),), C.BOTH)]) == []
    assert {c.sweep for c in C.CLAIMS} <= set(R.SWEEPS)
