"""ITHP (paper 34): L = I(X0;B0) − β I(B0;X1) + λ [I(B0;B1) − γ I(B1;X2)] through variational bounds."""

import pytest
import torch

from attnlab import operators
from attnlab.operators.ithp import ITHP

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train fastest on one thread


def test_loss_is_the_weighted_sum_of_its_terms_with_the_papers_defaults():
    torch.manual_seed(0)
    m = ITHP((6, 4, 3), latent=(5, 2), hidden=8).eval()
    assert (m.beta, m.gamma, m.lam) == (8.0, 32.0, 0.3)
    x0, x1, x2 = torch.randn(7, 6), torch.randn(7, 4), torch.randn(7, 3)
    out = m.loss(x0, x1, x2)
    torch.testing.assert_close(out["total"], out["kl0"] + 8 * out["rec1"] + 0.3 * (out["kl1"] + 32 * out["rec2"]))
    mu0, logvar0 = m.enc0(x0).chunk(2, -1)  # eval: B0 = μ0
    kl0 = sum(0.5 * float((mu0[i].detach() ** 2 + logvar0[i].detach().exp() - 1 - logvar0[i].detach()).sum()) for i in range(7)) / 7
    assert abs(float(out["kl0"].detach()) - kl0) < 1e-5
    b1 = m.enc1(mu0).chunk(2, -1)[0]
    torch.testing.assert_close(out["b1"], b1)
    torch.testing.assert_close(out["rec2"], 0.5 * ((m.dec2(b1) - x2) ** 2).sum(-1).mean())
    torch.testing.assert_close(m(x0), b1)


def test_training_samples_the_bottleneck_eval_takes_its_mean():
    torch.manual_seed(1)
    m = ITHP((4, 3, 3), hidden=8)
    x0 = torch.randn(3, 4)
    assert not torch.equal(m(x0), m(x0))
    m.eval()
    assert torch.equal(m(x0), m(x0))


def test_gradcheck():
    torch.manual_seed(2)
    m = ITHP((3, 2, 2), latent=(2, 2), hidden=4).double().eval()
    x0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    x1, x2 = torch.randn(2, 2, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: m.loss(x, x1, x2)["total"], (x0,))


def _planted(n, g, mix):
    """Label-relevant signal s (4-d) seen by all three modalities; nuisance u (4-d) only in the prime one."""
    s, u = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    x0 = torch.cat([s, u], 1) @ mix[0] + 0.05 * torch.randn(n, 16, generator=g)
    x1 = s @ mix[1] + 0.05 * torch.randn(n, 8, generator=g)
    x2 = s @ mix[2] + 0.05 * torch.randn(n, 8, generator=g)
    return x0, x1, x2, s, u


def _r2(z, target):
    """Fraction of the target's variance a least-squares linear read-out of z (with bias) explains."""
    z1 = torch.cat([z, torch.ones(len(z), 1)], 1)
    fit = z1 @ torch.linalg.lstsq(z1, target).solution
    return float(1 - (target - fit).pow(2).sum() / (target - target.mean(0)).pow(2).sum())


@pytest.mark.slow
def test_bottleneck_drops_the_nuisance_and_keeps_the_label_signal():
    """PAPERS.md check: B1 keeps the signal all modalities share (R² > 0.8) and drops the prime modality's nuisance (R² < 0.2)."""
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(3)
    mix = (torch.randn(8, 16, generator=g), torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g))
    m = ITHP((16, 8, 8))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(400):
        loss = m.loss(*_planted(128, g, mix)[:3])["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    x0, _, _, s, u = _planted(2000, g, mix)
    m.eval()
    with torch.no_grad():
        b1 = m(x0)
    assert _r2(x0, u) > 0.95  # the prime modality carries the nuisance
    keep, drop = _r2(b1, s), _r2(b1, u)
    assert keep > 0.8 and drop < 0.2, f"R² of a linear read-out from B1: signal {keep:.2f}, nuisance {drop:.2f}"


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="dims must be 3 positive widths"):
        ITHP((4, 3))
    with pytest.raises(ValueError, match="beta must be a non-negative weight, got beta=-1"):
        ITHP((4, 3, 2), beta=-1)
    m = ITHP((4, 3, 2))
    with pytest.raises(ValueError, match=r"x0 must be \[B, D0\] with D0=4"):
        m(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"x2 must be \[B, D2\] with D2=2 and the batch of x0, got shape \(3, 2\)"):
        m.loss(torch.randn(2, 4), torch.randn(2, 3), torch.randn(3, 2))


def test_registered():
    assert operators.get("ithp") is ITHP and ITHP.paper == "34"
