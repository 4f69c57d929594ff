"""F-LMM (paper 64): the mask head over stacked word-to-patch maps beats the best single-head threshold; dice + BCE."""

import pytest
import torch

from attnlab.operators import get
from attnlab.operators.flmm import FLMMHead, dice_bce_loss, mask_iou

G, C, INFORMATIVE = 8, 12, (1, 6, 10)  # an 8 × 8 patch grid; 3 layers × 4 heads, three of which see the object


def _synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Planted elliptic masks ``[n, 1, G, G]`` and attention-like maps ``[n, C, G, G]`` (rows over the patches sum to 1)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(G).float(), torch.arange(G).float(), indexing="ij")
    cy, cx = torch.rand(n, 1, 1, generator=g) * (G - 3) + 1.5, torch.rand(n, 1, 1, generator=g) * (G - 3) + 1.5
    ry, rx = torch.rand(n, 1, 1, generator=g) * 1.5 + 1.2, torch.rand(n, 1, 1, generator=g) * 1.5 + 1.2
    masks = ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1).float().unsqueeze(1)  # [n, 1, G, G]
    logits = torch.randn(n, C, G, G, generator=g) * 1.2  # noise in every head
    for c in INFORMATIVE:
        logits[:, c] += 1.5 * masks[:, 0]  # an informative head: more attention on the object's patches
    maps = torch.softmax(logits.flatten(2), -1).view(n, C, G, G)  # [n, C, G, G]
    return maps, masks


def _best_single_head_iou(maps, masks) -> float:
    """The best mean IoU of any one head thresholded at any of its value quantiles (chosen on the evaluation set itself)."""
    best = 0.0
    for c in range(C):
        x = maps[:, c : c + 1]
        for t in torch.quantile(x.flatten(), torch.linspace(0.05, 0.95, 37)):
            best = max(best, float(mask_iou(x > t, masks).mean()))
    return best


@pytest.mark.slow
def test_flmm_head_beats_the_best_single_head_threshold(one_thread):
    train_maps, train_masks = _synthetic(256, seed=0)
    test_maps, test_masks = _synthetic(128, seed=1)
    torch.manual_seed(0)
    head = FLMMHead(C)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for step in range(250):
        idx = torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(step))
        loss = dice_bce_loss(head(train_maps[idx]), train_masks[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        flmm = float(mask_iou(head(test_maps) > 0, test_masks).mean())
    single = _best_single_head_iou(test_maps, test_masks)
    assert flmm > single + 0.1, (flmm, single)


def test_dice_bce_matches_a_hand_computed_value():
    logits = torch.tensor([[[[2.0, -1.0], [0.0, 3.0]]]])  # [1, 1, 2, 2]
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    p = torch.sigmoid(logits).flatten()
    t = target.flatten()
    bce = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    dice = (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    torch.testing.assert_close(dice_bce_loss(logits, target), bce + 1 - dice)
    torch.testing.assert_close(dice_bce_loss(logits, target, dice_weight=0.0), bce)


def test_head_shapes_upsampling_and_registration():
    head = FLMMHead(6, width=8)
    assert head(torch.rand(3, 6, 4, 4)).shape == (3, 1, 4, 4)
    assert head(torch.rand(3, 6, 4, 4), size=(16, 16)).shape == (3, 1, 16, 16)
    assert get("flmm_head") is FLMMHead and get("dice_bce_loss") is dice_bce_loss


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"maps must be \[B, 6, h, w\].*got shape \[3, 5, 4, 4\]"):
        FLMMHead(6)(torch.rand(3, 5, 4, 4))
    with pytest.raises(ValueError, match="channels must be the number of stacked maps"):
        FLMMHead(0)
    with pytest.raises(ValueError, match="one shape"):
        dice_bce_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
