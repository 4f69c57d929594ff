"""knockout (paper 49): block attention from target queries to source keys over a window of layers."""

import math

import pytest
import torch
import torch.nn.functional as F

import attnlab
from attnlab.core import Site, attach
from attnlab.core.backends.blocked import Blocked
from attnlab.edits import parse
from attnlab.edits.knockout import Knockout, token_group, window_layers
from attnlab.mechanisms.shared import CaptureProbs
from attnlab.models import hf
from attnlab.runs.knockout import scan
from tests.conftest import tiny_causal_lm

D, T = 8, 9


def _qkv(T=T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, T, D, generator=g), torch.randn(2, 2, T, D, generator=g), torch.randn(2, 2, T, D, generator=g)


def _probs(q, k, v, edits):
    cap = CaptureProbs(lambda s: True)
    attnlab.attend(q, k, v, is_causal=True, edits=[*edits, cap])
    return cap.probs(kv_len=q.shape[2])


def test_knocked_out_probabilities_are_exactly_zero_and_rows_renormalise():
    q, k, v = _qkv()
    target, source = [5, 8], [0, 2, 3]
    p = _probs(q, k, v, [Knockout(target=target, source=source)])
    p0 = _probs(q, k, v, [])
    assert torch.equal(p[:, :, target][..., source], torch.zeros(2, 4, 2, 3))
    keep = torch.ones(T, T, dtype=torch.bool).tril()
    keep[torch.tensor(target)[:, None], torch.tensor(source)] = False  # the reference: a mask without those edges
    s = (q @ k.repeat_interleave(2, dim=1).transpose(-1, -2) / math.sqrt(D)).masked_fill(~keep, float("-inf"))
    torch.testing.assert_close(p, torch.softmax(s, -1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, T))
    rest = [i for i in range(T) if i not in target]
    assert torch.equal(p[:, :, rest], p0[:, :, rest])  # other queries untouched, bit for bit


def test_a_row_with_every_key_knocked_out_gets_zeros():
    q, k, v = _qkv()
    out = attnlab.attend(q, k, v, is_causal=True, edits=[Knockout(target=[3], source=range(0, 4))])
    assert torch.equal(out[:, :, 3], torch.zeros(2, 4, D)) and not out.isnan().any()


@pytest.mark.parametrize(
    "edit",
    [Knockout(target=[], source=[1, 2]), Knockout(target=[5], source=[]), Knockout(target=[5], source=[1], heads=[])],
    ids=["no target", "no source", "no head"],
)
def test_an_empty_group_is_bit_identical(edit):
    model = hf.instrument(tiny_causal_lm("llama"))
    ids = torch.randint(0, 100, (1, 10), generator=torch.Generator().manual_seed(0))
    assert edit.at(hf.sites(model)[0]) is None
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with attach(edits=[edit]):
            assert torch.equal(model(input_ids=ids).logits, base)


def test_blocked_tiles_match_reference():
    q, k, v = _qkv(T=37)
    e = Knockout(target=[3, 17, 18, 36], source=lambda i: (i % 3 == 0) | (i == 17), heads=[0, 2])
    ref = attnlab.attend(q, k, v, is_causal=True, backend="reference", edits=[e])
    torch.testing.assert_close(
        attnlab.attend(q, k, v, is_causal=True, backend=Blocked(q_tile=8, k_tile=4), edits=[e]), ref, atol=1e-5, rtol=1e-5
    )


class CopyToy(torch.nn.Module):
    """Attention-only toy over one-hot tokens: in layer ``copy`` the last position reads the token at
    ``source``; every other layer attends each position to itself. The prediction is the last
    position's stream: the copied token wins unless the path is cut."""

    def __init__(self, vocab=8, n_layers=6, copy=3, source=1):
        super().__init__()
        self.vocab, self.n_layers, self.copy, self.source = vocab, n_layers, copy, source

    def forward(self, input_ids):
        Tn = input_ids.shape[1]
        x = F.one_hot(input_ids, self.vocab).float()[:, None]  # [B, 1, T, V]: one head, value = token
        for i in range(self.n_layers):
            site = Site(f"layers.{i}.attn", layer=i, num_heads=1, num_kv_heads=1)
            if i == self.copy:
                bias = torch.zeros(Tn, Tn)
                bias[-1, self.source] = 8.0  # the last query looks at the source token
                x = x + 2 * attnlab.attend(x, x, x, bias=bias, is_causal=True, scale=0.0, site=site)
            else:
                x = x + 0 * attnlab.attend(x, x, x, mask=torch.eye(Tn, dtype=torch.bool), site=site)
        return x[:, 0]  # [B, T, V] logits


def test_knocking_out_the_source_to_target_path_changes_the_prediction_only_in_the_copy_layer():
    toy, ids = CopyToy(), torch.tensor([[0, 5, 2, 3, 4]])
    assert int(toy(ids)[0, -1].argmax()) == 5  # copied from position 1
    with attach(edits=[Knockout(target=[4], source=[1], layers=[3])]):
        assert int(toy(ids)[0, -1].argmax()) == 4  # the last token's own identity wins
    with attach(edits=[Knockout(target=[4], source=[1], layers=[0, 1, 2, 4, 5])]):
        assert int(toy(ids)[0, -1].argmax()) == 5
    rows = scan(toy, ids, answer=5, target=[4], source=[1], window=3, n_layers=6)
    assert [r["center"] for r in rows] == list(range(6))
    hit = [r["center"] for r in rows if r["change"] < -0.5]
    assert hit == [2, 3, 4]  # exactly the windows that contain layer 3
    assert all(abs(r["change"]) < 1e-6 for r in rows if r["center"] not in hit)
    assert rows[3]["layers"] == [2, 3, 4] and rows[0]["layers"] == [0, 1]


def test_window_layers_and_token_groups():
    assert window_layers(0, 30) == [0, 1, 2, 3, 4]
    assert window_layers(15, 30) == list(range(11, 20))  # 9 layers around 15
    assert window_layers(29, 30) == list(range(25, 30))
    assert window_layers(5, 30, 4) == [4, 5, 6, 7]
    i = torch.arange(12)
    assert torch.equal(token_group("3-5")(i), (i >= 3) & (i <= 5))
    assert torch.equal(token_group([1, 7, 9])(i), torch.isin(i, torch.tensor([1, 7, 9])))
    assert token_group([]) is None
    many = list(range(0, 100, 3))  # 34 runs: looked up in a table
    j = torch.arange(120).view(2, 1, 60, 1)  # any rank
    assert torch.equal(token_group(many)(j), torch.isin(j, torch.tensor(many)))
    with pytest.raises(ValueError, match="window must be a positive number of layers"):
        window_layers(0, 30, 0)
    with pytest.raises(ValueError, match="center=30 is out of range"):
        window_layers(30, 30)


def test_validate_and_options_reject_bad_values():
    sites = [Site(f"layers.{i}.attn", layer=i, num_heads=4, num_kv_heads=2) for i in range(2)]
    parse("knockout:target=8,source=0-3,layers=0-1").validate(sites)
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        parse("knockout:target=8,source=0-3,layers=1-2").validate(sites)
    with pytest.raises(ValueError, match="head 4 is out of range"):
        Knockout(target=[8], source=[0], heads=[4]).validate(sites)
    with pytest.raises(ValueError, match="needs both groups"):
        Knockout(target=[8])
    with pytest.raises(ValueError, match="source must be non-negative token positions"):
        Knockout(target=[8], source=[-1])


def test_on_a_softcapped_model_the_knockout_acts_after_the_cap_and_cut_keys_get_exactly_zero():
    """Gemma 2 soft-caps its logits (c·tanh(s/c)) at the site; an attached edit acts on the capped logits."""
    model = hf.instrument(tiny_causal_lm("gemma2"))  # cap 5
    ids = torch.randint(0, 100, (1, 6), generator=torch.Generator().manual_seed(0))
    edit = Knockout(target=[5], source=[1, 2])
    with torch.no_grad(), attnlab.capture(model, ["layers.*.attn.probs"]) as cache, attach(edits=[edit]):
        model(input_ids=ids)
    for name, p in cache.items():
        assert (p[..., 5, [1, 2]] == 0).all(), name  # before the fix the cut keys kept c·tanh(−∞) = −c: weight ≈ 0.0017
        assert torch.allclose(p.sum(-1), torch.ones(()), atol=1e-6)
