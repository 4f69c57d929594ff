"""Paper 23: Routing Transformer (online k-means routing heads + local heads)."""

import math

import pytest
import torch
import torch.nn.functional as F

import attnlab
from attnlab import mechanisms
from attnlab.mechanisms.routing import LAYOUTS, OnlineKMeans, RoutingAttention
from attnlab.probes import Entropy


def _reference(m: RoutingAttention, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Explicit masked softmax with shared queries/keys; ``allowed`` is ``[B|1, H|1, T, T]``."""
    B, T, C = x.shape
    H, D = m.heads, C // m.heads
    qk = m.qk(x).view(B, T, H, D).transpose(1, 2)  # [B, H, T, D]
    v = m.v(x).view(B, T, H, D).transpose(1, 2)
    s = (qk @ qk.transpose(-1, -2) / math.sqrt(D)).masked_fill(~allowed, float("-inf"))
    return m.proj((torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, C))


def _causal(T):
    return torch.ones(T, T, dtype=torch.bool).tril()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("causal", [False, True])
def test_routing_one_cluster_equals_full_attention(causal, layout):
    torch.manual_seed(0)
    m = RoutingAttention(dim=16, heads=2, clusters=1, local_heads=0, is_causal=causal, layout=layout)
    x = torch.randn(2, 9, 16)
    allowed = _causal(9) if causal else torch.ones(9, 9, dtype=torch.bool)
    torch.testing.assert_close(m(x), _reference(m, x, allowed), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_routing_local_heads_attend_in_window(layout):
    torch.manual_seed(1)
    m = RoutingAttention(dim=8, heads=2, local_heads=2, window=2, layout=layout)
    x = torch.randn(2, 9, 8)
    i = torch.arange(9)
    band = (i[:, None] - i[None, :]).abs() <= 2
    torch.testing.assert_close(m(x), _reference(m, x, band), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("causal", [False, True])
def test_routing_heads_attend_within_their_cluster(causal, layout):
    torch.manual_seed(2)
    m = RoutingAttention(dim=16, heads=4, clusters=3, window=1, is_causal=causal, layout=layout).eval()
    x = torch.randn(2, 12, 16)
    qk = m.qk(x).view(2, 12, 4, 4).transpose(1, 2)  # [B, H, T, D]
    ids = m.kmeans.assign(qk[:, 2:])  # [B, 2, T] routing heads are 2 and 3
    assert len(ids.unique()) > 1, "the test needs more than one cluster"
    i = torch.arange(12)
    band = ((i[:, None] - i[None, :]).abs() <= 1).expand(2, 2, 12, 12)
    allowed = torch.cat([band, ids[..., :, None] == ids[..., None, :]], dim=1)
    if causal:
        allowed = allowed & _causal(12)
    torch.testing.assert_close(m(x), _reference(m, x, allowed), atol=1e-5, rtol=1e-5)


def _clustered(n_per=16, centers=4, D=8, heads=2, noise=0.1, seed=0):
    """``[1, heads, centers·n_per, D]`` points around ``centers`` random directions, and their labels."""
    g = torch.Generator().manual_seed(seed)
    mu = F.normalize(torch.randn(heads, centers, D, generator=g), dim=-1) * 3  # [H, centers, D]
    labels = torch.arange(centers).repeat_interleave(n_per)  # [T]
    x = mu[:, labels] + noise * torch.randn(heads, len(labels), D, generator=g)  # [H, T, D]
    return x[None], labels


def _purity(ids: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of points whose cluster's majority label is their label (ids ``[T]``)."""
    agree = sum(torch.bincount(labels[ids == c]).max().item() for c in ids.unique())
    return agree / len(labels)


def test_kmeans_cluster_purity_after_ema_updates():
    torch.manual_seed(3)
    x, labels = _clustered()
    km = OnlineKMeans(heads=2, clusters=round(math.sqrt(x.shape[2])), dim=8)  # sqrt(T) = 8 centroids, decay 0.999
    for _ in range(5):
        km.update(x)
    ids = km.assign(x)[0]  # [H, T]
    for h in range(2):
        assert _purity(ids[h], labels) > 0.9


def test_kmeans_update_is_normalised_ema_of_mean_direction():
    torch.manual_seed(4)
    x, _ = _clustered()
    km = OnlineKMeans(heads=2, clusters=8, dim=8, decay=0.999)
    km.seeded.fill_(True)  # skip the k-means++ seeding: test the EMA step alone
    before = km.centroids.clone()
    ids = km.assign(x)
    km.update(x)
    for h in range(2):
        for c in range(8):
            members = F.normalize(x[0, h], dim=-1)[ids[0, h] == c]
            if len(members) == 0:
                torch.testing.assert_close(km.centroids[h, c], before[h, c], atol=0, rtol=0)
            else:
                expected = F.normalize(0.999 * before[h, c] + 0.001 * members.mean(0), dim=-1)
                torch.testing.assert_close(km.centroids[h, c], expected)


def test_kmeans_centroids_converge_to_cluster_directions():
    torch.manual_seed(5)
    x, _ = _clustered(centers=3)
    km = OnlineKMeans(heads=2, clusters=3, dim=8, decay=0.5)
    for _ in range(20):
        km.update(x)
    ids = km.assign(x)[0]
    for h in range(2):
        for c in ids[h].unique():
            direction = F.normalize(F.normalize(x[0, h], dim=-1)[ids[h] == c].mean(0), dim=0)
            assert torch.dot(direction, km.centroids[h, c]) > 0.999


def test_routing_centroids_move_in_training_and_not_in_eval():
    torch.manual_seed(6)
    m = RoutingAttention(dim=16, heads=4, clusters=3)
    x = torch.randn(2, 10, 16)
    before = m.kmeans.centroids.clone()
    m.eval()
    m(x)
    assert torch.equal(m.kmeans.centroids, before)
    m.train()
    m(x)
    assert not torch.equal(m.kmeans.centroids, before)
    torch.testing.assert_close(m.kmeans.centroids.norm(dim=-1), torch.ones(2, 3))


def test_routing_default_clusters_is_sqrt_seq_len():
    m = RoutingAttention(dim=16, heads=4, seq_len=256)
    assert m.kmeans.centroids.shape == (2, 16, 4)  # 2 routing heads, sqrt(256) centroids, head dim 4


@pytest.mark.parametrize("layout", LAYOUTS)
def test_routing_is_causal(layout):
    torch.manual_seed(7)
    m = RoutingAttention(dim=8, heads=2, clusters=2, window=3, is_causal=True, layout=layout).eval()
    x = torch.randn(2, 10, 8)
    y = x.clone()
    y[:, 6:] = torch.randn(2, 4, 8)
    torch.testing.assert_close(m(x)[:, :6], m(y)[:, :6], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(m(x)[:, 6:], m(y)[:, 6:])


@pytest.mark.parametrize("layout", ["clusters", "dense"])
def test_routing_gradcheck_in_eval_mode(layout):
    torch.manual_seed(8)
    m = RoutingAttention(dim=4, heads=2, clusters=2, window=1, layout=layout, backend="reference").double().eval()
    x = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_routing_dtype_and_shape(dtype):
    torch.manual_seed(9)
    m = RoutingAttention(dim=16, heads=4, clusters=3, window=2).to(dtype)
    out = m(torch.randn(2, 7, 16, dtype=dtype))
    assert out.shape == (2, 7, 16) and out.dtype == dtype
    assert torch.isfinite(out).all()


def test_routing_is_a_site():
    m = RoutingAttention(dim=8, heads=2, clusters=2, layout="dense").eval()
    ent = Entropy()
    with attnlab.attach(probes=[ent]):
        m(torch.randn(1, 6, 8))
    assert ent.result()["routing"]["entropy"].shape == (2,)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("T", "window"), [(50, 8), (64, 8), (17, 4)])
def test_routing_local_blocks_equal_the_observed_sliding_window(causal, T, window):
    """Unobserved, local heads run by blocks of ``window`` with a band bias; observed, on the whole
    sequence with the sliding-window mask. Same outputs and gradients, and the rows of a probe
    at ``routing.local`` are one per token."""
    torch.manual_seed(3)
    m = RoutingAttention(dim=16, heads=4, local_heads=4, window=window, is_causal=causal, layout="clusters").eval()
    x = torch.randn(2, T, 16)
    runs = []
    for observe in (False, True):
        xi = x.clone().requires_grad_()
        ent = Entropy()
        with attnlab.attach(probes=[ent] if observe else []):
            out = m(xi)
        out.square().sum().backward()
        runs.append((out, xi.grad))
    torch.testing.assert_close(runs[0][0], runs[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(runs[0][1], runs[1][1], atol=1e-5, rtol=1e-5)
    assert ent.result()["routing.local"]["rows"].tolist() == [2 * T] * 4


def test_routing_clusters_layout_has_a_local_and_a_per_cluster_site():
    m = RoutingAttention(dim=16, heads=4, clusters=3, layout="clusters").eval()
    ent = Entropy()
    with attnlab.attach(probes=[ent]):
        m(torch.randn(1, 12, 16))
    assert ent.result()["routing.local"]["entropy"].shape == (2,)
    assert ent.result()["routing.clusters"]["entropy"].shape == (2 * 3,)  # one per (routing head, cluster)


@pytest.mark.parametrize("causal", [False, True])
def test_routing_layouts_agree_in_training_with_gradients(causal):
    torch.manual_seed(10)
    x = torch.randn(2, 40, 16)
    outs, grads = [], []
    for layout in ("clusters", "dense"):
        torch.manual_seed(11)
        m = RoutingAttention(dim=16, heads=4, clusters=5, window=3, is_causal=causal, layout=layout)
        xi = x.clone().requires_grad_()
        torch.manual_seed(12)  # same k-means++ seeding
        out = m(xi)
        out.square().sum().backward()
        outs.append(out)
        grads.append(xi.grad)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("balanced", [True, False])
def test_routing_auto_layout_packs_balanced_clusters_and_not_degenerate_ones(balanced, monkeypatch):
    m = RoutingAttention(dim=16, heads=2, clusters=8, local_heads=0).eval()
    T = 64
    ids = torch.arange(T) % 8 if balanced else torch.zeros(T, dtype=torch.long)  # C = 8 or C = T
    monkeypatch.setattr(m.kmeans, "assign", lambda x: ids.expand(x.shape[0], x.shape[1], T))
    probe = Entropy()
    with attnlab.attach(probes=[probe]):
        m(torch.randn(1, T, 16))
    assert set(probe.result()) == ({"routing.clusters"} if balanced else {"routing"})  # no local heads


def test_routing_registered():
    assert isinstance(mechanisms.get("routing", dim=8, heads=2, clusters=2), RoutingAttention)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 10, "heads": 3}, r"dim must be divisible by heads, got dim=10, heads=3"),
        ({"dim": 8, "heads": 2, "clusters": 0}, r"clusters must be a positive int or None \(sqrt\(seq_len\)\), got clusters=0"),
        ({"dim": 8, "heads": 2, "local_heads": 3}, r"local_heads must be an int in \[0, heads=2\], got local_heads=3"),
        ({"dim": 8, "heads": 2, "decay": 1.0}, r"decay must be in \[0, 1\), got decay=1.0"),
        ({"dim": 8, "heads": 2, "window": 0}, r"window must be a positive int, got window=0"),
    ],
)
def test_routing_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RoutingAttention(**kwargs)


def test_routing_wrong_width_raises():
    with pytest.raises(ValueError, match=r"x must be \[batch, tokens, 8\], got shape \(1, 3, 6\)"):
        RoutingAttention(dim=8, heads=2, clusters=2)(torch.randn(1, 3, 6))
