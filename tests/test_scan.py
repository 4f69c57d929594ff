"""attnlab.scan(): findings, provenance, save/load, the HTML report and the pandas view."""

import json

import pytest

from attnlab.results import ScanResult
from attnlab.runs.scan import scan
from tests.report.helpers import fetches, specs


@pytest.fixture(scope="module")
def result(smollm2):
    model, tok = smollm2
    text = "Full fathom five thy father lies; of his bones are coral made; those are pearls that were his eyes."
    return scan(
        model,
        tok,
        [text * 3],
        probes=["sink", "entropy", "patterns", "extreme", "layer_importance", "retrieval"],
        needle_lengths=[512],
        needle_depths=[0.5],
        settings={"test": True},
    )


def test_result_carries_settings_versions_and_model(result):
    m = result.meta
    assert (m["format"], m["kind"], m["schema"]) == ("attnlab.result", "scan", 2)
    assert m["settings"]["needle_lengths"] == [512] and m["settings"]["test"] is True
    assert {"attnlab", "torch", "transformers"} <= set(m["versions"])
    assert m["model"]["identity"] == "smollm2-135m" and m["model"]["layers"] == 30 and m["model"]["heads"] == 9
    w = m["model"]["weights"]  # the exact weights: the embedded GGUF, dequantised
    assert w["format"] == "gguf Q4_1 dequantised to float32" and len(w["sha256"]) == 64
    assert [i["kind"] for i in m["inputs"]] == ["text", "repeated", "needle"]


def test_every_probe_reports_layer_by_head_findings(result):
    for probe in ("sink", "entropy", "patterns", "retrieval"):
        heat = next(iter(result.findings[probe]["heatmaps"].values()))
        assert len(heat) == 30 and all(len(row) == 9 for row in heat), probe
        assert result.findings[probe]["notes"], probe
    assert len(result.findings["layer_importance"]["tables"]["redundancy_ranking"]) == 30
    assert result.maps and all(len(m["matrix"]) == len(m["tokens"]) for m in result.maps)
    reasons = {why for m in result.maps for why in m["why"].split(" and ")}  # heads found by finding id
    assert {"strongest previous-token head", "strongest induction head", "strongest first-token sink head"} <= reasons


def test_save_load_and_report_are_self_contained(result, tmp_path):
    path = result.save(tmp_path / "results.json")
    again = ScanResult.load(path)
    assert again.findings == json.loads(json.dumps(result.findings))
    html = again.report(tmp_path / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "retrieval heads" in html
    assert {"retrieval.score", "sink.first_token_mass", "attention_maps"} <= set(specs(html))
    assert f"sha256 {result.meta['model']['weights']['sha256'][:16]}" in html and "Q4_1" in html
    assert fetches(html) == []  # nothing fetched (tests/report/test_browser.py watches requests)
    assert html.count("window.vegaEmbed=") == 1  # the JavaScript inlined once
    assert "<!doctype" not in result._repr_html_() and "attnlab-report" in result._repr_html_()


def test_to_pandas_is_a_long_table(result):
    df = result.to_pandas()
    assert list(df.columns) == ["probe", "metric", "layer", "head", "position", "token", "value"]
    assert set(df["probe"]) >= {"sink", "entropy", "patterns", "retrieval"}
    assert len(df[(df.probe == "entropy") & (df.metric == "normalized")]) == 270


def test_bad_inputs_are_refused(smollm2):
    model, tok = smollm2
    with pytest.raises(ValueError, match="text 1 is empty"):
        scan(model, tok, ["  "], probes=["entropy"], repeated=False)
    with pytest.raises(ValueError, match=r"has 5\d+ tokens, more than max_len=64: pass truncate=True"):
        scan(model, tok, ["word " * 500], probes=["entropy"], repeated=False, max_len=64)
    with pytest.raises(ValueError, match="exceeds the 8192 positions the model was trained on"):
        scan(model, tok, ["hi"], probes=["entropy"], max_len=9000)
    with pytest.raises(ValueError, match="unknown probe 'sinks'"):
        scan(model, tok, ["hi"], probes=["sinks"])


def test_load_refuses_files_that_are_not_results(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="is not an attnlab scan result"):
        ScanResult.load(bad)
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="not JSON"):
        ScanResult.load(bad)
