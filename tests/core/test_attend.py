"""attend(): argument checks, edits at each stage, the row pass, and the auto rule."""

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given

from attnlab.core import Site, attend, choose_backend
from attnlab.core import masks as M
from attnlab.core import rows as R
from attnlab.core.backends import Inputs, reference_probs
from attnlab.core.site import Edit, Probe
from tests.core.strategies import cases


@dataclass
class FnEdit(Edit):
    """A test edit: one function at one stage, acting only at sites whose name is in `sites`."""

    stage: str
    fn: object
    sites: tuple = ("attend",)

    def at(self, site):
        return self.fn if site.name in self.sites else None


def qkv(B=1, H=4, Hkv=2, T=12, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, T, D, generator=g), torch.randn(B, Hkv, T, D, generator=g), torch.randn(B, Hkv, T, D, generator=g)


# --- argument checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kw", "err", "text"),
    [
        (
            (torch.randn(1, 8, 4, 8), torch.randn(1, 3, 4, 8), torch.randn(1, 3, 4, 8)),
            {},
            ValueError,
            "k has 3 heads, q has 8: q heads must be a multiple of k heads",
        ),
        (
            (torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 6), torch.randn(1, 2, 4, 6)),
            {},
            ValueError,
            "q has head_dim 8 but k has head_dim 6",
        ),
        (
            (torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8).half(), torch.randn(1, 2, 4, 8)),
            {},
            TypeError,
            "q, k and v must share one dtype",
        ),
        (
            (torch.randn(2, 4, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 8)),
            {},
            ValueError,
            r"q must be \[batch, heads, length, head_dim\]",
        ),
        ((torch.randn(1, 2, 4, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 4, 8)), {}, ValueError, "k and v must agree"),
        (
            qkv(T=4),
            {"mask": torch.ones(3, 4, dtype=torch.bool)},
            ValueError,
            r"mask of shape \(3, 4\) is not broadcastable to \[B, H, Tq, Tk\]",
        ),
        (qkv(T=4), {"mask": torch.ones(4, 4, dtype=torch.long)}, TypeError, "a tensor mask must be bool"),
        (qkv(T=4), {"mask": "causal"}, TypeError, "mask must be a masks.Mask"),
        (qkv(T=4), {"backend": "blokced"}, ValueError, "unknown backend 'blokced' \\(did you mean 'blocked'\\?\\)"),
        (qkv(T=4), {"scale": "big"}, TypeError, "scale must be a finite float"),
        (qkv(T=16), {"mask": M.neighborhood(3, shape=(3, 3))}, ValueError, "covers a grid of 9 tokens"),
    ],
)
def test_bad_input_names_problem_and_fix(args, kw, err, text):
    with pytest.raises(err, match=text):
        attend(*args, **kw)


def test_gqa_equals_repeated_kv_heads():
    q, k, v = qkv()
    out = attend(q, k, v, is_causal=True, backend="blocked")
    full = attend(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True, backend="reference")
    torch.testing.assert_close(out, full)


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v = qkv(D=16)
    torch.testing.assert_close(attend(q, k, v), attend(q, k, v, scale=0.25, backend="reference"))


# --- edits ---------------------------------------------------------------------------------


def test_identity_edits_change_nothing_bit_for_bit():
    q, k, v = qkv()
    for backend in ("reference", "blocked"):
        base = attend(q, k, v, is_causal=True, backend=backend)
        out = attend(
            q, k, v, is_causal=True, backend=backend, edits=[FnEdit("logits", lambda s, b, h, qi, ki: s), FnEdit("output", lambda o: o)]
        )
        assert torch.equal(out, base)
    base = attend(q, k, v, is_causal=True, edits=[FnEdit("probs", lambda p, qi, ki: p)])
    assert torch.equal(attend(q, k, v, is_causal=True, edits=[FnEdit("probs", lambda p, qi, ki: p)] * 2), base)


def test_logit_edit_equals_the_same_bias():
    q, k, v = qkv()
    bias = torch.randn(1, 4, 12, 12)
    edit = FnEdit("logits", lambda s, b, h, qi, ki: s + bias[0, h, qi, ki])
    want = attend(q, k, v, bias=bias, is_causal=True, backend="reference")
    for backend in ("auto", "reference", "blocked"):
        torch.testing.assert_close(attend(q, k, v, is_causal=True, backend=backend, edits=[edit]), want)
    torch.testing.assert_close(attend(q, k, v, is_causal=True, edits=[edit, FnEdit("probs", lambda p, qi, ki: p)]), want)


def test_logit_edits_compose_in_order():
    q, k, v = qkv()
    double = FnEdit("logits", lambda s, b, h, qi, ki: s * 2)
    shift = FnEdit("logits", lambda s, b, h, qi, ki: torch.where(ki == 0, s + 3.0, s))
    a = attend(q, k, v, is_causal=True, edits=[double, shift])
    b = attend(q, k, v, is_causal=True, edits=[shift, double])
    bias0 = torch.zeros(12)
    bias0[0] = 3.0
    torch.testing.assert_close(a, attend(q, k, v, is_causal=True, scale=2 / 8**0.5, bias=bias0, backend="reference"))
    torch.testing.assert_close(b, attend(q, k, v, is_causal=True, scale=2 / 8**0.5, bias=2 * bias0, backend="reference"))


def test_probability_edit_changes_output_as_written():
    q, k, v = qkv()

    def first_key_only(p, qi, ki):
        return torch.zeros_like(p).index_fill_(-1, torch.tensor([0]), 1.0) if ki[0] == 0 else p

    out = attend(q, k, v, is_causal=True, edits=[FnEdit("probs", first_key_only)])
    first_value = v.repeat_interleave(2, 1)[:, :, :1]  # [B, H, 1, D]: every row reads key 0 only
    torch.testing.assert_close(out, first_value.expand_as(out))


def test_output_edit_scales_one_head():
    q, k, v = qkv()

    def scale_head_1(o):
        o = o.clone()
        o[:, 1] *= 2
        return o

    base = attend(q, k, v)
    out = attend(q, k, v, edits=[FnEdit("output", scale_head_1)])
    torch.testing.assert_close(out[:, 1], 2 * base[:, 1])
    assert torch.equal(out[:, [0, 2, 3]], base[:, [0, 2, 3]])


def test_edits_act_only_at_their_sites():
    q, k, v = qkv()
    edit = FnEdit("output", lambda o: o * 0, sites=("layers.1.attn",))
    assert attend(q, k, v, site=Site("layers.1.attn", layer=1), edits=[edit]).abs().sum() == 0
    assert torch.equal(attend(q, k, v, site=Site("layers.0.attn", layer=0), edits=[edit]), attend(q, k, v))


def test_logit_edit_with_gradients_runs_on_reference():
    q, k, v = (t.requires_grad_() for t in qkv())
    edit = FnEdit("logits", lambda s, b, h, qi, ki: s * 1.5)
    attend(q, k, v, edits=[edit]).sum().backward()
    assert q.grad is not None and not q.grad.isnan().any()
    with pytest.raises(ValueError, match="without gradients"):
        attend(q, k, v, edits=[edit], backend="blocked")


def test_bad_edit_is_rejected():
    q, k, v = qkv()
    with pytest.raises(TypeError, match=r"an edit needs \.stage"):
        attend(q, k, v, edits=[lambda s: s])


# --- the row pass ----------------------------------------------------------------------------


class Recorder(Probe):
    def __init__(self):
        self.chunks = []

    def observe(self, chunk, site):
        self.chunks.append(chunk)

    def result(self):
        return {}


@given(c=cases(max_len=200))
def test_row_pass_matches_reference_in_small_chunks(c):
    old = R.CHUNK_BYTES
    R.CHUNK_BYTES = 4 * 37 * c.q.shape[0] * c.q.shape[1] * c.k.shape[2]  # 37 rows per chunk
    try:
        rec = Recorder()
        out = attend(c.q, c.k, c.v, probes=[rec], **c.kwargs())
    finally:
        R.CHUNK_BYTES = old
    ref = attend(c.q, c.k, c.v, backend="reference", **c.kwargs())
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # Probes never see more than a chunk of rows, and the rows they see are the reference's.
    x = Inputs(c.q, c.k, c.v, c.q.shape[-1] ** -0.5, **_inputs_kw(c))
    probs = reference_probs(x)
    allowed = x.allowed(dense=True)
    if allowed is not None and x.bias is not None:
        allowed = allowed & ~torch.isneginf(x.bias)
    for ch in rec.chunks:
        assert ch.probs.shape[2] <= 37
        span = slice(ch.kv_start, ch.kv_start + ch.probs.shape[-1])
        want = probs[:, :, ch.q_idx, span]
        torch.testing.assert_close(ch.probs, want, atol=1e-6, rtol=1e-5)
        if allowed is not None:  # the keys each query may see, as the probes are told
            seen = allowed.expand(*probs.shape)[:, :, ch.q_idx, span]
            assert torch.equal(ch.visible.expand_as(seen), seen)
        outside = probs[:, :, ch.q_idx].sum(-1) - want.sum(-1)
        assert outside.abs().max() < 1e-5  # no mass outside the span handed to probes


def _inputs_kw(c):
    from attnlab.core.attend import _check

    x = _check(c.q, c.k, c.v, c.mask, c.bias, c.is_causal, None)
    return {"mask": x.mask, "dense_mask": x.dense_mask, "bias": x.bias}


def test_causal_row_pass_skips_future_keys():
    q, k, v = qkv(T=100)
    rec = Recorder()
    old = R.CHUNK_BYTES
    R.CHUNK_BYTES = 4 * 4 * 100 * 10  # 10 rows per chunk
    try:
        attend(q, k, v, is_causal=True, probes=[rec])
    finally:
        R.CHUNK_BYTES = old
    assert [ch.probs.shape[-1] for ch in rec.chunks] == list(range(10, 101, 10))


# --- auto ------------------------------------------------------------------------------------


def _choice(T, mask=None, grad=False, edit=False):
    q = torch.randn(1, 2, T, 8, requires_grad=grad)
    x = Inputs(q, q, q, 1.0, mask=mask)
    if edit:
        x.score_mod = lambda s, b, h, qi, ki: s
    return choose_backend(x).name


def test_auto_rule():
    assert _choice(2048) == "sdpa"
    assert _choice(2048, M.causal) == "sdpa"
    assert _choice(2048, M.sliding_window(128)) == "blocked"
    assert _choice(4096, M.neighborhood(7, shape=(64, 64))) == "blocked"
    assert _choice(64, M.sliding_window(8)) == "sdpa"  # too short for tiles to pay
    assert _choice(2048, M.sliding_window(1500)) == "sdpa"  # most tiles computed anyway
    assert _choice(64, edit=True) == "blocked"
    assert _choice(64, edit=True, grad=True) == "reference"


# --- attach ----------------------------------------------------------------------------------


def test_attach_adds_probes_and_edits_inside_the_block_only():
    from attnlab.core import attach

    q, k, v = qkv()
    rec = Recorder()
    zero = FnEdit("output", lambda o: o * 0)
    with attach(probes=[rec], edits=[zero]):
        inside = attend(q, k, v)
    after = attend(q, k, v)
    assert inside.abs().sum() == 0 and after.abs().sum() > 0
    assert len(rec.chunks) >= 1
    n = len(rec.chunks)
    attend(q, k, v)
    assert len(rec.chunks) == n  # detached on exit


def test_attach_nests_outer_edits_first():
    from attnlab.core import attach

    q, k, v = qkv()
    double = FnEdit("output", lambda o: o * 2)
    plus_one = FnEdit("output", lambda o: o + 1)
    with attach(edits=[double]), attach(edits=[plus_one]):
        out = attend(q, k, v)
    torch.testing.assert_close(out, attend(q, k, v) * 2 + 1)
