"""Uni-Perceiver scoring (paper 54): p(y|x) ∝ exp(cos(f(x), f(y)) / τ) with one shared encoder f."""

import math

import pytest
import torch
from torch import nn

from attnlab import operators
from attnlab.operators.uni_perceiver import CandidateScorer, concept_bags

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train fastest on one thread


def test_logits_are_cosines_over_tau():
    torch.manual_seed(0)
    enc = nn.Linear(5, 4)
    m = CandidateScorer(enc, tau=0.5)
    x, y = torch.randn(3, 5), torch.randn(6, 5)
    fx, fy = enc(x), enc(y)
    cos = torch.stack([torch.stack([torch.dot(a, b) / (a.norm() * b.norm()) for b in fy]) for a in fx])
    torch.testing.assert_close(m(x, y), cos / 0.5)


def test_tau_is_learned_unless_frozen():
    assert CandidateScorer(nn.Linear(2, 2)).log_tau.requires_grad
    m = CandidateScorer(nn.Linear(2, 2), tau=0.1, learn_tau=False)
    assert not m.log_tau.requires_grad and math.isclose(float(m.log_tau.exp()), 0.1, rel_tol=1e-6)


def test_gradcheck():
    torch.manual_seed(1)
    m = CandidateScorer(nn.Linear(3, 4)).double()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x, y))


def _accuracy(m, classes, g):
    x, labels, candidates = concept_bags(classes, 512, generator=g)
    with torch.no_grad():
        return float((m(x, candidates).argmax(-1) == labels).float().mean())


@pytest.mark.slow
def test_zero_shot_on_held_out_label_sets_well_above_chance():
    """PAPERS.md check: trained on 16 classes, the scorer picks among 8 unseen classes well above chance (1/8): > 0.5."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    seen, unseen = torch.arange(16), torch.arange(16, 24)
    m = CandidateScorer(nn.Sequential(nn.EmbeddingBag(48, 32), nn.Linear(32, 32)))
    before = _accuracy(m, unseen, g)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(200):
        x, labels, candidates = concept_bags(seen, 64, generator=g)
        loss = nn.functional.cross_entropy(m(x, candidates), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _accuracy(m, unseen, g)
    assert before < 0.3 and after > 0.5, f"zero-shot accuracy on unseen classes: untrained {before:.2f}, trained {after:.2f} (chance 0.125)"


def test_concept_bags_inputs_hold_their_class_attributes():
    x, labels, candidates = concept_bags(torch.tensor([0, 3, 9]), 20, generator=torch.Generator().manual_seed(0))
    assert x.shape == (20, 6) and candidates.shape == (3, 3) and len({tuple(c) for c in candidates.tolist()}) == 3
    for row, c in zip(x.tolist(), labels.tolist()):
        assert {24 + a for a in candidates[c].tolist()} <= set(row)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="tau must be a positive temperature, got tau=0"):
        CandidateScorer(nn.Linear(2, 2), tau=0)
    with pytest.raises(ValueError, match=r"encoder must be an nn\.Module"):
        CandidateScorer(lambda x: x)
    with pytest.raises(ValueError, match=r"must return \[B, D\] features, got shape \(2, 3, 4\) for x"):
        CandidateScorer(nn.Linear(3, 4))(torch.randn(2, 3, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="classes must be a 1-D long tensor"):
        concept_bags(torch.tensor([30]), 4)


def test_registered():
    assert operators.get("candidate_scorer") is CandidateScorer and CandidateScorer.paper == "54"
