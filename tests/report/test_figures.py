"""attnlab.report.figures: what each figure draws, read from its Vega-Lite spec (values, tooltips, scales, masks)."""

import math

import pytest

from attnlab.report import figures as F


def layers(spec: dict) -> list[dict]:
    return spec.get("layer") or [spec]


def test_a_heatmap_keeps_values_and_draws_unmeasured_cells_apart_from_zeros():
    f = F.heatmap("p.m", "score", [[0.0, 0.5], [math.nan, 1.0]], meaning="what it is", unit="share (0–1)", domain=(0.0, 1.0))
    cells = f.spec["datasets"]["cells"]
    assert cells == [
        {"layer": 0, "head": 0, "value": 0.0},
        {"layer": 0, "head": 1, "value": 0.5},
        {"layer": 1, "head": 0, "value": None},
        {"layer": 1, "head": 1, "value": 1.0},
    ]
    missing, drawn = layers(f.spec)
    assert missing["mark"]["color"] == F.GREY and {"filter": "datum.value === null"} in missing["transform"]
    assert {"filter": "datum.value !== null"} in drawn["transform"]  # a 0 is coloured; a missing value is grey
    colour = drawn["encoding"]["color"]
    assert colour["scale"]["domain"] == [0.0, 1.0] and colour["title"] == "share (0–1)" and colour["legend"]["tickCount"] == 5
    tips = {t.get("title", t["field"]) for t in drawn["encoding"]["tooltip"]}
    assert tips == {"layer", "head", "score", "what it measures"}
    assert {"calculate": '"what it is"', "as": "meaning"} in drawn["transform"]
    assert drawn["encoding"]["x"]["title"] == "head" and drawn["encoding"]["y"]["title"] == "layer"


def test_a_ratio_gets_a_rule_at_one_on_a_log_axis():
    f = F.per_layer("e.r", "ratio", [0.5, 2.0, math.nan], meaning="m", unit="ratio (×)", reference=1.0, log=True)
    bars, rule = layers(f.spec)
    assert bars["encoding"]["y"]["scale"]["type"] == "log" and bars["encoding"]["y"]["title"] == "ratio (×)"
    assert rule["mark"]["type"] == "rule" and rule["data"]["values"] == [{"ref": 1.0}]
    assert [r["value"] for r in f.spec["datasets"]["bars"]] == [0.5, 2.0, None]


def test_lines_carry_the_ci_band_and_leave_missing_points_out():
    s = F.Series("mha", [10, 20], [0.5, math.nan], [0.4, math.nan], [0.6, math.nan])
    f = F.lines("t", "metric", [s], x_title="step", y_title="test metric")
    assert [m["mark"]["type"] for m in layers(f.spec)] == ["area", "line", "point"]
    assert f.spec["datasets"]["points"][0] == {"series": "mha", "x": 10.0, "y": 0.5, "low": 0.4, "high": 0.6}
    assert f.spec["datasets"]["points"][1]["y"] is None


def test_the_attention_viewer_binds_a_head_menu_and_token_hover():
    maps = [
        {"layer": 1, "head": 2, "why": "chosen", "tokens": ["a", " b"], "matrix": [[1.0, None], [0.25, 0.75]]},
        {"layer": 0, "head": 0, "why": "sink", "tokens": ["a", " b"], "matrix": [[1.0, None], [0.9, 0.1]]},
    ]
    f = F.attention_viewer("maps", "t", maps)
    params = {p["name"]: p for p in f.spec["params"]}
    assert params["head"]["bind"]["input"] == "select" and params["head"]["bind"]["labels"] == ["L1H2: chosen", "L0H0: sink"]
    assert params["tok"]["value"] == ["0 a", "1 ·b"]
    assert params["token_row"]["select"]["fields"] == ["q"] and params["token_col"]["select"]["fields"] == ["k"]
    assert {"h": 0, "q": 0, "k": 1, "w": None} in f.spec["datasets"]["cells"]  # masked: drawn grey, not 0
    assert {"h": 1, "q": 1, "k": 0, "w": 0.9} in f.spec["datasets"]["cells"]
    with pytest.raises(ValueError, match="every map's tokens must be the same"):
        F.attention_viewer("maps", "t", [maps[0], {**maps[1], "tokens": ["x", "y"]}])
    with pytest.raises(ValueError, match="needs at least one map"):
        F.attention_viewer("maps", "t", [])
