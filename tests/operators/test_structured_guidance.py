"""Paper 44 (Structured diffusion guidance): k = 1 is cross-attention; k sets give the exact mean of per-set outputs."""

import torch

from attnlab.core import attend
from attnlab.operators.structured_guidance import structured_cross_attention


def _reference(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v


def test_one_value_set_is_cross_attention():
    q, k, v = torch.randn(2, 3, 16, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    torch.testing.assert_close(structured_cross_attention(q, k, [v]), attend(q, k, v), atol=0, rtol=0)


def test_k_value_sets_give_the_mean_of_per_set_outputs():
    q, k = torch.randn(2, 3, 16, 8, dtype=torch.float64), torch.randn(2, 3, 5, 8, dtype=torch.float64)
    values = [torch.randn(2, 3, 5, 8, dtype=torch.float64) for _ in range(4)]
    want = torch.stack([_reference(q, k, v) for v in values]).mean(0)
    torch.testing.assert_close(structured_cross_attention(q, k, values), want, atol=1e-12, rtol=0)
