"""Paper 14: EchoAtt, a layer fed another layer's captured probabilities."""

import pytest
import torch
from einops import rearrange
from torch import nn

import attnlab
from attnlab import mechanisms
from attnlab.core import Site, attend
from attnlab.core import rows as core_rows
from attnlab.core.site import Edit
from attnlab.mechanisms.shared import CaptureProbs, SharedAttention


class _Source(nn.Module):
    """A plain softmax attention layer (the layer whose probabilities are shared)."""

    def __init__(self, dim, heads, name="src"):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.v_proj, self.o_proj = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.site = Site(name, num_heads=heads, num_kv_heads=heads)

    def forward(self, x, is_causal=True, backend="auto"):
        q, k, v = (rearrange(p(x), "b t (h d) -> b h t d", h=self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = attend(q, k, v, is_causal=is_causal, backend=backend, site=self.site)
        return self.o_proj(rearrange(out, "b h t d -> b t (h d)"))


def _pair(dim=8, heads=2, seed=0):
    torch.manual_seed(seed)
    src, shared = _Source(dim, heads), SharedAttention(dim, heads)
    shared.v_proj.load_state_dict(src.v_proj.state_dict())
    shared.o_proj.load_state_dict(src.o_proj.state_dict())
    return src, shared


def test_shared_layer_with_captured_probs_equals_source_output():
    src, shared = _pair()
    x = torch.randn(2, 7, 8)
    cap = CaptureProbs("src")
    with attnlab.attach(edits=[cap]):
        y_src = src(x)
    torch.testing.assert_close(shared(x, cap.probs()), y_src, atol=1e-5, rtol=1e-5)


def test_capture_records_the_softmax_chunk_by_chunk(monkeypatch):
    monkeypatch.setattr(core_rows, "CHUNK_BYTES", 4 * 2 * 2 * 9 * 2)  # 2 query rows per chunk: 5 chunks
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 2, 2, 9, 4).unbind(0)
    cap = CaptureProbs("src")
    with attnlab.attach(edits=[cap]):
        attend(q, k, v, is_causal=True, site=Site("src"))
    assert len(cap._rows) == 5
    s = (q @ k.transpose(-1, -2)) / 2.0  # explicit causal softmax, scale 1/sqrt(4)
    s = s.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(cap.probs(), torch.softmax(s, -1), atol=1e-6, rtol=1e-6)


def test_capture_leaves_source_output_bit_identical():
    src, _ = _pair()
    x = torch.randn(2, 7, 8)

    class PassThrough(Edit):  # the identity probability edit: the row pass, untouched
        stage = "probs"

        def at(self, site):
            return lambda p, q_idx, kv_idx: p

    with attnlab.attach(edits=[PassThrough()]):
        y_plain = src(x)
    with attnlab.attach(edits=[CaptureProbs("src")]):
        y_cap = src(x)
    assert torch.equal(y_cap, y_plain)
    torch.testing.assert_close(y_cap, src(x, backend="reference"), atol=1e-6, rtol=1e-6)


def test_gradients_flow_to_values_and_output_not_to_probs():
    src, shared = _pair()
    x = torch.randn(2, 7, 8)
    cap = CaptureProbs("src")
    with attnlab.attach(edits=[cap]):
        src(x)
    P = cap.probs()
    shared(x, P).square().sum().backward()
    assert not P.requires_grad
    assert shared.v_proj.weight.grad.abs().sum() > 0 and shared.o_proj.weight.grad.abs().sum() > 0
    assert src.q_proj.weight.grad is None and src.k_proj.weight.grad is None


def test_capture_without_detach_lets_gradients_reach_the_source_queries():
    src, shared = _pair()
    x = torch.randn(2, 7, 8)
    cap = CaptureProbs("src", detach=False)
    with attnlab.attach(edits=[cap]):
        src(x)
    shared(x, cap.probs()).square().sum().backward()
    assert src.q_proj.weight.grad.abs().sum() > 0


def test_shared_layer_with_causal_probs_is_causal():
    src, shared = _pair()
    x = torch.randn(1, 8, 8)
    cap = CaptureProbs("src")
    with attnlab.attach(edits=[cap]):
        src(x)
    P = cap.probs()
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 3, 8)
    torch.testing.assert_close(shared(x2, P)[:, :5], shared(x, P)[:, :5], atol=0, rtol=0)
    assert not torch.allclose(shared(x2, P)[:, 5:], shared(x, P)[:, 5:])


def test_capture_keeps_only_the_latest_call_and_pads_keys():
    src, _ = _pair()
    cap = CaptureProbs("src")
    with attnlab.attach(edits=[cap]):
        src(torch.randn(1, 9, 8))
        src(torch.randn(1, 4, 8))
    assert cap.probs().shape == (1, 2, 4, 4)
    padded = cap.probs(kv_len=6)
    assert padded.shape == (1, 2, 4, 6) and padded[..., 4:].abs().sum() == 0


def test_gradcheck_shared_layer():
    torch.manual_seed(2)
    m = SharedAttention(4, 2, bias=True).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    P = torch.softmax(torch.randn(2, 2, 3, 3, dtype=torch.float64), -1).requires_grad_()
    assert torch.autograd.gradcheck(m, (x, P))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shape_and_dtype(dtype):
    m = mechanisms.get("shared", dim=8, heads=2).to(dtype)
    P = torch.softmax(torch.randn(3, 2, 5, 5), -1)  # float32 probabilities, as captured
    out = m(torch.randn(3, 5, 8, dtype=dtype), P)
    assert out.shape == (3, 5, 8) and out.dtype == dtype and not out.isnan().any()


def test_bad_options_raise():
    with pytest.raises(ValueError, match="dim must be divisible by heads"):
        SharedAttention(10, 3)
    with pytest.raises(ValueError, match=r"probs must be \[B\|1, H, T, T\]"):
        SharedAttention(8, 2)(torch.randn(1, 5, 8), torch.rand(1, 2, 5, 4))
    with pytest.raises(ValueError, match="nothing recorded"):
        CaptureProbs("src").probs()
    cap = CaptureProbs("layers.*")
    q = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match="records one site"), attnlab.attach(edits=[cap]):
        attend(q, q, q, site=Site("layers.0"))
        attend(q, q, q, site=Site("layers.1"))
    with pytest.raises(ValueError, match="kv_len=2 is shorter"):
        cap.probs(kv_len=2)
