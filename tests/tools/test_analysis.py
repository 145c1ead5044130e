import json

from analysis.results import collect, main
from kaft.results import flatten


def _res(loss, avg):
    return {
        "status": "done",
        "config": {
            "loss": {"name": loss},
            "alpha": 0.1,
            "seed": 0,
            "strategy": {"name": "subset", "subset": "wrong", "ratio": None},
            "detection": {"name": "icl"},
        },
        "metrics": {"benchmarks": {"b1": {"acc": avg}}, "average": avg},
        "timings": {"train": 1.5},
        "job": {"run_dir": "x"},
    }


def test_collect_flattens_every_results_json(tmp_path, capsys):
    for i, (loss, avg) in enumerate([("kaft", 0.7), ("eaft", 0.6)]):
        d = tmp_path / "sweep" / str(i)
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(_res(loss, avg)))
    rows = collect(tmp_path)
    assert [(r["loss"], r["average"], r["acc/b1"], r["time/train"]) for r in rows] == [
        ("kaft", 0.7, 0.7, 1.5),
        ("eaft", 0.6, 0.6, 1.5),
    ]
    assert [(r["status"], r["strategy"], r["subset"], r["detection"], r["method"]) for r in rows] == [
        ("done", "subset", "wrong", "icl", None)
    ] * 2
    assert flatten({"config": {"method": {"name": "kaft"}}})["method"] == "kaft"
    assert flatten({})["average"] is None
    # alpha / beta / eaft_alpha name what the loss used (config.loss), top-level alpha only for older results
    new = flatten({"config": {"alpha": None, "loss": {"name": "eaft", "eaft_alpha": 1.0}}})
    assert (new["alpha"], new["eaft_alpha"]) == (None, 1.0)
    assert flatten({"config": {"alpha": 0.5, "loss": {"name": "kaft", "alpha": 0.3}}})["alpha"] == 0.3
    assert rows[0]["alpha"] == 0.1  # an older results.json: top-level alpha
    assert main([str(tmp_path), "--csv", str(tmp_path / "t.csv")]) == 0
    assert (tmp_path / "t.csv").read_text().splitlines()[0].startswith("loss,alpha")
    assert main([str(tmp_path / "nothing")]) == 1
