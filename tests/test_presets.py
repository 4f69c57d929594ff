"""Training presets (issue 17): the papers' settings as differences from quick defaults, options given winning."""

import json

import pytest
from typer.testing import CliRunner

from attnlab.cli import app
from attnlab.presets import DEFAULTS, PRESETS, QUICK, resolve
from attnlab.registry import names
from attnlab.train.sweep import make_task


def test_without_a_preset_the_task_gets_its_quick_sizes_and_given_options_win():
    run = resolve(None, "mqar", {"pairs": 2}, {"steps": 7, "lr": None})
    assert run["task_options"] == {"vocab_size": 64, "seq_len": 32, "pairs": 2}  # QUICK, then --task-option
    assert run["steps"] == 7 and run["lr"] == DEFAULTS["lr"] and run["dim"] == DEFAULTS["dim"]  # None: not given
    assert resolve(None, "parity", {}, {})["task_options"] == {}  # a task without quick sizes keeps its own defaults
    assert resolve(None, "copy_far", {}, {})["steps"] == 300


def test_a_preset_is_a_dict_of_differences_and_names_its_task():
    run = resolve("active_dormant", None, {}, {"heads": 2})
    assert run["task"] == "bigram_backcopy" and run["task_options"] == {"seq_len": 256}  # not the quick 64
    assert (run["layers"], run["heads"], run["lr"], run["batch_size"]) == (1, 2, 3e-3, DEFAULTS["batch_size"])


def test_bad_presets_and_tasks_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="unknown preset 'zoology': did you mean zoology_mqar"):
        resolve("zoology", None, {}, {})
    with pytest.raises(ValueError, match="paper 56's setting of task mqar, got --task parity"):
        resolve("zoology_mqar", "parity", {}, {})
    with pytest.raises(ValueError, match="no task: give --task NAME"):
        resolve(None, None, {}, {})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_its_task_and_sets_only_known_options(name):
    p = PRESETS[name]
    assert p["task"] in names("tasks") and p["paper"] and p["about"]
    assert set(p) - {"paper", "about", "task", "task_options"} <= set(DEFAULTS)
    make_task(p["task"], p["task_options"])  # the paper's sizes are valid options of the task


def test_quick_sizes_are_valid_options_of_registered_tasks():
    for task, diff in QUICK.items():
        assert task in names("tasks") and set(diff) - {"task_options"} <= set(DEFAULTS)
        make_task(task, diff.get("task_options", {}))


def test_train_with_a_preset_records_it_and_uses_its_model(tmp_path):
    small = ["--steps", "2", "--eval-every", "1", "--eval-batches", "1", "--batch-size", "4", "--threads", "1"]
    r = CliRunner().invoke(app, ["train", "--preset", "scan_snap", *small, "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    settings = json.loads((tmp_path / "o" / "results.json").read_text())["meta"]["settings"]
    assert settings["preset"] == "scan_snap" and settings["task"] == "scan_snap"
    assert {k: settings["model_options"][k] for k in ("layers", "heads", "mlp", "positions")} == {
        "layers": 1,
        "heads": 1,
        "mlp": False,
        "positions": "none",
    }
