"""Activation patching: identities (clean into clean, whole resid_pre), a per-pair hand-run reference, and errors."""

import pytest
import torch

import attnlab
from attnlab.circuits import activation_patching, patch, patch_heads
from attnlab.circuits.metrics import logit_diff, logits_of
from tests.circuits._models import model as make_model
from tests.circuits._models import pairs as make_pairs

FAMILIES = ["tiny", "llama", "gpt2", "gemma2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_clean_into_clean_is_bit_identical(family):
    model, p = make_model(family), make_pairs()
    clean = torch.stack(p.clean)  # [N, T]
    points = ["layers.0.resid_pre", "layers.1.attn.z", "layers.1.attn.k", "layers.0.mlp.out"]
    with torch.no_grad():
        with attnlab.capture(model, points) as cache:
            ref = logits_of(model, clean)
        for point in points:
            for head, pos in [(-1, -1), (-1, 3), *([(1, -1), (1, 2)] if "attn" in point else [])]:
                with attnlab.intervene(model, {point: patch(cache[point], cache[point], point, head, pos)}):
                    assert torch.equal(logits_of(model, clean), ref), (point, head, pos)


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_every_position_of_resid_pre_restores_the_clean_run_exactly(family):
    model, p = make_model(family), make_pairs()
    r = activation_patching(model, p, "layers.1.resid_pre", per="layer")
    assert r.table["metric"].item() == r.clean and r.table["score"].item() == 1.0
    noised = activation_patching(model, p, "layers.1.resid_pre", per="layer", direction="noise")
    assert noised.table["metric"].item() == noised.corrupted and noised.table["score"].item() == 0.0
    clean, corrupted = torch.stack(p.clean), torch.stack(p.corrupted)
    with torch.no_grad():
        with attnlab.capture(model, "layers.1.resid_pre") as cache:
            ref = logits_of(model, clean)
        with attnlab.intervene(
            model, {"layers.1.resid_pre": patch(cache["layers.1.resid_pre"], cache["layers.1.resid_pre"], "x.resid_pre")}
        ):
            assert torch.equal(logits_of(model, corrupted), ref)


def _reference_head_scores(model, p, layer):
    """One pair at a time, by hand: the corrupted run with head h's z taken from the clean run; mean logit diffs normalised."""
    point = f"layers.{layer}.attn.z"
    clean_m, corrupted_m, patched = [], [], {}
    with torch.no_grad():
        for c, x, a, w in zip(p.clean, p.corrupted, p.answer, p.wrong, strict=True):
            with attnlab.capture(model, point) as cache:
                clean_m.append(float(logit_diff(logits_of(model, c[None]), a[None], w[None])))
            corrupted_m.append(float(logit_diff(logits_of(model, x[None]), a[None], w[None])))
            for h in range(cache[point].shape[2]):

                def put(z, _, h=h):
                    z = z.clone()
                    z[:, :, h] = cache[point][:, :, h]
                    return z

                with attnlab.intervene(model, {point: put}):
                    patched.setdefault(h, []).append(float(logit_diff(logits_of(model, x[None]), a[None], w[None])))
    cm, xm = sum(clean_m) / len(p), sum(corrupted_m) / len(p)
    return [(sum(v) / len(p) - xm) / (cm - xm) for _, v in sorted(patched.items())]


@pytest.mark.parametrize("family", ["tiny", "llama"])
def test_head_scores_match_a_pair_by_pair_reference(family):
    model, p = make_model(family), make_pairs(5)
    r = activation_patching(model, p, "layers.*.attn.z", per="head", batch_size=2)
    assert r.grid.shape == (2, 4) and r.rows == ["layers.0.attn.z", "layers.1.attn.z"]
    for layer in (0, 1):
        torch.testing.assert_close(
            torch.tensor(r.grid[layer]), torch.tensor(_reference_head_scores(model, p, layer), dtype=torch.float64), rtol=1e-9, atol=1e-9
        )


def test_per_position_and_head_position_grids_have_their_shapes():
    model, p = make_model("tiny"), make_pairs(3, length=4)
    T = len(p.clean[0])
    seen = []
    r = activation_patching(model, p, ["layers.0.resid_pre", "layers.1.resid_mid"], per="position", progress=lambda *a: seen.append(a))
    assert r.grid.shape == (2, T) and len(r.table) == 2 * T
    assert seen[-1][1:] == (2 * T, 2 * T)
    hp = activation_patching(model, p, "layers.1.attn.z", per="head_position", heads=[0, 2], positions=[-1, 0])
    assert hp.grid.shape == (1, 2, 2) and set(hp.table["position"]) == {0, T - 1}


def test_unknown_points_heads_and_positions_name_the_valid_ones():
    model, p = make_model("tiny"), make_pairs(2)
    with pytest.raises(ValueError, match=r"unknown hook point 'layers.7.attn.z'.*valid points are embed, layers.\{0..1\}.resid_pre"):
        activation_patching(model, p, "layers.7.attn.z")
    with pytest.raises(ValueError, match=r"head 4 does not exist: layers.0.attn.z has heads 0..3"):
        activation_patching(model, p, "layers.0.attn.z", heads=[4])
    with pytest.raises(ValueError, match=r"position 40 does not exist: the prompts have positions 0..10"):
        activation_patching(model, p, "layers.0.resid_pre", per="position", positions=[40])
    with pytest.raises(ValueError, match="has no heads"):
        activation_patching(model, p, "layers.0.resid_pre", per="head")
    with pytest.raises(ValueError, match="direction must be"):
        activation_patching(model, p, direction="sideways")
    with pytest.raises(ValueError, match="unknown metric 'kl'"):
        activation_patching(model, p, metric="kl")
    with pytest.raises(ValueError, match="units_per_pass must be a positive int"):
        activation_patching(model, p, units_per_pass=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_units_side_by_side_score_as_one_at_a_time(family):
    model, p = make_model(family), make_pairs(3, length=5)
    for per, points in [("head", "layers.*.attn.z"), ("head_position", "layers.1.attn.q"), ("position", "layers.1.resid_mid")]:
        alone = activation_patching(model, p, points, per=per, units_per_pass=1)
        side = activation_patching(model, p, points, per=per, units_per_pass=3, direction="denoise")
        assert alone.table[["point", "head", "position"]].equals(side.table[["point", "head", "position"]])
        torch.testing.assert_close(torch.tensor(side.table["metric"]), torch.tensor(alone.table["metric"]), rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_resumed_run_equals_the_full_run(family):
    from attnlab.circuits import resume

    model, p = make_model(family, layers=3), make_pairs(3)
    ids = torch.stack(p.corrupted)  # [N, T]
    with torch.no_grad():
        with resume.record(model) as outputs:
            full = logits_of(model, ids)
        with resume.resume(model, 2, outputs):
            assert torch.equal(logits_of(model, ids), full)
        with resume.resume(model, 1, outputs, times=2):
            torch.testing.assert_close(logits_of(model, ids.repeat(2, 1)), full.repeat(2, 1, 1), rtol=0, atol=1e-12)
    assert all("forward" not in b.__dict__ for b in resume._blocks(model))  # the class's forward is back


@pytest.mark.parametrize("family", ["tiny", "llama"])
def test_patching_starts_at_the_patched_layer_unless_something_watches_the_lower_ones(family):
    model, p = make_model(family), make_pairs(3)
    mlp0 = model.layers[0].mlp if family == "tiny" else model.model.layers[0].mlp
    calls = []
    handle = mlp0.register_forward_hook(lambda *a: calls.append(1))
    activation_patching(model, p, "layers.1.attn.z", per="head", units_per_pass=1)
    assert len(calls) == 2  # the clean and corrupted runs; the 4 patched passes start at layer 1
    calls.clear()
    with attnlab.capture(model, "layers.0.mlp.out"):
        activation_patching(model, p, "layers.1.attn.z", per="head", units_per_pass=1)
    assert len(calls) == 2 + 4
    handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_last_position_logits_are_the_full_runs_last_row(family):
    model, p = make_model(family), make_pairs(3)
    ids = torch.stack(p.clean)
    with torch.no_grad():
        torch.testing.assert_close(logits_of(model, ids, last=True), logits_of(model, ids)[:, -1:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", ["tiny", "llama"])
def test_patch_heads_one_head_is_its_per_head_score_and_two_heads_match_a_hand_patched_run(family):
    model, p = make_model(family), make_pairs(5)
    r = activation_patching(model, p, "layers.*.attn.z", per="head", batch_size=2)
    one = patch_heads(model, p, ["L0H2"], batch_size=2)
    assert one["score"] == pytest.approx(r.grid[0, 2], abs=1e-12) and one["clean"] == pytest.approx(r.clean, abs=1e-12)
    both = patch_heads(model, p, [(0, 1), "L1H3"])
    clean, corrupted = torch.stack(p.clean), torch.stack(p.corrupted)  # [N, T]
    with torch.no_grad():
        with attnlab.capture(model, ["layers.0.attn.z", "layers.1.attn.z"]) as cache:
            logits_of(model, clean)
        with attnlab.capture(model, ["layers.0.attn.z", "layers.1.attn.z"]) as target:
            logits_of(model, corrupted)
        z0, z1 = target["layers.0.attn.z"].clone(), target["layers.1.attn.z"].clone()  # [N, T, H, D]
        z0[:, :, 1], z1[:, :, 3] = cache["layers.0.attn.z"][:, :, 1], cache["layers.1.attn.z"][:, :, 3]
        with attnlab.intervene(model, {"layers.0.attn.z": z0, "layers.1.attn.z": z1}):
            ref = float(logit_diff(logits_of(model, corrupted), p.answer, p.wrong).mean())
    assert both["metric"] == pytest.approx(ref, abs=1e-12)
    with pytest.raises(ValueError, match="does not exist"):
        patch_heads(model, p, ["L2H0"])
