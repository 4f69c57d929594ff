"""`attnlab train` and `attnlab bench tasks`: small real runs, and bad input exits non-zero without a traceback."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnlab import tasks
from tests.report.helpers import shown, specs

TOY = "tests.train.toy:Lag"


def attnlab(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    root = Path(__file__).resolve().parents[1]  # where tests.train.toy imports from
    return subprocess.run([sys.executable, "-m", "attnlab.cli", *args], capture_output=True, text=True, env=env, cwd=root, timeout=600)


SMALL = ["--steps", "40", "--eval-every", "20", "--eval-batches", "1", "--batch-size", "16", "--dim", "16", "--heads", "2", "--layers", "1"]


def test_train_writes_checkpoint_results_and_report_then_resumes(tmp_path):
    out = tmp_path / "run"
    r = attnlab("train", "--task", TOY, "--mechanism", "mha", "--threads", "1", "--out", str(out), *SMALL)
    assert r.returncode == 0, r.stderr
    assert "final test metric" in r.stdout and "test metric" in r.stdout
    assert {p.name for p in out.iterdir()} == {"checkpoint.pt", "results.json", "report.html"}
    data = json.loads((out / "results.json").read_text())
    assert data["runs"][0]["steps"] == [20, 40] and data["meta"]["settings"]["command"] == "attnlab train"
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>") and f"Training run: mha on {TOY}, seed 0" in shown(page)  # titled for the run
    assert "Task comparison" not in page and "1 mechanisms" not in page
    again = attnlab("train", "--task", TOY, "--mechanism", "mha", "--threads", "1", "--out", str(out), *SMALL)
    assert again.returncode == 0 and "resuming from" in again.stdout
    assert json.loads((out / "results.json").read_text())["runs"][0]["test_metric"] == data["runs"][0]["test_metric"]


@pytest.mark.skipif("mqar" not in {t.name for t in tasks.available()}, reason="the mqar task is not registered")
def test_train_a_registered_task_with_task_options(tmp_path):
    opts = ["--task-option", "vocab_size=32", "--task-option", "seq_len=16", "--task-option", "pairs=2"]
    r = attnlab("train", "--task", "mqar", *opts, "--threads", "1", "--out", str(tmp_path), *SMALL)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["settings"]["task_options"] == {
        "vocab_size": 32,
        "seq_len": 16,
        "pairs": 2,
    }


def test_bench_tasks_prints_the_table_and_writes_results(tmp_path):
    r = attnlab(
        "bench",
        "tasks",
        "--task",
        TOY,
        "--mechanisms",
        "mha,linear",
        "--seeds",
        "2",
        "--executor",
        "serial",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
        *SMALL,
    )
    assert r.returncode == 0, r.stderr
    assert "mha" in r.stdout and "linear" in r.stdout and "95% CI" in r.stdout
    data = json.loads((tmp_path / "results.json").read_text())
    assert [s["mechanism"] for s in data["summary"]] == ["mha", "linear"] and data["meta"]["settings"]["seeds"] == [0, 1]
    assert "test_metric" in specs((tmp_path / "report.html").read_text())
    r = attnlab("report", str(tmp_path / "results.json"), "--out", str(tmp_path / "again.html"))  # a sweep re-renders
    assert r.returncode == 0 and "sweep report" in r.stdout and "test_metric" in specs((tmp_path / "again.html").read_text())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--task", "no_such_task"], "unknown task 'no_such_task'"),
        (["train", "--task", TOY, "--mechanism", "mhaa"], "unknown mechanism 'mhaa' (did you mean 'mha'"),
        (["train", "--task", TOY, "--task-option", "lag"], "--task-option takes key=value"),
        (["train", "--task", TOY, "--out", "{d}/file"], "is a file"),
        (["train", "--task", "tests.train.toy:Nope"], "cannot import Nope"),
        (["bench", "tasks", "--task", "no_such_task"], "valid tasks are"),
        (["bench", "tasks", "--task", TOY, "--mechanisms", "mha,reversed"], "bidirectional only"),
        (["bench", "tasks", "--task", TOY, "--mechanisms", "mha,nope"], "valid mechanisms are"),
        (["bench", "tasks", "--task", TOY, "--executor", "dask"], "unknown executor 'dask'"),
        (["bench", "tasks", "--task", TOY, "--out", "{d}/file"], "is a file"),
    ],
)
def test_bad_input_exits_nonzero_with_a_message_and_no_traceback(tmp_path, args, message):
    (tmp_path / "file").write_text("x")
    r = attnlab(*[a.format(d=tmp_path) for a in args], *([] if "--out" in args else ["--out", str(tmp_path / "out")]), "--steps", "2")
    assert r.returncode == 1, r.stdout
    assert message in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="Ray is installed")
def test_bench_with_ray_missing_says_how_to_install_it(tmp_path):
    r = attnlab("bench", "tasks", "--task", TOY, "--executor", "ray", "--seeds", "1", "--out", str(tmp_path), *SMALL)
    assert r.returncode == 1 and "pip install ray" in r.stderr and "Traceback" not in r.stderr
