"""sweep(): every executor gives the same numbers, the table is mean ± 95% CI, the report stands alone."""

import re
import sys

import pytest

from attnlab import results
from attnlab.stats import mean_ci
from attnlab.train import SweepResult, sweep
from tests.report.helpers import fetches, shown, specs
from tests.train.toy import Lag

SMALL = {
    "mechanisms": ["mha", "linear"],
    "model_options": {"dim": 16, "heads": 2, "layers": 1},
    "train_options": {"steps": 40, "batch_size": 16, "lr": 3e-3, "eval_every": 20, "eval_batches": 2, "target": 0.99},
    "threads": 1,
}


@pytest.fixture(scope="module")
def serial():
    return sweep(Lag, {}, seeds=3, executor="serial", **SMALL)


def test_serial_and_process_executors_give_the_same_numbers(serial):
    pooled = sweep(Lag, {}, seeds=3, executor="process", workers=2, **SMALL)
    keys = ("mechanism", "seed", "steps", "train_loss", "test_loss", "test_metric", "steps_to_target")
    assert [{k: r[k] for k in keys} for r in pooled.runs] == [{k: r[k] for k in keys} for r in serial.runs]
    assert pooled.meta["settings"]["executor"] == "process" and pooled.meta["settings"]["workers"] == 2


def test_every_mechanism_sees_the_same_data_for_a_seed(serial):
    data = {(r["mechanism"], r["seed"]): r["settings"] for r in serial.runs}
    for seed in (0, 1, 2):
        a, b = data["mha", seed], data["linear", seed]
        assert {k: v for k, v in a.items() if k != "model"} == {k: v for k, v in b.items() if k != "model"}


def test_the_table_is_the_mean_and_95_percent_ci_over_seeds(serial):
    for row in serial.summary:
        finals = [r["final_metric"] for r in serial.runs if r["mechanism"] == row["mechanism"]]
        e = mean_ci(finals)
        assert row["final_metric"]["n"] == 3 and row["final_metric"]["mean"] == pytest.approx(e.mean)
        assert row["final_metric"]["text"] == str(e)
        assert re.fullmatch(r"\d/3", row["reached_target"])
    table = serial.table()
    assert table.splitlines()[0].startswith("| mechanism | params | final metric | 95% CI")
    assert "| mha |" in table and "| linear |" in table


def test_mean_curves_carry_early_stopped_runs_forward(serial):
    curve = serial.curves["mha"]["test_metric"]
    assert curve["steps"] == [20, 40] and len(curve["mean"]) == len(curve["low"]) == 2


def test_save_and_load_round_trip(serial, tmp_path):
    path = serial.save(tmp_path / "results.json")
    again = SweepResult.load(path)
    assert results.to_json(again) == path.read_text()  # what was read writes back the very same file
    assert (again.meta["format"], again.meta["kind"], again.meta["schema"]) == ("attnlab.result", "sweep", 2)
    assert again.summary[0]["final_metric"] == serial.summary[0]["final_metric"]
    assert "NaN" not in path.read_text()  # strict JSON: missing values are null
    assert {"test_metric", "train_loss"} <= set(specs(again.html()))  # a loaded result renders, nulls and all
    assert {"attnlab", "torch", "python"} <= set(again.meta["versions"]) and again.meta["settings"]["seeds"] == [0, 1, 2]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="is not an attnlab sweep result"):
        SweepResult.load(tmp_path / "bad.json")


def test_report_is_self_contained_html(serial, tmp_path):
    text = serial.report(tmp_path / "report.html").read_text()
    figures = specs(text)
    assert text.startswith("<!doctype html>") and list(figures) == ["test_metric", "train_loss"]
    marks = [layer["mark"]["type"] for layer in figures["test_metric"]["layer"]]
    assert marks[0] == "area" and "line" in marks  # the CI band under the mean line
    band = {(p["series"], p["x"]): (p["low"], p["high"]) for p in figures["test_metric"]["datasets"]["points"]}
    c = serial.curves["mha"]["test_metric"]
    assert band[("mha", c["steps"][-1])] == pytest.approx((c["low"][-1], c["high"][-1]))
    assert fetches(text) == []  # nothing fetched (tests/report/test_browser.py watches requests)
    assert "Task comparison on tests.train.toy.Lag: 2 mechanisms × 3 seeds" in shown(text) and "±" in text


def test_ray_executor_without_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match="pip install ray"):
        sweep(Lag, {}, seeds=1, executor="ray", **SMALL)


@pytest.mark.parametrize(
    ("args", "kw", "error", "message"),
    [
        (("no_such_task",), {}, ValueError, "unknown task 'no_such_task'"),
        ((Lag,), {"mechanisms": ["mha", "reversed"]}, ValueError, "bidirectional only"),
        ((Lag,), {"executor": "dask"}, ValueError, "unknown executor 'dask'"),
        ((Lag,), {"seeds": 0}, ValueError, "seeds must be a count >= 1"),
        ((Lag,), {"train_options": {"seed": 1}}, TypeError, "seeds come from seeds="),
    ],
)
def test_bad_sweeps_fail_before_any_run(args, kw, error, message):
    with pytest.raises(error, match=message):
        sweep(*args, **{**SMALL, **kw})
