"""Tensor Brain SPO decoder (paper 2): p(s|q) p(p|s,q) p(o|s,p,q), each a softmax over an index layer."""

import itertools

import pytest
import torch

from attnlab import operators
from attnlab.operators.tensor_brain import SPODecoder, filtered_mrr, synthetic_kg

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train fastest on one thread


def test_the_three_steps_match_the_formulas():
    torch.manual_seed(0)
    m = SPODecoder(6, 3, dim=5)
    q, s, p = torch.randn(2, 5), torch.tensor([1, 4]), torch.tensor([2, 0])
    torch.testing.assert_close(m.subject_logits(q), q @ m.A.T)
    h1 = torch.tanh(q + m.A[s])
    torch.testing.assert_close(m.predicate_logits(q, s), h1 @ m.B.T)
    torch.testing.assert_close(m.object_logits(q, s, p), torch.tanh(h1 + m.B[p]) @ m.A.T)


def test_triple_probabilities_sum_to_one_over_every_triple():
    torch.manual_seed(1)
    m = SPODecoder(4, 3, dim=6).double()
    spo = torch.tensor(list(itertools.product(range(4), range(3), range(4))))  # (48, 3) every triple
    q = torch.randn(1, 6, dtype=torch.float64).expand(len(spo), -1)
    total = m(q, spo[:, 0], spo[:, 1], spo[:, 2]).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64))


def test_gradcheck():
    torch.manual_seed(2)
    m = SPODecoder(4, 2, dim=3).double()
    q = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    s, p, o = torch.tensor([0, 3]), torch.tensor([1, 0]), torch.tensor([2, 2])
    assert torch.autograd.gradcheck(lambda q: m(q, s, p, o), (q,))


@pytest.mark.slow
def test_held_out_mrr_far_above_random_on_a_synthetic_kg():
    """PAPERS.md check: synthetic KG (50 entities, 500 triples), held-out MRR far above random (here: > 2.5×)."""
    torch.manual_seed(0)
    kg = synthetic_kg(entities=50, triples=500, generator=torch.Generator().manual_seed(0))
    train, test = kg[:400], kg[400:]
    known = {}
    for s, p, o in kg.tolist():
        known.setdefault((s, p), set()).add(o)
    m = SPODecoder(50, 4)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(300):
        loss = -m(m.state.expand(len(train), -1), train[:, 0], train[:, 1], train[:, 2]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    n_left = [50 - len(known[(s, p)]) + 1 for s, p, _ in test.tolist()]
    random = sum(sum(1 / r for r in range(1, n + 1)) / n for n in n_left) / len(n_left)  # expected MRR of a random ranking
    with torch.no_grad():
        mrr = filtered_mrr(m.object_logits(m.state.expand(len(test), -1), test[:, 0], test[:, 1]), test, kg)
    assert mrr > 2.5 * random, f"held-out MRR {mrr:.3f}, random {random:.3f}"


def test_filtered_mrr_by_hand():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0], [5.0, 4.0, 3.0, 2.0]])
    queries = torch.tensor([[0, 0, 2], [1, 0, 3]])  # true objects 2 and 3
    known = torch.tensor([[0, 0, 2], [0, 0, 1], [1, 0, 3]])  # object 1 of (0, 0) is left out of the first ranking
    assert filtered_mrr(logits, queries, known) == (1 / 1 + 1 / 4) / 2


def test_synthetic_kg_has_distinct_triples_in_range():
    kg = synthetic_kg(entities=10, predicates=2, triples=30, generator=torch.Generator().manual_seed(0))
    assert kg.shape == (30, 3) and len({tuple(t) for t in kg.tolist()}) == 30
    assert kg[:, [0, 2]].max() < 10 and kg[:, 1].max() < 2 and kg.min() >= 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="dim must be a positive integer, got dim=0"):
        SPODecoder(3, 2, dim=0)
    m = SPODecoder(3, 2, dim=4)
    q = m.state.expand(2, -1)
    with pytest.raises(ValueError, match=r"s must be a long tensor \[B\] = \[2\] of indices in \[0, 3\)"):
        m.predicate_logits(q, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"p must be a long tensor"):
        m.object_logits(q, torch.tensor([0, 1]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"q must be \[B, D\] with D=4, got shape \(2, 5\)"):
        m.subject_logits(torch.randn(2, 5))
    with pytest.raises(ValueError, match="triples must be an integer in"):
        synthetic_kg(entities=2, predicates=1, triples=5)


def test_registered():
    assert operators.get("spo_decoder") is SPODecoder and SPODecoder.paper == "2"
