"""Consciousness prior's bottleneck (paper 8): top-k attention from a query, renormalised over the k kept elements."""

import pytest
import torch
from torch import nn

from attnlab import operators
from attnlab.operators.consciousness import ConsciousnessBottleneck, planted_parents

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train fastest on one thread


def _reference(m, x, query):
    """Loop over rows: scores by hand, softmax over the k largest only."""
    out, ws = [], []
    for b in range(x.shape[0]):
        s = (m.key.weight @ x[b].T).T @ (m.q.weight @ query[b]) / m.dim**0.5  # (N,)
        top = sorted(range(len(s)), key=lambda i: -float(s[i].detach()))[: m.k]
        w = torch.zeros_like(s)
        w[top] = torch.softmax(s[top], 0)
        ws.append(w)
        out.append((w[:, None] * (x[b] @ m.value.weight.T)).sum(0))
    return torch.stack(out), torch.stack(ws)


def test_bottleneck_matches_a_loop_reference_and_keeps_k_elements():
    torch.manual_seed(0)
    m = ConsciousnessBottleneck(8, k=3, out_dim=5)
    x, q = torch.randn(4, 11, 8), torch.randn(4, 8)
    out, w = m(x, q)
    ref_out, ref_w = _reference(m, x, q)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, ref_out)
    assert ((w > 0).sum(-1) == 3).all() and torch.allclose(w.sum(-1), torch.ones(4))


def test_k_equal_to_n_is_plain_single_query_attention():
    torch.manual_seed(1)
    m = ConsciousnessBottleneck(6, k=9)
    x, q = torch.randn(2, 9, 6), torch.randn(2, 6)
    out, w = m(x, q)
    full = torch.softmax(m.scores(x, q), -1)
    torch.testing.assert_close(w, full)
    torch.testing.assert_close(out, torch.einsum("bn,bno->bo", full, m.value(x)))


def test_bottleneck_gradcheck():
    torch.manual_seed(2)
    m = ConsciousnessBottleneck(4, k=2).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    q = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, q: m(x, q)[0], (x, q))


class _Predictor(nn.Module):
    """Variable tokens ``x_i u_i + p_i``, one learned query and linear readout per target."""

    def __init__(self, variables, targets, dim=32):
        super().__init__()
        self.u, self.p = nn.Parameter(torch.randn(variables, dim)), nn.Parameter(torch.randn(variables, dim))
        self.queries = nn.Parameter(torch.randn(targets, dim))
        self.readout = nn.Parameter(torch.randn(targets, dim) / dim**0.5)
        self.bottleneck = ConsciousnessBottleneck(dim, k=2)

    def forward(self, x):  # x (B, V) -> predictions (B, T), weights (B, T, V)
        B, T = x.shape[0], self.queries.shape[0]
        tokens = x[..., None] * self.u + self.p  # (B, V, C)
        tokens = tokens[:, None].expand(B, T, *tokens.shape[1:]).flatten(0, 1)  # (B*T, V, C)
        state, w = self.bottleneck(tokens, self.queries.repeat(B, 1))  # (B*T, C), (B*T, V)
        return (state.view(B, T, -1) * self.readout).sum(-1), w.view(B, T, -1)


@pytest.mark.slow
def test_top2_picks_the_planted_parents():
    """PAPERS.md check: targets depending on 2 of 20 variables, top-2 picks the true parents > 90%.

    Trained with every element readable (k = 20: hard top-2 from the start only ever sees the two
    elements it picked), then the k = 2 bottleneck must pick the parents.
    """
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(3)
    x, y, parents = planted_parents(150 * 64 + 512, generator=g)
    model = _Predictor(20, 8)
    model.bottleneck.k = 20
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(150):
        loss = (model(x[step * 64 : (step + 1) * 64])[0] - y[step * 64 : (step + 1) * 64]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.bottleneck.k = 2
    with torch.no_grad():
        w = model(x[-512:])[1]
    picked = w.topk(2, -1).indices.sort(-1).values  # (B, T, 2)
    hit = (picked == parents.sort(-1).values).all(-1).float().mean()
    assert hit > 0.9, f"top-2 picked the parents in {hit:.0%} of (sample, target) pairs"


def test_planted_parents_targets_are_the_stated_sums():
    x, y, parents = planted_parents(5, variables=6, targets=3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 6) and y.shape == (5, 3) and (parents[:, 0] != parents[:, 1]).all()
    torch.testing.assert_close(y[:, 1], x[:, parents[1, 0]] + x[:, parents[1, 1]])
    torch.testing.assert_close(y[:, 2], x[:, parents[2, 0]] - x[:, parents[2, 1]])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="k must be a positive integer, got k=0"):
        ConsciousnessBottleneck(4, k=0)
    m = ConsciousnessBottleneck(4, k=3)
    with pytest.raises(ValueError, match=r"x must be \[B, N, C\] with C=4, got shape \(2, 5, 3\)"):
        m(torch.randn(2, 5, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"query must be \[B, C\]"):
        m(torch.randn(2, 5, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="k=3 is more than the 2 elements"):
        m(torch.randn(2, 2, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="variables must be an integer >= 2"):
        planted_parents(3, variables=1)


def test_registered():
    assert operators.get("consciousness_bottleneck") is ConsciousnessBottleneck and ConsciousnessBottleneck.paper == "8"
