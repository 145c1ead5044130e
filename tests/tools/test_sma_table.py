"""SMA's Tables 5 / 6 sweeps (sweeps/sma_table5.yaml, sma_table6.yaml) lay out one row per configured method:
the three DPO data sources stay apart though they share loss=dpo."""

from test_analysis_tables import _res, _write

from analysis import table as T
from analysis.jobs import jobs_frame


def test_sma_methods_pick_the_sma_layout_with_one_row_each(tmp_path):
    rows = [
        ("sma_sft_self", "sft_self"),
        ("vanilla", "constant"),
        ("sma_dpo", "dpo"),
        ("sma_dpo_dataset_self", "dpo"),
        ("sma_dpo_dataset_dataset", "dpo"),
    ]
    jobs = [_res(loss=loss, method=m, acc=0.5 + i / 20) for i, (m, loss) in enumerate(rows)]
    (sec,) = T.build_table(jobs_frame(_write(tmp_path / "s", jobs)))
    assert sec.layout == "sma"
    ours = sec.ours().to_dict("records")
    assert [r["id"] for r in ours] == ["base", *[m for m, _ in rows]]
    labels = [sec.spec.label(r["id"]) for r in ours]
    assert labels[1:] == [
        "SFT / self (single label)",
        "SFT / dataset",
        "DPO / self / self",
        "DPO / dataset / self",
        "DPO / dataset / dataset",
    ]
