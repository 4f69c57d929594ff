"""Paper 30 (AttenCraft): planted blob masks are recovered from noisy cross-attention and a self-attention affinity."""

import torch

from attnlab.operators.attencraft import attencraft_js, attencraft_masks
from tests.operators.blobs import disk


def test_recovers_planted_blob_masks():
    torch.manual_seed(0)
    size = 16
    planted = torch.stack([disk(size, 5, 5, 3.5) > 0.5, disk(size, 10, 11, 4) > 0.5])  # [2, h, w]
    labels = (planted.long() * torch.tensor([1, 2]).view(2, 1, 1)).sum(0).flatten()  # [P] 0 background, 1, 2
    P = size * size
    same = (labels[:, None] == labels[None, :]).float()  # [P, P] pixels of one region attend to each other
    self_attn = torch.softmax(4 * same + torch.randn(P, P), dim=-1)
    cross = 0.5 * planted.flatten(1).float() + 0.3 * torch.rand(2, P)  # [2, P] weak, noisy maps
    got = attencraft_masks(cross, self_attn)
    want = planted.flatten(1)
    for g, w in zip(got, want):
        assert float((g & w).sum() / (g | w).sum()) > 0.9


def test_masks_are_disjoint_and_a_tie_goes_to_no_concept():
    cross = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    got = attencraft_masks(cross, torch.eye(3))
    assert got.tolist() == [[False, True, False], [False, False, True]]  # pixel 0: a tie, under the margin


def test_js_is_zero_at_the_mask_and_log2_for_disjoint_support():
    masks = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert float(attencraft_js(2 * masks, masks)) == 0.0
    assert torch.isclose(attencraft_js(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), masks), torch.log(torch.tensor(2.0)))
