"""Paper 16 (IR-Diffusion): the reposition step moves a box of features into another box."""

import pytest
import torch
import torch.nn.functional as F

from attnlab.operators.reposition import reposition


def test_target_box_holds_the_resized_source_and_the_rest_is_unchanged():
    x = torch.randn(1, 3, 8, 8)
    out = reposition(x, (0, 0, 2, 2), (4, 4, 4, 4))
    torch.testing.assert_close(out[..., 4:8, 4:8], F.interpolate(x[..., :2, :2], size=(4, 4), mode="bilinear"))
    keep = torch.ones(8, 8, dtype=torch.bool)
    keep[4:, 4:] = False
    assert torch.equal(out[..., keep], x[..., keep])


def test_a_box_outside_the_map_is_refused():
    with pytest.raises(ValueError, match="target box"):
        reposition(torch.zeros(1, 1, 4, 4), (0, 0, 2, 2), (3, 3, 2, 2))
