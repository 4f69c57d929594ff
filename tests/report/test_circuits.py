"""The circuits report, built from small real runs on a tiny Llama: what each method's page draws and says."""

import math

import pytest
import torch

from attnlab import circuits, results
from attnlab.circuits.run import pair_records, run_circuit
from attnlab.report.circuits import RESTORED
from tests.circuits._models import model, pairs
from tests.report.helpers import shown, specs

RECORDS = [{"clean": "abcab", "corrupted": "dbcab", "answer": "c", "wrong": "x"}]


@pytest.fixture(scope="module")
def llama():
    return model("llama", num_hidden_layers=3)


@pytest.fixture(scope="module")
def runs(llama):
    p = pairs(3, length=4)
    out = {
        "patch": run_circuit(llama, p, "patch", settings={"task": "induction"}),
        "position": run_circuit(llama, p, "patch", settings={"task": "induction"}, per="position"),
        "attrib": run_circuit(llama, p, "attrib", settings={"task": "induction"}),
        "dla": run_circuit(llama, p, "dla", settings={"task": "induction"}),
        "path": run_circuit(llama, p, "path", settings={"task": "induction"}, receivers=["L1H0", "L2H3"]),
    }
    return p, out


def drawn_cells(html: str, name: str) -> list[dict]:
    return specs(html)[name]["datasets"]["cells"]


def colour(html: str, name: str) -> dict:
    return specs(html)[name]["layer"][1]["encoding"]["color"]["scale"]


@pytest.mark.slow
def test_patching_draws_its_layer_by_head_scores_on_a_scale_centred_at_zero(runs):
    _, out = runs
    r = out["patch"]
    html = r.html()
    cells = drawn_cells(html, "circuit.scores")
    by_unit = {(row["layer"], row["head"]): row["score"] for row in r.table}  # the run's own table, not its grid
    assert {(c["layer"], c["head"]): c["value"] for c in cells} == pytest.approx(by_unit)
    scale = colour(html, "circuit.scores")
    top = max(1.0, *(abs(v) for v in by_unit.values()))
    assert scale["domainMid"] == 0 and scale["domain"] == pytest.approx([-top, top])
    tips = specs(html)["circuit.scores"]["layer"][1]["transform"]
    assert any(RESTORED in t.get("calculate", "") for t in tips)
    (layer, head), score = max(by_unit.items(), key=lambda kv: abs(kv[1]))
    assert f"layer {layer}, head {head}: {score:+.3g}" in shown(html)


@pytest.mark.slow
def test_patching_per_position_draws_layer_by_position(runs):
    p, out = runs
    r = out["position"]
    cells = drawn_cells(r.html(), "circuit.scores")
    assert r.grid_axes == ["layer", "position"]
    assert {c["position"] for c in cells} == set(range(p.lengths()[0])) and {c["layer"] for c in cells} == {0, 1, 2}
    assert specs(r.html())["circuit.scores"]["layer"][1]["encoding"]["x"]["title"] == "position"


@pytest.mark.slow
def test_attribution_patching_says_how_well_it_agrees_with_activation_patching(runs):
    _, out = runs
    a = out["attrib"].meta["agreement"]
    text = shown(out["attrib"].html())
    assert f"over {a['units']} units: Pearson {a['pearson']:.3f}, Spearman {a['spearman']:.3f}" in text
    assert "first-order estimate" in specs(out["attrib"].html())["circuit.scores"]["layer"][1]["transform"][1]["calculate"]


@pytest.mark.slow
def test_dla_bars_sum_to_the_logit_difference_and_heads_are_drawn(runs, llama):
    p, out = runs
    r = out["dla"]
    html = r.html()
    bars = specs(html)["dla.terms"]["datasets"]["bars"]
    with torch.no_grad():
        last = llama(torch.stack(p.clean)).logits[:, -1]  # [N, V]: the model's own logit difference, not DLA's
    logit_diff = float((last[range(len(p)), p.answer] - last[range(len(p)), p.wrong]).mean())
    assert sum(b["value"] for b in bars) == pytest.approx(logit_diff, abs=1e-6)
    reference = circuits.direct_logit_attribution(llama, p)
    assert [b["term"] for b in bars][:3] == ["embed", "L0 attn", "L0 mlp"]
    heads = {(c["layer"], c["head"]): c["value"] for c in drawn_cells(html, "dla.heads")}
    assert heads == pytest.approx({(i, h): reference.grid[i, h] for i in range(3) for h in range(4)})
    assert f"mean over pairs: {logit_diff:.4g}" in shown(html)


@pytest.mark.slow
def test_path_patching_into_two_receivers_draws_senders_by_receivers(runs, llama):
    p, out = runs
    r = out["path"]
    html = r.html()
    cells = {(c["sender"], c["receiver"]): c["value"] for c in drawn_cells(html, "circuit.scores")}
    assert {s for s, _ in cells} == {f"L{i}H{h}" for i in range(2) for h in range(4)}
    assert cells[("L1H1", "L1H0")] is None  # a sender in the receiver's layer: not measured, drawn grey
    alone = circuits.path_patching(llama, p, ["L0H2"], ["L2H3"])["score"]
    assert cells[("L0H2", "L2H3")] == pytest.approx(alone)
    assert specs(html)["circuit.scores"]["layer"][1]["encoding"]["y"]["sort"][:2] == ["L0H0", "L0H1"]


@pytest.mark.slow
def test_the_page_lists_the_pairs_and_settings_and_survives_a_round_trip(runs, tmp_path):
    _, out = runs
    r = out["path"]
    back = results.load(r.save(tmp_path / "results.json"))
    assert math.isnan(back.grid[4][0])
    text = shown(back.html())
    first = r.meta["pairs"][0]
    assert f"0 {first['clean']} {first['corrupted']} {first['answer']} {first['wrong']}" in text
    assert "receivers ['L1H0', 'L2H3']" in text and "method path" in text


def test_the_pairs_are_recorded_as_text_their_records_or_their_ids_decoded():
    class Letters:  # decodes id i as the i-th letter
        def decode(self, ids):
            return "".join(chr(97 + i) for i in ids)

    assert pair_records(circuits.Pairs([], [], None, None, RECORDS)) == RECORDS
    ids = circuits.from_ids([[1, 2]], [[3, 2]], [4], [5])
    assert pair_records(ids, Letters()) == [{"clean": "bc", "corrupted": "dc", "answer": "e", "wrong": "f"}]
    assert pair_records(ids) == [{"clean": "ids 1 2", "corrupted": "ids 3 2", "answer": "ids 4", "wrong": "ids 5"}]
