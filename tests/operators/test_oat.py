"""OAT (paper 24): object tokens + 2-D object positional encoding, a causal decoder pointing at the next fixated object."""

import math

import pytest
import torch
from torch.nn import functional as F

from attnlab import operators
from attnlab.operators.oat import OAT, object_position_encoding, saliency_baseline, search_scanpaths

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train fastest on one thread


def test_position_encoding_by_hand():
    pe = object_position_encoding(torch.tensor([[0.25, 0.5]]), 8)  # frequencies π, 2π
    x, y = 0.25, 0.5
    want = [math.sin(math.pi * x), math.sin(2 * math.pi * x), math.cos(math.pi * x), math.cos(2 * math.pi * x)]
    want += [math.sin(math.pi * y), math.sin(2 * math.pi * y), math.cos(math.pi * y), math.cos(2 * math.pi * y)]
    torch.testing.assert_close(pe, torch.tensor([want]))


def test_logits_at_step_t_do_not_see_later_fixations():
    torch.manual_seed(0)
    m = OAT(6, dim=16, heads=2, layers=1).eval()
    d = search_scanpaths(2, generator=torch.Generator().manual_seed(0))
    a = m(d["objects"], d["positions"], d["target"], d["scanpath"])
    other = d["scanpath"].clone()
    other[:, 2:] = (other[:, 2:] + 1) % 10
    b = m(d["objects"], d["positions"], d["target"], other)
    assert a.shape == (2, 5, 10)
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def test_objects_are_a_set_permuting_them_permutes_the_logits():
    torch.manual_seed(1)
    m = OAT(6, dim=16, heads=2, layers=1).eval()
    d = search_scanpaths(3, generator=torch.Generator().manual_seed(1))
    perm = torch.randperm(10)
    inverse = perm.argsort()
    a = m(d["objects"], d["positions"], d["target"], d["scanpath"])
    b = m(d["objects"][:, perm], d["positions"][:, perm], d["target"], inverse[d["scanpath"]])
    torch.testing.assert_close(b, a[..., perm], atol=1e-5, rtol=1e-5)


def test_gradcheck():
    torch.manual_seed(2)
    m = OAT(3, dim=8, heads=2, layers=1).double().eval()
    objects = torch.randn(1, 4, 3, dtype=torch.float64, requires_grad=True)
    pos = torch.rand(1, 4, 2, dtype=torch.float64, requires_grad=True)
    target = torch.randn(1, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda o, p: m(o, p, target, torch.tensor([[2]])), (objects, pos))


def test_searcher_and_baseline():
    d = search_scanpaths(50, generator=torch.Generator().manual_seed(0))
    path = d["scanpath"]
    assert path.shape == (50, 4) and all(len(set(row)) == 4 for row in path.tolist())
    first_shared = (d["objects"][torch.arange(50), path[:, 0]] * d["target"]).sum(-1)
    assert first_shared.mean() > 1.2  # the searcher goes for target-like objects first
    s = saliency_baseline(d["objects"], path)
    assert s.shape == (50, 5, 10) and torch.isinf(s[torch.arange(50), 1, path[:, 0]]).all() and torch.isfinite(s[:, 0]).all()


def _accuracy(logits, path):
    return float((logits[:, :-1].argmax(-1) == path).float().mean())


@pytest.mark.slow
def test_oat_beats_a_saliency_baseline_on_simulated_search():
    """PAPERS.md check: next-fixated-object accuracy of a trained OAT > the saliency baseline's + 0.3 on held-out scenes."""
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(3)
    m = OAT(6)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(150):
        d = search_scanpaths(64, generator=g)
        logits = m(d["objects"], d["positions"], d["target"], d["scanpath"])[:, :-1]  # (B, T, N)
        loss = F.cross_entropy(logits.flatten(0, 1), d["scanpath"].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    d = search_scanpaths(500, generator=g)
    with torch.no_grad():
        logits = m(d["objects"], d["positions"], d["target"], d["scanpath"])
    visited = torch.isinf(saliency_baseline(d["objects"], d["scanpath"]))  # both models skip fixated objects
    oat = _accuracy(logits.masked_fill(visited, float("-inf")), d["scanpath"])
    base = _accuracy(saliency_baseline(d["objects"], d["scanpath"]), d["scanpath"])
    assert oat > base + 0.3, f"next-fixation accuracy: OAT {oat:.2f}, saliency {base:.2f} (chance about 0.12)"


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="dim must be a positive multiple of 4"):
        object_position_encoding(torch.rand(3, 2), 6)
    with pytest.raises(ValueError, match=r"pos must be \[..., 2\]"):
        object_position_encoding(torch.rand(3, 3), 8)
    with pytest.raises(ValueError, match="dim must be a multiple of 4 and of heads"):
        OAT(6, dim=12, heads=8)
    m = OAT(6, dim=8, heads=2, layers=1)
    objects, pos, target = torch.randn(2, 5, 6), torch.rand(2, 5, 2), torch.randn(2, 6)
    with pytest.raises(ValueError, match=r"objects must be \[B, N, F\] with F=6"):
        m(torch.randn(2, 5, 4), pos, target, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"positions must be \[B, N, 2\]"):
        m(objects, torch.rand(2, 4, 2), target, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"history must be a long tensor \[B, T\] of object indices in \[0, 5\)"):
        m(objects, pos, target, torch.full((2, 1), 5))
    with pytest.raises(ValueError, match="fixations must be an integer in"):
        search_scanpaths(2, fixations=11)


def test_registered():
    assert operators.get("oat") is OAT and operators.get("object_position_encoding") is object_position_encoding
    assert OAT.paper == object_position_encoding.paper == "24"
