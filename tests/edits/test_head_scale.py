"""head_scale and VHD/VHR (paper 26): scale chosen heads; choose them by how much they read a context."""

import pytest
import torch

import attnlab
from attnlab.core import attach
from attnlab.core.site import Edit
from attnlab.edits import parse
from attnlab.edits.head_mask import HeadMask
from attnlab.edits.head_scale import HeadScale, vhr_rule
from attnlab.models import hf
from attnlab.runs.calibrate import vhd, vhr_select
from tests.conftest import tiny_causal_lm

D = 8


@pytest.fixture(scope="module")
def tiny():
    return hf.instrument(tiny_causal_lm("llama"))


IDS = torch.randint(0, 100, (1, 10), generator=torch.Generator().manual_seed(2))
CONTEXT = torch.tensor([[7, 31, 59, 8, 90, 12]])  # the segment VHD removes
PROMPT = torch.tensor([[44, 17, 3, 65]])
WITH, WITHOUT = torch.cat([CONTEXT, PROMPT], 1), PROMPT


def _layer0(model, ids, edits=()):
    """Layer 0's o_proj input ``[T, H, D]`` (the heads' outputs) and output ``[T, C]``, and the logits."""
    seen = {}
    o = model.model.layers[0].self_attn.o_proj
    hooks = [
        o.register_forward_pre_hook(lambda m, a: seen.__setitem__("in", a[0][0])),
        o.register_forward_hook(lambda m, a, y: seen.__setitem__("out", y[0])),
    ]
    try:
        with torch.no_grad(), attach(edits=list(edits)):
            logits = model(input_ids=ids).logits
    finally:
        for h in hooks:
            h.remove()
    return seen["in"].view(-1, 4, D), seen["out"], logits


def test_scaling_a_head_multiplies_exactly_its_share_of_the_block_output(tiny):
    x, y, _ = _layer0(tiny, IDS)
    x2, y2, _ = _layer0(tiny, IDS, [parse("head_scale:heads=L0H2,factor=3")])
    assert torch.equal(x2[:, 2], 3 * x[:, 2])
    assert torch.equal(x2[:, [0, 1, 3]], x[:, [0, 1, 3]])
    w = tiny.model.layers[0].self_attn.o_proj.weight[:, 2 * D : 3 * D]  # W_O's columns for head 2
    torch.testing.assert_close(y2 - y, (3 - 1) * x[:, 2] @ w.T, atol=1e-6, rtol=1e-5)  # the head's share, ×3


@pytest.mark.parametrize("edit", [HeadScale(heads="L0H1+L1H2", factor=1.0), HeadScale(heads=[], factor=5.0)], ids=["factor 1", "no heads"])
def test_factor_one_or_no_heads_is_bit_identical(tiny, edit):
    assert edit.at(hf.sites(tiny)[0]) is None
    assert torch.equal(_layer0(tiny, IDS, [edit])[2], _layer0(tiny, IDS)[2])


class SelfOnly(Edit):
    """Layer 0, head 0 attends only to its own position (it cannot read any other token)."""

    stage = "logits"

    def at(self, site):
        return (lambda s, b, h, q, kv: torch.where((h == 0) & (q != kv), float("-inf"), s)) if site.layer == 0 else None


def test_vhd_is_high_for_a_head_that_reads_the_context_and_zero_for_one_that_cannot(tiny):
    # layer 0: head 0 sees only itself; head 1 spreads its attention evenly over every token, context included
    construct = [SelfOnly(), HeadMask(heads="L0H1", mode="uniform")]
    scores = vhd(tiny, None, WITH, WITHOUT, edits=construct)  # [L, H]
    assert scores.shape == (2, 4)
    assert float(scores[0, 0]) < 1e-6  # its output is v of the last token: the same with or without the context
    assert float(scores[0, 1]) > 1e-2
    out = [_layer0(tiny, ids, construct)[0][-1] for ids in (WITH, WITHOUT)]  # the definition, by hand
    torch.testing.assert_close(scores[0], torch.linalg.vector_norm(out[0] - out[1], dim=-1), atol=1e-6, rtol=1e-5)


def test_vhd_of_the_same_prompt_is_zero(tiny):
    assert torch.equal(vhd(tiny, None, PROMPT, PROMPT), torch.zeros(2, 4))


def test_vhr_rule_zeroes_surging_outliers_then_takes_heads_above_the_median():
    vhd_ = torch.tensor([0.1, 0.2, 0.3, 9.0])
    assert vhr_rule(vhd_) == [2, 3]  # half the heads: above the median
    # head 3's VHD is an outlier *and* its output surges without the context (TA): it is not reinforced
    assert vhr_rule(vhd_, ta=torch.tensor([1.0, 1.0, 1.0, 50.0])) == [1, 2]
    # a high VHD with an ordinary TA is kept: both conditions of Eq. 6 must hold
    assert vhr_rule(vhd_, ta=torch.tensor([50.0, 1.0, 1.0, 1.0])) == [2, 3]
    assert vhr_rule(torch.ones(4)) == []


def test_vhr_selects_layer_by_layer_on_the_reinforced_model(tiny):
    def rule(layer, edits=()):
        a, b = (_last(tiny, ids, edits) for ids in (WITH, WITHOUT))
        return [(layer, h) for h in vhr_rule(torch.linalg.vector_norm(a - b, dim=-1)[layer], b.pow(2).sum(-1)[layer])]

    once = vhr_select(tiny, None, WITH, WITHOUT, sequential=False)
    assert once == rule(0) + rule(1)
    first = rule(0)
    assert len(first) == 2  # half of the 4 heads
    seq = vhr_select(tiny, None, WITH, WITHOUT, alpha=2.0)
    assert seq == first + rule(1, [HeadScale(heads=first, factor=2.0)])  # layer 1 judged with layer 0 reinforced
    # and it was judged on the reinforced model: some forward saw layer 0's chosen heads doubled
    plain = _last(tiny, WITH)[0]  # [H, D]
    doubled = plain.clone()
    doubled[[h for _, h in first]] *= 2
    for sequential, want in ((True, True), (False, False)):
        seen: list = []
        hook = tiny.model.layers[0].self_attn.o_proj.register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0][0, -1].view(4, D)))
        try:
            vhr_select(tiny, None, WITH, WITHOUT, alpha=2.0, sequential=sequential)
        finally:
            hook.remove()
        assert any(torch.equal(x, doubled) for x in seen) is want
    assert vhr_select(tiny, None, WITH, WITHOUT, layers=[1], sequential=False) == rule(1)


def _last(model, ids, edits=()):
    """Every head's output at the last position ``[L, H, D]``, from o_proj's inputs."""
    seen = {}
    hooks = [
        b.self_attn.o_proj.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0][0, -1]))
        for i, b in enumerate(model.model.layers)
    ]
    try:
        with torch.no_grad(), attach(edits=list(edits)):
            model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack([seen[i].view(4, D) for i in range(len(seen))])


def test_stage_order_logits_edits_then_output_edits_then_list_order():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 4, 6, D, generator=g) for _ in range(3))
    uniform = attnlab.attend(q, k, v, is_causal=True, edits=[HeadMask(heads=[1], mode="uniform")])
    # the scale is listed first but acts after the logits edit: head 1 = 2 × its uniform output
    got = attnlab.attend(q, k, v, is_causal=True, edits=[HeadScale(heads=[1], factor=2.0), HeadMask(heads=[1], mode="uniform")])
    assert torch.equal(got[:, 1], 2 * uniform[:, 1])
    # output edits in list order: zero then scale is zero, scale then scale multiplies
    assert got.new_zeros(1, 6, D).equal(
        attnlab.attend(q, k, v, is_causal=True, edits=[HeadMask(heads=[0]), HeadScale(heads=[0], factor=5.0)])[:, 0]
    )
    twice = attnlab.attend(q, k, v, is_causal=True, edits=[HeadScale(heads=[3], factor=2.0), HeadScale(heads=[3], factor=4.0)])
    assert torch.equal(twice[:, 3], 8 * attnlab.attend(q, k, v, is_causal=True)[:, 3])


def test_validate_and_options_reject_bad_heads_and_factors(tiny):
    sites = hf.sites(tiny)
    with pytest.raises(ValueError, match="L0H4 is out of range"):
        parse("head_scale:heads=L0H4").validate(sites)
    with pytest.raises(ValueError, match="layer 3 is out of range"):
        parse("head_scale:layers=3,heads=0").validate(sites)
    with pytest.raises(TypeError, match="factor must be a number"):
        HeadScale(heads=[0], factor="twice")
    with pytest.raises(ValueError, match="out of range"):
        vhr_select(tiny, None, WITH, WITHOUT, layers=[2])
    with pytest.raises(ValueError, match="instrumented model"):
        vhd(tiny_causal_lm("llama"), None, WITH, WITHOUT)
