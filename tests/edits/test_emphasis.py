"""emphasis (paper 4, PAINT): ℓ ← ℓ + α|ℓ| on chosen key tokens, last query row, over a layer range."""

import itertools
import math

import pytest
import torch

import attnlab
from attnlab.core import Site, attach
from attnlab.core.backends.blocked import Blocked
from attnlab.edits import parse
from attnlab.edits.emphasis import Emphasis
from attnlab.edits.knockout import Knockout
from attnlab.mechanisms.shared import CaptureProbs
from attnlab.models import hf
from attnlab.runs.edit import prepare
from tests.conftest import tiny_causal_lm

D, T = 8, 9


def _qkv(T=T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, T, D, generator=g), torch.randn(2, 2, T, D, generator=g), torch.randn(2, 2, T, D, generator=g)


def _logits(q, k):
    s = q @ k.repeat_interleave(2, dim=1).transpose(-1, -2) / math.sqrt(D)  # [B, H, T, T]
    n = q.shape[2]
    return s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))


def _probs(q, k, v, edits):
    cap = CaptureProbs(lambda s: True)
    attnlab.attend(q, k, v, is_causal=True, edits=[*edits, cap])
    return cap.probs()


def test_alpha_and_beta_zero_is_bit_identical():
    model = hf.instrument(tiny_causal_lm("llama"))
    ids = torch.randint(0, 100, (1, 10), generator=torch.Generator().manual_seed(0))
    edits = [parse("emphasis:positions=1+2+3,alpha=0,beta=0,second=5,layers=0-1"), Emphasis(positions=[], second=[], rows="all")]
    prepare(model, edits, ids)
    for e in edits:
        assert e.at(hf.sites(model)[0]) is None
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with attach(edits=edits):
            assert torch.equal(model(input_ids=ids).logits, base)


def test_last_row_logits_of_both_sets_get_paints_boost():
    q, k, v = _qkv()
    p = _probs(q, k, v, [Emphasis(positions=[1, 2], alpha=0.7, second=[4, 6], beta=0.3, length=T)])
    base = _probs(q, k, v, [])
    s = _logits(q, k)[:, :, -1].clone()  # [B, H, T] the last row
    s[..., [1, 2]] += 0.7 * s[..., [1, 2]].abs()
    s[..., [4, 6]] += 0.3 * s[..., [4, 6]].abs()
    torch.testing.assert_close(p[:, :, -1], torch.softmax(s, -1), atol=1e-6, rtol=1e-5)
    assert torch.equal(p[:, :, :-1], base[:, :, :-1])  # other rows untouched, bit for bit
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, T))


def test_mass_on_the_selected_tokens_rises_monotonically_with_alpha():
    q, k, v = _qkv(seed=3)
    mass = [
        _probs(q, k, v, [Emphasis(positions=[0, 3, 5], alpha=a, length=T)])[:, :, -1, [0, 3, 5]].sum(-1) for a in (0.0, 0.35, 0.7, 1.4, 2.8)
    ]
    for lo, hi in itertools.pairwise(mass):
        assert bool((hi > lo).all())  # every sequence, every head


def test_rows_all_positions_predicate_and_spec_forms_agree():
    q, k, v = _qkv()
    a = attnlab.attend(q, k, v, is_causal=True, edits=[Emphasis(positions=[2, 3, 4], rows="all")])
    b = attnlab.attend(q, k, v, is_causal=True, edits=[Emphasis(positions=lambda i: (i >= 2) & (i <= 4), rows="all")])
    c = attnlab.attend(q, k, v, is_causal=True, edits=[parse("emphasis:positions=2-4,rows=all")])
    d = attnlab.attend(q, k, v, is_causal=True, edits=[parse(f"emphasis:positions=2+3+4,rows={T - 1}")])
    e = attnlab.attend(q, k, v, is_causal=True, edits=[Emphasis(positions="2-4", length=T)])
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(d, e)
    assert torch.equal(a[:, :, -1], d[:, :, -1]) and not torch.allclose(a, d)


def test_prepare_reads_the_last_row_from_the_input_and_layers_limit_the_range():
    model = hf.instrument(tiny_causal_lm("llama", num_hidden_layers=3))
    ids = torch.randint(0, 100, (1, 10), generator=torch.Generator().manual_seed(1))
    edit = parse("emphasis:positions=0+1+2,alpha=2.0,layers=1-2")
    with pytest.raises(ValueError, match="rows='last' needs the query length"):
        edit.at(hf.sites(model)[1])
    prepare(model, [edit], ids)
    assert edit.at(hf.sites(model)[0]) is None and edit.at(hf.sites(model)[2]) is not None
    cap, cap0 = CaptureProbs("layers.1.attn"), CaptureProbs("layers.1.attn")
    with torch.no_grad():
        with attach(edits=[cap0]):
            base = model(input_ids=ids).logits
        with attach(edits=[edit, cap]):
            got = model(input_ids=ids).logits
    p, p0 = cap.probs(), cap0.probs()  # layer 1, [1, H, 10, 10]
    assert torch.equal(p[:, :, :-1], p0[:, :, :-1])  # only the last query row is boosted
    assert bool((p[:, :, -1, :3].sum(-1) > p0[:, :, -1, :3].sum(-1)).all())
    torch.testing.assert_close(got[:, :-1], base[:, :-1], atol=1e-5, rtol=1e-5)  # so only the last position's prediction moves
    assert not torch.allclose(got[:, -1], base[:, -1], atol=1e-5, rtol=1e-5)


def test_blocked_tiles_match_reference():
    q, k, v = _qkv(T=37)
    e = Emphasis(positions=[0, 5, 6, 7, 30], second=range(10, 20), heads=[1, 2], rows=[36, 20, 3])
    ref = attnlab.attend(q, k, v, is_causal=True, backend="reference", edits=[e])
    torch.testing.assert_close(
        attnlab.attend(q, k, v, is_causal=True, backend=Blocked(q_tile=8, k_tile=4), edits=[e]), ref, atol=1e-5, rtol=1e-5
    )


def test_composes_with_knockout_without_nan():
    # ℓ + α|ℓ| at ℓ = −∞ would be nan: hidden keys are left alone, in either order
    q, k, v = _qkv()
    for edits in (
        [Knockout(target=[T - 1], source=[1]), Emphasis(positions=[1, 2], length=T)],
        [Emphasis(positions=[1, 2], length=T), Knockout(target=[T - 1], source=[1])],
    ):
        p = _probs(q, k, v, edits)
        assert not p.isnan().any() and torch.equal(p[:, :, -1, 1], torch.zeros(2, 4))
        torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, T))


def test_validate_and_options_reject_bad_values():
    sites = [Site(f"layers.{i}.attn", layer=i, num_heads=4, num_kv_heads=2) for i in range(2)]
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        parse("emphasis:positions=1,layers=1-2").validate(sites)
    with pytest.raises(ValueError, match="head 4 is out of range"):
        Emphasis(positions=[1], heads=[4]).validate(sites)
    with pytest.raises(ValueError, match="needs the key tokens"):
        Emphasis()
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        Emphasis(positions=[1], alpha=-0.7)
    with pytest.raises(ValueError, match="positions must be non-negative token positions"):
        Emphasis(positions=[-1])
    with pytest.raises(ValueError, match="rows must be 'last', 'all' or query positions"):
        Emphasis(positions=[1], rows="first")
