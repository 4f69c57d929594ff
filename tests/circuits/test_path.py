"""Path patching against hand-built references on attention-only tiny models, and its errors."""

import pytest
import torch

import attnlab
from attnlab.circuits import activation_patching, path_patching, path_patching_sweep
from attnlab.circuits.metrics import logit_diff, logits_of
from tests.circuits._models import model as make_model
from tests.circuits._models import pairs as make_pairs


def _mean_ld(model, ids, p, replacements=None):
    with torch.no_grad(), attnlab.intervene(model, replacements or {}):
        return float(logit_diff(logits_of(model, ids), p.answer, p.wrong).mean())


def test_all_layer0_heads_into_all_layer1_qkv_equals_layer1_recomputed_on_the_patched_input():
    """Attention-only, 2 layers: the path L0 → L1 (q, k, v) is layer 1's output computed from a patched layer 0, added to an unpatched layer 0."""
    model, p = make_model("tiny_attn_only"), make_pairs(4)
    clean, corrupted = torch.stack(p.clean), torch.stack(p.corrupted)
    with torch.no_grad():
        with attnlab.capture(model, "layers.0.attn.z") as c:
            logits_of(model, clean)
        with attnlab.capture(model, "layers.1.attn.out") as through, attnlab.intervene(model, {"layers.0.attn.z": c["layers.0.attn.z"]}):
            logits_of(model, corrupted)  # layer 1 reading the clean layer 0
    expected = _mean_ld(model, corrupted, p, {"layers.1.attn.out": through["layers.1.attn.out"]})
    heads0, heads1 = [(0, h) for h in range(4)], [(1, h) for h in range(4)]
    r = path_patching(model, p, heads0, heads1, inputs="qkv")
    assert r["metric"] == pytest.approx(expected, abs=1e-10)
    assert r["score"] == pytest.approx((expected - r["corrupted"]) / (r["clean"] - r["corrupted"]))


def test_senders_into_the_logits_equal_activation_patching_of_the_last_layer():
    model, p = make_model("tiny_attn_only"), make_pairs(4)
    sweep = path_patching_sweep(model, p, "logits", senders=[(1, h) for h in range(4)])
    exact = activation_patching(model, p, "layers.1.attn.z", per="head")
    torch.testing.assert_close(torch.tensor(sweep.grid), torch.tensor(exact.grid), rtol=1e-9, atol=1e-9)


def test_heads_between_senders_and_receivers_are_frozen_to_the_corrupted_run():
    """3 layers: L0H1 → L2 (k, v) by hand: layer 2 computed with L0H1 clean and layer 1 frozen to its corrupted output."""
    model, p = make_model("tiny_attn_only", layers=3), make_pairs(4)
    clean, corrupted = torch.stack(p.clean), torch.stack(p.corrupted)
    with torch.no_grad():
        with attnlab.capture(model, "layers.0.attn.z") as c:
            logits_of(model, clean)
        with attnlab.capture(model, "layers.*.attn.z") as x:
            logits_of(model, corrupted)
        z0 = x["layers.0.attn.z"].clone()
        z0[:, :, 1] = c["layers.0.attn.z"][:, :, 1]
        frozen = {"layers.0.attn.z": z0, "layers.1.attn.z": x["layers.1.attn.z"]}
        with attnlab.capture(model, ["layers.2.attn.k", "layers.2.attn.v"]) as step2, attnlab.intervene(model, frozen):
            logits_of(model, corrupted)
    expected = _mean_ld(model, corrupted, p, {"layers.2.attn.k": step2["layers.2.attn.k"], "layers.2.attn.v": step2["layers.2.attn.v"]})
    r = path_patching(model, p, ["L0H1"], [(2, h) for h in range(4)], inputs="kv")
    assert r["metric"] == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("family", ["tiny", "llama"])
def test_no_senders_leave_the_corrupted_run_and_a_sweep_covers_the_layers_below(family):
    model, p = make_model(family), make_pairs(4)
    nothing = path_patching(model, p, [], ["L1H0"], inputs="kv")
    assert nothing["metric"] == pytest.approx(nothing["corrupted"], abs=1e-12)
    sweep = path_patching_sweep(model, p, ["L1H0", "L1H3"], inputs="kv")
    assert sweep.grid.shape == (1, 4) and list(sweep.table["layer"]) == [0, 0, 0, 0]


def test_bad_heads_and_inputs_name_the_fix():
    model, p = make_model("tiny"), make_pairs(2)
    with pytest.raises(ValueError, match=r"the head L5H0 does not exist: the model has layers 0..1 and heads 0..3 per layer"):
        path_patching(model, p, ["L5H0"], ["L1H0"])
    with pytest.raises(ValueError, match=r"the head L1H9 does not exist"):
        path_patching(model, p, ["L0H0"], ["L1H9"])
    with pytest.raises(ValueError, match=r"senders \['L1H1'\] are not below every receiver"):
        path_patching(model, p, ["L1H1"], ["L1H0"])
    with pytest.raises(ValueError, match="inputs is any of 'q', 'k', 'v'"):
        path_patching(model, p, ["L0H1"], ["L1H0"], inputs="x")
    with pytest.raises(ValueError, match=r"cannot read the head 'head 3': write a head as L<layer>H<head>"):
        path_patching(model, p, ["head 3"], ["L1H0"])
