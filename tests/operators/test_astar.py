"""Paper 18 (A-STAR): the segregation loss pulls two overlapping blobs apart; the retention loss."""

import pytest
import torch

from attnlab.operators.astar import astar_retention, astar_segregation
from tests.operators.blobs import disk, iou


def _pair(size=24):
    return torch.stack([disk(size, 12, 10.75, 6), disk(size, 12, 13.25, 6)])  # [2, h, w]


def test_segregation_is_the_overlap_over_the_total_by_hand():
    a = torch.tensor([[[1.0, 1.0, 0.0]], [[0.0, 1.0, 1.0]]])  # [2, 1, 3]
    assert float(astar_segregation(a)) == 1 / 4  # min: 1; sums: 2 + 2


@pytest.mark.slow
def test_optimising_segregation_separates_two_overlapping_blobs():
    maps = _pair()
    before = iou(maps[0], maps[1])
    logits = torch.logit(maps.clamp(1e-4, 1 - 1e-4)).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.2)
    for _ in range(40):
        opt.zero_grad()
        astar_segregation(torch.sigmoid(logits)).backward()
        opt.step()
    after = torch.sigmoid(logits).detach()
    assert 0.5 < before < 0.7 and iou(after[0], after[1]) < 0.2


def test_retention_is_zero_on_the_previous_binary_region_and_grows_as_it_is_lost():
    prev = _pair()
    region = (prev >= 0.5 * prev.amax((1, 2), keepdim=True)).float()
    assert float(astar_retention(region, prev)) == 0.0
    shrunk = region.clone()
    shrunk[:, :, :12] = 0
    assert float(astar_retention(shrunk, prev)) > 0.5
