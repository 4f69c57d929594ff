"""What each kind's report says and draws: scan scales and rules, edit calibration wording, a single run's title."""

import math

from attnlab.report import edit, scan, sweep
from attnlab.results import EditResult, ScanResult, make_meta, model_meta
from tests.report.helpers import shown, specs


def scan_result(maps=()) -> ScanResult:
    findings = {
        "sink": {"heatmaps": {"first_token_mass": [[0.2, 0.3], [0.25, 0.4]]}, "bars": {}, "tables": {}, "notes": [], "titles": {}},
        "patterns": {
            "heatmaps": {"induction": [[0.0, 0.1], [0.05, 0.2]], "distance": [[1.0, 3.0], [2.0, 4.0]]},
            "bars": {},
            "tables": {},
            "notes": ["Strongest induction head: layer 1 head 1."],
            "titles": {"induction": "induction score"},
        },
        "extreme": {"heatmaps": {}, "bars": {"value_ratio": [0.5, 3.0]}, "tables": {}, "notes": [], "titles": {}},
    }
    meta = make_meta("scan", settings={"probes": list(findings)}, model=model_meta(identity="toy", layers=2, heads=2), wall_s=1.0)
    return ScanResult(meta, [], findings, list(maps))


def test_scan_heatmaps_of_one_unit_share_a_scale_and_ratios_get_a_rule_at_one():
    figs = specs(scan_result().html())
    mass, ind, dist = (
        figs[k]["layer"][1]["encoding"]["color"]["scale"] for k in ("sink.first_token_mass", "patterns.induction", "patterns.distance")
    )
    assert mass["domain"] == ind["domain"] == [0.0, 1.0]  # attention shares compare: one 0–1 scale
    assert dist["domain"] == [1.0, 4.0]  # tokens: its own unit
    rule = figs["extreme.value_ratio"]["layer"][-1]
    assert rule["mark"]["type"] == "rule" and rule["data"]["values"] == [{"ref": 1.0}]
    assert "patterns: Strongest induction head: layer 1 head 1." in shown(scan_result().html())


def test_scan_maps_go_to_the_viewer():
    m = {
        "layer": 1,
        "head": 0,
        "why": "chosen (--maps)",
        "prompt": "the first 2 tokens of the text",
        "tokens": ["a", "b"],
        "matrix": [[1.0, None], [0.5, 0.5]],
    }
    html = scan_result([m]).html()
    assert "attention_maps" in specs(html) and "On the first 2 tokens of the text (2 tokens)" in shown(html)


def edit_result(**meta) -> EditResult:
    m = make_meta(
        "edit",
        settings={"edits": ["head_mask:heads=L0H0"], "evals": ["ppl"]},
        model=model_meta(identity="tiny", layers=2, heads=4),
        wall_s=1.0,
        applied=["HeadMask(heads=['L0H0'])"],
        metrics=[
            {"metric": "ppl", "before": 2.0, "after": 2.5, "difference": 0.5, "ci95": [0.1, 0.9], "examples": 2, "higher_is_better": False}
        ],
        **meta,
    )
    return EditResult(m, {"ppl": {"before": [2.0, 3.0], "after": [2.5, math.nan]}})


def test_an_edit_says_calibrated_only_when_something_was():
    plain = shown(edit.render(edit_result(calibrated=[])))
    assert "Applied: HeadMask(heads=['L0H0'])." in plain and "calibrat" not in plain.lower()
    done = shown(
        edit.render(edit_result(calibrated=[{"edit": "drop_attention", "on": "4 held-out prompts", "applied": "DropAttention(top=4)"}]))
    )
    assert "Calibrated before measuring: drop_attention on 4 held-out prompts, as applied: DropAttention(top=4)" in done
    bars = specs(edit.render(edit_result()))["examples.ppl"]["datasets"]["bars"]
    assert [b["value"] for b in bars] == [0.5, None]  # after − before; NaN left out


def test_a_single_run_is_titled_for_the_run():
    one = [{"mechanism": "mha", "seeds": [3]}]
    assert sweep.title("mqar", one) == "Training run: mha on mqar, seed 3"
    assert sweep.title("mqar", [*one, {"mechanism": "linear", "seeds": [3]}]) == "Task comparison on mqar: 2 mechanisms × 1 seed"
    assert scan.METRICS["extreme.value_ratio"][1].endswith("(×)")
