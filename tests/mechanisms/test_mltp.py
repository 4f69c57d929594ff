"""Paper 7: multi-layer trainable pooling, checked against an explicit re-computation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab import mechanisms
from attnlab.mechanisms.mltp import MLTP


def _reference(m: MLTP, hidden, mask):
    """MLTP written out: loops over sequences for the last real token, explicit softmax per head."""
    B, _, T, C = hidden.shape
    H, D = m.heads, C // m.heads
    out = []
    for b in range(B):
        last = max(t for t in range(T) if mask[b, t])
        h = hidden[b, :, last] + m.layer_emb.weight  # [L, C]
        h = F.layer_norm(h, (C,), m.norm_states.weight, m.norm_states.bias)
        lat = m.latents  # [N, C]
        q = F.layer_norm(lat, (C,), m.norm_latents.weight, m.norm_latents.bias) @ m.q_proj.weight.T
        k, v = (h @ m.kv_proj.weight.T).split(C, dim=-1)
        heads = []
        for i in range(H):
            s = slice(i * D, (i + 1) * D)
            p = torch.softmax(q[:, s] @ k[:, s].T / D**0.5, dim=-1)  # [N, L]
            heads.append(p @ v[:, s])
        x = lat + torch.cat(heads, -1) @ m.o_proj.weight.T
        y = F.layer_norm(x, (C,), m.norm_ffn.weight, m.norm_ffn.bias) @ m.ffn.w1.weight.T + m.ffn.w1.bias
        a, g = y[:, : 4 * C], y[:, 4 * C :]
        x = x + (a * F.gelu(g)) @ m.ffn.w2.weight.T + m.ffn.w2.bias
        e = x.mean(0)
        out.append(e / e.norm())
    return torch.stack(out)


def _inputs(B=3, L=4, T=5, C=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, T, C, generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 3:] = 0  # right padding
    mask[2, :2] = 0  # left padding
    return hidden, mask


def test_mltp_matches_explicit_reference():
    torch.manual_seed(0)
    m = MLTP(8, 2, layers=4, latents=3)
    hidden, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(m(hidden, mask), _reference(m, hidden, mask), atol=1e-5, rtol=1e-5)


def test_mltp_output_is_unit_norm():
    torch.manual_seed(1)
    out = MLTP(8, 2, layers=4, latents=3)(*_inputs())
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_mltp_uses_last_non_padded_token_and_ignores_padding():
    torch.manual_seed(2)
    m = MLTP(8, 2, layers=4, latents=3)
    hidden, mask = _inputs()
    out = m(hidden, mask)
    garbage = hidden.clone()
    pad = ~mask.bool()  # [B, T]
    garbage[pad.unsqueeze(1).expand(-1, 4, -1)] = 100 * torch.randn(int(pad.sum()) * 4, 8)
    torch.testing.assert_close(m(garbage, mask), out, atol=0, rtol=0)
    # sequence 1 alone, unpadded (its last real token is position 2), gives the same embedding
    torch.testing.assert_close(m(hidden[1:2, :, :3]), out[1:2], atol=1e-6, rtol=1e-6)
    changed = hidden.clone()
    changed[1, :, 2] += torch.randn(4, 8)  # the last real token of sequence 1
    assert not torch.allclose(m(changed, mask)[1], out[1])


def test_mltp_batch_permutation_permutes_output():
    torch.manual_seed(3)
    m = MLTP(8, 2, layers=4, latents=3)
    hidden, mask = _inputs()
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(m(hidden[perm], mask[perm]), m(hidden, mask)[perm], atol=1e-6, rtol=1e-6)


def test_mltp_accepts_a_sequence_of_layer_states():
    torch.manual_seed(4)
    m = MLTP(8, 2, layers=4, latents=3)
    hidden, mask = _inputs()
    torch.testing.assert_close(m(hidden.unbind(1), mask), m(hidden, mask), atol=0, rtol=0)


def test_gradcheck_mltp():
    torch.manual_seed(5)
    m = MLTP(4, 2, layers=2, latents=2, ffn_mult=1, backend="reference").double()
    hidden = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.autograd.gradcheck(lambda h: m(h, mask), (hidden,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shape_and_dtype(dtype):
    torch.manual_seed(6)
    m = mechanisms.get("mltp", dim=8, heads=2, layers=4, latents=3).to(dtype)
    hidden, mask = _inputs()
    out = m(hidden.to(dtype), mask)
    assert out.shape == (3, 8) and out.dtype == dtype and not out.isnan().any()


def test_bad_options_raise():
    with pytest.raises(ValueError, match="dim must be divisible by heads"):
        MLTP(10, 3)
    with pytest.raises(ValueError, match="latents must be at least 1"):
        MLTP(8, 2, latents=0)
    m = MLTP(8, 2, layers=4, latents=3)
    with pytest.raises(ValueError, match="hidden must be"):
        m(torch.randn(2, 3, 5, 8))
    with pytest.raises(ValueError, match="attention_mask must be"):
        m(torch.randn(2, 4, 5, 8), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"rows \[1\] are all padding"):
        m(torch.randn(2, 4, 5, 8), torch.tensor([[1] * 5, [0] * 5]))


def _accuracy(head, feats, y):
    return (head(feats).argmax(-1) == y).float().mean().item()


def test_mltp_reads_a_label_only_a_middle_layer_carries(one_thread):
    """Paper 7's claim in miniature: the label is linearly readable from layer 2 of 5 only."""
    torch.manual_seed(7)
    n, L, T, C = 128, 5, 2, 8
    y = torch.randint(0, 2, (2 * n,))
    hidden = torch.randn(2 * n, L, T, C)
    u = F.normalize(torch.randn(C), dim=0)
    hidden[:, 2, -1] += 3.0 * (2 * y - 1).float().unsqueeze(-1) * u  # signal in the middle layer only
    tr, te = slice(0, n), slice(n, 2 * n)

    pool = MLTP(C, 2, layers=L, latents=2)
    head = nn.Linear(C, 2)
    opt = torch.optim.Adam([*pool.parameters(), *head.parameters()], lr=3e-2)
    for _ in range(80):
        opt.zero_grad()
        F.cross_entropy(head(10 * pool(hidden[tr])), y[tr]).backward()
        opt.step()
    with torch.no_grad():
        mltp_acc = _accuracy(head, 10 * pool(hidden[te]), y[te])

    last = nn.Linear(C, 2)  # last-layer, last-token pooling with a linear probe
    opt = torch.optim.Adam(last.parameters(), lr=3e-2)
    for _ in range(80):
        opt.zero_grad()
        F.cross_entropy(last(hidden[tr, -1, -1]), y[tr]).backward()
        opt.step()
    with torch.no_grad():
        last_acc = _accuracy(last, hidden[te, -1, -1], y[te])

    assert mltp_acc > 0.9 and last_acc < 0.65, (mltp_acc, last_acc)
