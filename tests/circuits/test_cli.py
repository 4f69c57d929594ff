"""`attnlab circuit` on a tiny saved Llama: results.json for each method, clear errors without a traceback."""

import json

import pytest
import torch

from attnlab import results
from tests.conftest import char_tokenizer
from tests.test_cli_errors import _own_cache, cli  # noqa: F401  (an autouse fixture: its own cache, offline)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import transformers

    d = tmp_path_factory.mktemp("tiny")
    cfg = transformers.LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    char_tokenizer("bos").save_pretrained(d)
    return d


@pytest.mark.slow
@pytest.mark.parametrize("method", ["patch", "path", "attrib", "dla", "saliency", "ig"])
def test_circuit_writes_a_results_json_a_report_can_draw(tiny, tmp_path, method):
    out = tmp_path / "out"
    steps = ["--steps", 4] if method == "ig" else []  # 4 integration points: a quick run
    r = cli("circuit", "--model", tiny, "--task", "induction", "--pairs", 3, "--method", method, *steps, "--out", out)
    assert r.exit_code == 0, r.output
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["kind"] == "circuit" and data["meta"]["settings"]["method"] == method
    width = {"ig": 3, "saliency": 20}.get(method, 4)  # pairs; 2 × 10 induction tokens; heads
    axes = {"ig": ["layer", "pair"], "saliency": ["layer", "position"]}.get(method, ["layer", "head"])
    assert data["grid_axes"] == axes and len(data["grid"]) == 2 and len(data["grid"][0]) == width
    loaded = results.load(out / "results.json")
    assert len(loaded.to_pandas()) == len(data["table"])
    if method == "attrib":
        assert set(data["meta"]["agreement"]) >= {"pearson", "spearman", "top_k_overlap"}
    if method == "ig":
        assert len(data["meta"]["paths"]) == 3 and len(data["meta"]["paths"][0]["random_drops"]) == 20
        assert data["meta"]["settings"]["steps"] == 4 and set(data["meta"]["summary"]) == {"p_target", "path_drop", "random_drop", "ig_sum"}
    if method == "saliency":
        assert len(data["meta"]["selective_grid"]) == 2 and {"normgrad", "selective"} <= set(data["table"][0])
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "<title>Circuit: " in page and "on induction (3 pairs)" in page
    again = cli("circuit", "--model", tiny, "--task", "induction", "--method", method, "--out", out)
    assert again.exit_code != 0 and "already holds results" in again.output


def test_circuit_reads_a_pairs_file_and_refuses_bad_ones_without_a_traceback(tiny, tmp_path):
    good = tmp_path / "pairs.jsonl"
    good.write_text(json.dumps({"clean": "abcab", "corrupted": "dbcab", "answer": "c", "wrong": "x"}) + "\n")
    r = cli("circuit", "--model", tiny, "--prompts", good, "--method", "dla", "--out", tmp_path / "o1")
    assert r.exit_code == 0, r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"clean": "abcab", "corrupted": "dbcab", "answer": "cc", "wrong": "x"}) + "\n")
    r = cli("circuit", "--model", tiny, "--prompts", bad, "--out", tmp_path / "o2")
    assert r.exit_code != 0 and "is 2 tokens ['c', 'c']" in r.output and "Traceback" not in r.output
    r = cli("circuit", "--model", tiny, "--out", tmp_path / "o3")
    assert r.exit_code != 0 and "exactly one of --prompts" in r.output
    r = cli("circuit", "--model", tiny, "--task", "ioi", "--method", "nope", "--out", tmp_path / "o4")
    assert r.exit_code != 0 and "unknown --method 'nope'" in r.output
    r = cli("circuit", "--model", tiny, "--task", "induction", "--method", "path", "--receivers", "L7H0", "--out", tmp_path / "o5")
    assert r.exit_code != 0 and "does not exist: the model has layers 0..1" in r.output
    r = cli("circuit", "--model", tiny, "--task", "induction", "--method", "patch", "--steps", 5, "--out", tmp_path / "o6")
    assert r.exit_code != 0 and "--layers and --steps apply to --method ig" in r.output
    r = cli("circuit", "--model", tiny, "--task", "induction", "--method", "ig", "--layers", "x-1", "--out", tmp_path / "o7")
    assert r.exit_code != 0 and "--layers takes 'all', a range like 26-29" in r.output
    r = cli("circuit", "--model", tiny, "--task", "induction", "--method", "ig", "--layers", "1-4", "--out", tmp_path / "o8")
    assert r.exit_code != 0 and "layers [2, 3, 4] do not exist: the model has layers 0..1" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o8").exists()  # nothing half-written


@pytest.mark.slow
def test_circuit_writes_figures_per_position_and_attnlab_report_redraws_it(tiny, tmp_path):
    out = tmp_path / "out"
    r = cli("circuit", "--model", tiny, "--task", "induction", "--pairs", 2, "--per", "position", "--figures", "svg", "--out", out)
    assert r.exit_code == 0, r.output
    data = json.loads((out / "results.json").read_text())
    assert data["grid_axes"] == ["layer", "position"] and (out / "figures" / "circuit.scores.svg").read_text().startswith("<svg")
    again = cli("report", out / "results.json", "--out", tmp_path / "again.html", "--figures", "png")
    assert again.exit_code == 0, again.output
    assert "circuit report" in again.output and (tmp_path / "figures" / "circuit.scores.png").stat().st_size > 1000
    assert (tmp_path / "again.html").read_text().count("layer × position") >= 1
    r = cli("circuit", "--model", tiny, "--task", "induction", "--method", "dla", "--per", "position", "--out", tmp_path / "o")
    assert r.exit_code != 0 and "--per position applies to --method patch and attrib" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_circuit_receivers_as_a_list_or_repeated(tiny, tmp_path):
    outs = []
    for i, args in enumerate((["--receivers", "L1H0,L1H2"], ["--receivers", "L1H0", "--receivers", "L1H2"])):
        r = cli("circuit", "--model", tiny, "--task", "induction", "--pairs", 2, "--method", "path", *args, "--out", tmp_path / f"o{i}")
        assert r.exit_code == 0, r.output
        outs.append(json.loads((tmp_path / f"o{i}" / "results.json").read_text()))
    assert outs[0]["meta"]["settings"]["receivers"] == outs[1]["meta"]["settings"]["receivers"] == ["L1H0", "L1H2"]
    assert outs[0]["grid"] == outs[1]["grid"]


@pytest.mark.slow
def test_circuit_ig_over_some_layers_labels_the_report_with_those_layers(tiny, tmp_path):
    out = tmp_path / "out"
    r = cli("circuit", "--model", tiny, "--task", "induction", "--pairs", 1, "--method", "ig", "--layers", "1", "--steps", 2, "--out", out)
    assert r.exit_code == 0, r.output
    data = json.loads((out / "results.json").read_text())
    assert data["grid_rows"] == ["layers.1"] and data["meta"]["paths"][0]["path"].startswith("L1N")
    page = (out / "report.html").read_text()
    assert '"cells":[{"layer":1,"pair":0' in page  # the searched layer, not row 0
