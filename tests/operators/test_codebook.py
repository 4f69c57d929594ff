"""Codebook bottleneck (paper 55): out = Linear(softmax(W ReLU(e)) C)."""

import pytest
import torch

from attnlab import operators
from attnlab.operators.codebook import CodebookBottleneck


def test_matches_handwritten_formula():
    torch.manual_seed(0)
    m = CodebookBottleneck(6, 5, code_dim=3, out_dim=4)
    e = torch.randn(2, 6)
    p = torch.softmax(torch.relu(e) @ m.score.weight.T + m.score.bias, -1)
    torch.testing.assert_close(m(e), (p @ m.codebook) @ m.up.weight.T + m.up.bias)


def test_weights_are_convex():
    torch.manual_seed(1)
    p = CodebookBottleneck(8).weights(3 * torch.randn(10, 8))
    assert p.shape == (10, 256) and (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(10))


def test_one_hot_scores_return_one_projected_code():
    """A score dominated by code k makes p one-hot, and the output is up(C[k])."""
    m = CodebookBottleneck(3, 4, code_dim=2)
    with torch.no_grad():
        m.score.weight.zero_()
        m.score.bias.copy_(torch.tensor([0.0, 0.0, 1e4, 0.0]))
    out = m(torch.randn(5, 3))
    torch.testing.assert_close(out, m.up(m.codebook[2]).expand(5, 3))


def test_output_stays_in_the_hull_of_codes():
    """Whatever the input, out lies in up(hull(C)): in the code space, z = out mapped back is a convex mix."""
    torch.manual_seed(2)
    m = CodebookBottleneck(4, 3, code_dim=3, out_dim=3)
    e = 100 * torch.randn(50, 4)
    z = torch.linalg.solve(m.up.weight, (m(e) - m.up.bias).T).T  # (50, D_c) recovered p C
    mix = torch.linalg.solve(m.codebook.T, z.T).T  # (50, K) = p, C square and invertible
    assert (mix > -1e-4).all()
    torch.testing.assert_close(mix.sum(-1), torch.ones(50), atol=1e-4, rtol=0)


def test_gradcheck():
    torch.manual_seed(3)
    m = CodebookBottleneck(4, 6, code_dim=2).double()
    e = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (e,))


def test_registered():
    assert operators.get("codebook_bottleneck") is CodebookBottleneck and CodebookBottleneck.paper == "55"


@pytest.mark.parametrize(
    ("kw", "text"), [({"dim": 0}, "dim must be"), ({"dim": 4, "codes": 0}, "codes must be"), ({"dim": 4, "code_dim": -1}, "code_dim")]
)
def test_bad_options_raise(kw, text):
    with pytest.raises(ValueError, match=text):
        CodebookBottleneck(**kw)


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"e must be \[..., C\] with C=4"):
        CodebookBottleneck(4)(torch.randn(2, 5))
