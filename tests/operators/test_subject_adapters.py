"""Per-subject adapters into a shared decoder (paper 62)."""

import pytest
import torch
from torch import nn

from attnlab import operators
from attnlab.operators.subject_adapters import SubjectAdapters


def test_forward_is_decoder_of_the_subjects_linear_map():
    torch.manual_seed(0)
    m = SubjectAdapters([5, 7], dim=4, out_dim=3, hidden=6)
    x = torch.randn(2, 7)
    A = m.adapters[1]
    torch.testing.assert_close(m(x, 1), m.decoder(x @ A.weight.T + A.bias))


def test_identity_adapter_reduces_to_the_decoder():
    dec = nn.Linear(4, 2)
    m = SubjectAdapters([4], dim=4, decoder=dec)
    with torch.no_grad():
        m.adapters[0].weight.copy_(torch.eye(4))
        m.adapters[0].bias.zero_()
    x = torch.randn(3, 4)
    torch.testing.assert_close(m(x, 0), dec(x))


def test_a_subjects_loss_touches_only_its_adapter_and_the_shared_decoder():
    torch.manual_seed(1)
    m = SubjectAdapters([5, 6, 7], dim=4, out_dim=2)
    m(torch.randn(3, 6), 1).sum().backward()
    assert m.adapters[0].weight.grad is None and m.adapters[2].weight.grad is None
    assert m.adapters[1].weight.grad is not None and all(p.grad is not None for p in m.shared())


def test_new_subject_with_frozen_decoder_trains_only_its_adapter():
    torch.manual_seed(2)
    m = SubjectAdapters([5], dim=4, out_dim=2)
    s = m.add_subject(9)
    before = [p.clone() for p in m.shared()]
    for p in m.shared():
        p.requires_grad_(False)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    m(torch.randn(4, 9), s).pow(2).sum().backward()
    opt.step()
    assert s == 1 and all(torch.equal(a, b) for a, b in zip(before, m.shared()))
    assert m.adapters[1].weight.grad is not None and m.adapters[0].weight.grad is None


def test_gradcheck():
    torch.manual_seed(3)
    m = SubjectAdapters([3, 5], dim=4, out_dim=2, hidden=3).double()
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t, 1), (x,))


def test_registered():
    assert operators.get("subject_adapters") is SubjectAdapters and SubjectAdapters.paper == "62"


def test_bad_options_and_inputs_raise():
    with pytest.raises(ValueError, match="at least one subject"):
        SubjectAdapters([], dim=4)
    with pytest.raises(ValueError, match="dim must be"):
        SubjectAdapters([3], dim=0)
    with pytest.raises(ValueError, match="input width must be"):
        SubjectAdapters([3, 0], dim=4)
    m = SubjectAdapters([3, 5], dim=4)
    with pytest.raises(ValueError, match=r"subject must be an index in \[0, 2\)"):
        m(torch.randn(2, 3), 2)
    with pytest.raises(ValueError, match=r"subject 1 takes x of shape \[B, 5\]"):
        m(torch.randn(2, 3), 1)
