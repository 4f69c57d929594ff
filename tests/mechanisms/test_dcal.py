"""DCAL (paper 22): attention rollout, GLCA from top-R queries, PWCA over an image pair."""

from functools import reduce

import pytest
import torch

from attnlab import mechanisms
from attnlab.mechanisms.dcal import DCAL, attention_rollout


def _attention(qkv: torch.nn.Linear, proj: torch.nn.Linear, x: torch.Tensor, kv: torch.Tensor, heads: int) -> torch.Tensor:
    """Queries from x, keys/values from kv, explicit softmax, then the projection."""
    B, T, C = x.shape
    D = C // heads
    q = qkv(x)[..., :C].reshape(B, T, heads, D).transpose(1, 2)
    k, v = (qkv(kv)[..., i * C : (i + 1) * C].reshape(B, -1, heads, D).transpose(1, 2) for i in (1, 2))
    out = torch.softmax(q @ k.transpose(-1, -2) / D**0.5, dim=-1) @ v
    return proj(out.transpose(1, 2).reshape(B, T, C))


def test_dcal_forward_is_self_attention():
    torch.manual_seed(0)
    m = DCAL(16, 4)
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(m(x), _attention(m.qkv, m.proj, x, x, 4), atol=1e-5, rtol=1e-5)


def test_pwca_on_identical_pair_equals_self_attention():
    torch.manual_seed(1)
    m = DCAL(16, 4).train()
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(m(x, pair=x), m(x), atol=1e-5, rtol=1e-5)


def test_pwca_attends_over_concatenated_pair():
    torch.manual_seed(2)
    m = DCAL(16, 4).train()
    x, x2 = torch.randn(2, 7, 16), torch.randn(2, 5, 16)
    expected = _attention(m.qkv, m.proj, x, torch.cat([x, x2], dim=1), 4)
    torch.testing.assert_close(m(x, pair=x2), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(m(x, pair=x2), m(x), atol=1e-3)


def test_glca_with_all_queries_equals_self_attention():
    torch.manual_seed(3)
    m = DCAL(16, 4, ratio=1.0)
    m.glca_qkv.load_state_dict(m.qkv.state_dict())
    m.glca_proj.load_state_dict(m.proj.state_dict())
    x = torch.randn(2, 9, 16)
    out, index = m.glca(x, torch.softmax(torch.randn(2, 9, 9), -1))
    assert index.tolist() == [list(range(9))] * 2
    torch.testing.assert_close(out, m(x), atol=1e-5, rtol=1e-5)


def test_glca_top_r_queries_attend_to_all_keys():
    torch.manual_seed(4)
    m = DCAL(8, 2, ratio=0.3)
    x = torch.randn(2, 11, 8)
    rollout = torch.softmax(torch.randn(2, 11, 11), -1)
    out, index = m.glca(x, rollout)
    full = _attention(m.glca_qkv, m.glca_proj, x, x, 2)  # every query; GLCA keeps some rows of it
    for b in range(2):
        patches = (torch.argsort(rollout[b, 0, 1:], descending=True)[:3] + 1).tolist()  # round(0.3 · 10) = 3
        assert index[b].tolist() == sorted([0, *patches])
        torch.testing.assert_close(out[b], full[b, index[b]], atol=1e-5, rtol=1e-5)


def test_glca_without_cls_scores_tokens_by_received_attention():
    m = DCAL(8, 2, ratio=0.25, cls_token=False)
    rollout = torch.full((1, 8, 8), 0.01)
    rollout[0, :, 5] = 0.5
    rollout[0, :, 2] = 0.3
    assert m.select(rollout).tolist() == [[2, 5]]


def test_attention_rollout_equals_its_formula():
    g = torch.Generator().manual_seed(5)
    maps = [torch.softmax(torch.randn(2, 3, 6, 6, generator=g), -1) for _ in range(3)]
    bars = [0.5 * s.mean(1) + 0.5 * torch.eye(6) for s in maps]
    expected = reduce(torch.matmul, reversed(bars))  # S̄_3 S̄_2 S̄_1
    rollout = attention_rollout(maps)
    torch.testing.assert_close(rollout, expected)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, 6))
    s1, s2 = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]), torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    torch.testing.assert_close(attention_rollout([s1, s2]), torch.tensor([[[0.75, 0.25], [0.5, 0.5]]]))  # later layer on the left


def test_glca_accepts_attention_maps():
    torch.manual_seed(6)
    m = DCAL(8, 2, ratio=0.5)
    x = torch.randn(1, 7, 8)
    maps = [torch.softmax(torch.randn(1, 2, 7, 7), -1) for _ in range(2)]
    out_maps, index_maps = m.glca(x, maps)
    out_rollout, index_rollout = m.glca(x, attention_rollout(maps))
    assert torch.equal(index_maps, index_rollout) and torch.equal(out_maps, out_rollout)


def test_dcal_gradcheck_pwca_and_glca():
    torch.manual_seed(7)
    m = DCAL(4, 2, ratio=0.5, backend="reference").double().train()
    x = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, x2: m(x, pair=x2), (x, x2))
    rollout = torch.softmax(torch.randn(1, 5, 5, dtype=torch.float64), -1)
    assert torch.autograd.gradcheck(lambda x: m.glca(x, rollout)[0], (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dcal_shape_and_dtype(dtype):
    torch.manual_seed(8)
    m = DCAL(16, 4, ratio=0.5).to(dtype).train()
    x = torch.randn(2, 9, 16, dtype=dtype)
    y = m(x, pair=torch.randn(2, 9, 16, dtype=dtype))
    out, index = m.glca(x, torch.softmax(torch.randn(2, 9, 9), -1).to(dtype))
    assert y.shape == (2, 9, 16) and out.shape == (2, 5, 16) and index.shape == (2, 5)
    assert y.dtype == out.dtype == dtype and not y.isnan().any() and not out.isnan().any()


@pytest.mark.parametrize(
    ("kw", "text"),
    [
        ({"dim": 10, "heads": 4}, "dim must be divisible by heads, got dim=10, heads=4"),
        ({"dim": 8, "heads": 2, "ratio": 0.0}, r"ratio must be in \(0, 1\]"),
        ({"dim": 8, "heads": 2, "ratio": 1.5}, r"ratio must be in \(0, 1\]"),
    ],
)
def test_dcal_bad_options_raise(kw, text):
    with pytest.raises(ValueError, match=text):
        DCAL(**kw)


def test_dcal_bad_inputs_raise():
    m = DCAL(8, 2)
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="PWCA is a training-time regulariser"):
        m.eval()(x, pair=x)
    with pytest.raises(ValueError, match=r"rollout must be \[B, T, T\] = \[2, 5, 5\], got shape \(2, 4, 4\)"):
        m.glca(x, torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match="at least one attention map"):
        m.glca(x, [])
    with pytest.raises(ValueError, match=r"pair must be \[B, T, C\] with C=8"):
        m.train()(x, pair=torch.randn(2, 5, 6))


def test_dcal_registered():
    assert isinstance(mechanisms.get("dcal", dim=8, heads=2, ratio=0.3), DCAL)
