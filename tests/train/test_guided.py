"""The guiding and reconstruction losses of multi-scale self-guided attention (paper 43), against hand-computed values."""

import pytest
import torch

from attnlab.mechanisms.pam_cam import PamCam
from attnlab.train.guided import guiding_loss, reconstruction_loss, self_guided_loss

E1 = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0.0, 2.0])]
E2 = [torch.tensor([[1.0, 0.0], [3.0, 1.0]]), torch.tensor([1.0, 2.0])]
# scale 0: squares 0, 4, 0, 9 (mean 13/4, sum 13); scale 1: squares 1, 0 (mean 1/2, sum 1)


def test_guiding_loss_by_hand_mean_and_sum():
    assert float(guiding_loss(E1, E2)) == pytest.approx(13 / 4 + 1 / 2)
    assert float(guiding_loss(E1, E2, reduction="sum")) == pytest.approx(14.0)
    assert float(guiding_loss(E1, E1)) == 0.0


def test_total_loss_by_hand():
    rec_in, rec_out = [torch.ones(2, 3)], [torch.full((2, 3), 3.0)]  # squares 4: mean 4
    assert float(reconstruction_loss(rec_in, rec_out)) == pytest.approx(4.0)
    got = self_guided_loss(torch.tensor(1.5), E1, E2, rec_in, rec_out, guide_weight=0.5, rec_weight=0.25)
    assert float(got) == pytest.approx(1.5 + 0.5 * 3.75 + 0.25 * 4.0)


def test_guiding_loss_on_pam_cam_outputs_is_their_mse_and_reaches_both_gammas():
    torch.manual_seed(0)
    a, b = PamCam(16), PamCam(16)
    with torch.no_grad():
        for m in (a, b):
            m.pam.gamma.fill_(1.0)
            m.cam.gamma.fill_(0.5)
    x = torch.randn(2, 4, 4, 16)
    loss = guiding_loss([a(x)], [b(x)])
    loss.backward()
    want = ((a(x) - b(x)) ** 2).mean()
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    assert a.pam.gamma.grad is not None and b.cam.gamma.grad is not None


def test_mismatched_scales_raise():
    with pytest.raises(ValueError, match="scale"):
        guiding_loss(E1, E2[:1])
    with pytest.raises(ValueError, match="shapes"):
        guiding_loss([torch.ones(2)], [torch.ones(3)])
    with pytest.raises(ValueError, match="reduction"):
        guiding_loss(E1, E2, reduction="max")
