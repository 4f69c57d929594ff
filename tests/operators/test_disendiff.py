"""Paper 39 (DisenDiff): separation pulls two class maps apart; binding pulls a modifier onto its class."""

import pytest
import torch

from attnlab.operators.disendiff import disendiff_binding, disendiff_separation, soft_iou
from tests.operators.blobs import disk, iou


def test_soft_iou_by_hand():
    a, b = torch.tensor([[1.0, 0.5, 0.0]]), torch.tensor([[0.0, 1.0, 1.0]])
    assert torch.isclose(soft_iou(a, b), torch.tensor(0.5 / 3))  # Σab = 0.5; Σ(a + b − ab) = 1 + 1 + 1


def _optimise(maps, loss, steps=40):
    logits = torch.logit(maps.clamp(1e-4, 1 - 1e-4)).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.2)
    for _ in range(steps):
        opt.zero_grad()
        loss(torch.sigmoid(logits)).backward()
        opt.step()
    return torch.sigmoid(logits).detach()


@pytest.mark.slow
def test_separation_cuts_blob_iou_from_a_half_to_under_a_tenth():
    maps = torch.stack([disk(24, 12, 10.5, 6), disk(24, 12, 13.5, 6)])
    before = iou(maps[0], maps[1])
    after = _optimise(maps, disendiff_separation)
    assert 0.4 < before < 0.6 and iou(after[0], after[1]) < 0.1


@pytest.mark.slow
def test_binding_pulls_a_modifier_onto_its_class():
    cls, mod = disk(24, 12, 8, 5), disk(24, 12, 16, 5)
    before = iou(cls, mod)
    logits = torch.logit(mod.clamp(1e-4, 1 - 1e-4)).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        disendiff_binding(cls[None], torch.sigmoid(logits)[None]).backward()
        opt.step()
    assert before < 0.1 and iou(cls, torch.sigmoid(logits).detach()) > 0.8
