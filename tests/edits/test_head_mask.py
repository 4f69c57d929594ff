"""head_mask (papers 33, 5): zero, uniform and mean ablation of chosen heads."""

import pytest
import torch

import attnlab
from attnlab.core import Site, attach
from attnlab.core import masks as M
from attnlab.edits import parse
from attnlab.edits.head_mask import HeadMask, HeadOutputs
from attnlab.edits.head_scale import HeadScale
from attnlab.mechanisms.shared import CaptureProbs
from attnlab.models import hf
from attnlab.runs.calibrate import calibrate
from attnlab.runs.edit import prepare
from tests.conftest import tiny_causal_lm

D = 8  # head dim of the tiny llama (32 / 4 heads)


class CharTokenizer:
    """Characters to ids below the tiny model's vocabulary, HF-style call."""

    def __call__(self, text, return_tensors=None, add_special_tokens=True, verbose=True):  # adds no special tokens
        ids = torch.tensor([[ord(c) % 100 for c in text]])
        return {"input_ids": ids if return_tensors == "pt" else ids[0].tolist()}


def _qkv(T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, T, D, generator=g), torch.randn(2, 2, T, D, generator=g), torch.randn(2, 2, T, D, generator=g)


def _run(model, ids, edits=()):
    """Logits and, per layer, the input of o_proj ``[B, T, H*D]``: the heads' outputs side by side."""
    seen = {}
    hooks = [
        b.self_attn.o_proj.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0].detach()))
        for i, b in enumerate(model.model.layers)
    ]
    try:
        prepare(model, list(edits), ids)
        with torch.no_grad(), attach(edits=list(edits)):
            logits = model(input_ids=ids).logits
    finally:
        for h in hooks:
            h.remove()
    return logits, seen


@pytest.fixture(scope="module")
def tiny():
    return hf.instrument(tiny_causal_lm("llama"))


IDS = torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("mode", ["zero", "uniform", "mean"])
def test_empty_head_list_is_bit_identical(tiny, mode):
    base, _ = _run(tiny, IDS)
    got, _ = _run(tiny, IDS, [HeadMask(heads=[], mode=mode), HeadMask(heads=[], layers=[0], mode=mode)])
    assert torch.equal(got, base)


def test_zero_mode_zeroes_exactly_the_chosen_heads_share(tiny):
    _, base = _run(tiny, IDS)
    logits, got = _run(tiny, IDS, [parse("head_mask:heads=L0H1+L1H3,mode=zero")])
    x, y = base[0].view(1, 12, 4, D), got[0].view(1, 12, 4, D)  # [B, T, H, D]
    assert torch.equal(y[:, :, 1], torch.zeros_like(y[:, :, 1])) and y[:, :, 1].abs().sum() == 0
    assert torch.equal(y[:, :, [0, 2, 3]], x[:, :, [0, 2, 3]])  # the other heads of layer 0 are untouched
    assert got[1].view(1, 12, 4, D)[:, :, 3].abs().sum() == 0


def test_uniform_mode_spreads_each_row_evenly_over_the_keys_it_may_see():
    q, k, v = _qkv()
    mask = M.sliding_window(3)
    site = Site("layers.0.attn", layer=0, num_heads=4, num_kv_heads=2)
    cap, cap0 = CaptureProbs("layers.0.attn"), CaptureProbs("layers.0.attn")
    out = attnlab.attend(q, k, v, mask=mask, is_causal=True, site=site, edits=[HeadMask(heads=[1], mode="uniform"), cap])
    attnlab.attend(q, k, v, mask=mask, is_causal=True, site=site, edits=[cap0])
    p, p0 = cap.probs(), cap0.probs()
    visible = (mask.dense(7, 7) & M.causal.dense(7, 7))[0, 0]  # [Tq, Tk]
    want = visible.float() / visible.sum(-1, keepdim=True)
    torch.testing.assert_close(p[:, 1], want.expand(2, 7, 7), atol=1e-7, rtol=0)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, 7))
    assert torch.equal(p[:, [0, 2, 3]], p0[:, [0, 2, 3]])
    # the Retrieval Head paper's code masks a head by zeroing its queries: the same attention
    q0 = q.clone()
    q0[:, 1] = 0
    torch.testing.assert_close(out, attnlab.attend(q0, k, v, mask=mask, is_causal=True, backend="reference"), atol=1e-6, rtol=1e-6)


def test_uniform_mode_after_a_knockout_keeps_knocked_keys_hidden():
    # logit edits act in list order: keys an earlier edit hid (−∞) are not among the keys a query may see
    from attnlab.edits.knockout import Knockout

    q, k, v = _qkv()
    cap = CaptureProbs(lambda s: True)
    attnlab.attend(q, k, v, is_causal=True, edits=[Knockout(target=[6], source=[0, 1]), HeadMask(heads=[2], mode="uniform"), cap])
    row = cap.probs()[:, 2, 6]  # [B, Tk]
    assert torch.equal(row[:, :2], torch.zeros(2, 2))
    torch.testing.assert_close(row[:, 2:], torch.full((2, 5), 0.2))


def test_uniform_mode_tiles_of_the_blocked_backend_match_reference():
    from attnlab.core.backends.blocked import Blocked

    q, k, v = _qkv(T=37)
    e = HeadMask(heads=[0, 3], mode="uniform")
    ref = attnlab.attend(q, k, v, is_causal=True, backend="reference", edits=[e])
    torch.testing.assert_close(
        attnlab.attend(q, k, v, is_causal=True, backend=Blocked(q_tile=8, k_tile=4), edits=[e]), ref, atol=1e-5, rtol=1e-5
    )


def test_mean_mode_without_calibration_raises_a_clear_error(tiny):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"not calibrated|no mean outputs.*calibrate"):
        attnlab.attend(q, k, v, is_causal=True, edits=[HeadMask(heads=[0], mode="mean")])
    with pytest.raises(ValueError, match=r"call attnlab\.runs\.calibrate\.calibrate"):
        prepare(tiny, [HeadMask(heads="L0H0", mode="mean")], IDS)


def test_mean_mode_replaces_the_head_output_by_its_mean_over_the_reference_set(tiny):
    texts = ["the quick brown fox", "jumps over the lazy dog!"]
    edit = calibrate(HeadMask(heads="L1H2+L1H0", mode="mean"), tiny, CharTokenizer(), texts=texts)
    outs = [_run(tiny, CharTokenizer()(t, return_tensors="pt")["input_ids"])[1][1][0].view(-1, 4, D) for t in texts]  # [T, H, D] each
    want = torch.cat(outs).double().mean(0).float()  # [H, D]: every token of every text
    torch.testing.assert_close(edit.means["layers.1.attn"], want, atol=1e-6, rtol=1e-6)
    _, got = _run(tiny, IDS, [edit])
    y = got[1][0].view(12, 4, D)
    for h in (0, 2):
        assert torch.equal(y[:, h], edit.means["layers.1.attn"][h].expand(12, D))


def test_mask_acts_after_an_earlier_output_edit_in_list_order():
    # output edits act in the order given: a mask after a scale wins, a scale after a mask scales the mean
    q, k, v = _qkv()
    rec = HeadOutputs()
    attnlab.attend(q, k, v, is_causal=True, edits=[rec])
    mask = HeadMask(heads=[1], mode="mean")
    mask.means = rec.mean()
    mean = mask.means["attend"][1]
    a = attnlab.attend(q, k, v, is_causal=True, edits=[HeadScale(heads=[1], factor=3.0), mask])
    b = attnlab.attend(q, k, v, is_causal=True, edits=[mask, HeadScale(heads=[1], factor=3.0)])
    assert torch.equal(a[:, 1], mean.expand(2, 7, D))
    assert torch.equal(b[:, 1], (3.0 * mean).expand(2, 7, D))


def test_validate_and_options_reject_what_the_model_does_not_have(tiny):
    sites = hf.sites(tiny)  # 2 layers, 4 heads
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        parse("head_mask:heads=L2H0").validate(sites)
    with pytest.raises(ValueError, match="L0H4 is out of range"):
        parse("head_mask:heads=L0H4").validate(sites)
    with pytest.raises(ValueError, match="head 5 is out of range"):
        HeadMask(heads=[5], layers=[1]).validate(sites)
    with pytest.raises(ValueError, match="mode must be one of zero, uniform, mean"):
        HeadMask(heads=[0], mode="random")
    with pytest.raises(ValueError, match="name their layers"):
        HeadMask(heads="L0H1", layers=[0])
    with pytest.raises(ValueError, match="name the heads"):
        HeadMask()
    HeadMask(heads="L1H3").validate(sites)  # in range: no error


def test_smollm2_spec_masks_the_named_heads(smollm2):
    model, _ = smollm2
    ids = torch.tensor([[1, 504, 3458, 314, 260, 1345, 28]])
    with hf.instrumented(model):
        sites = hf.sites(model)  # 30 layers, 9 heads
        edit = parse("head_mask:heads=L3H1+L5H8,mode=zero")
        edit.validate(sites)
        for bad in ("L30H0", "L0H9"):
            with pytest.raises(ValueError, match="out of range"):
                parse(f"head_mask:heads={bad}").validate(sites)
        seen = {}
        hook = model.model.layers[5].self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
        try:
            with torch.no_grad():
                base = model(input_ids=ids).logits
                with attach(edits=[edit]):
                    got = model(input_ids=ids).logits
        finally:
            hook.remove()
        x = seen["x"].view(1, ids.shape[1], 9, 64)  # [B, T, H, D]
        assert x[:, :, 8].abs().sum() == 0 and x[:, :, 7].abs().sum() > 0
        assert not torch.allclose(got, base)
