"""temperature (paper 51 and general): logits / τ per layer and head, and Selective Attention's position term."""

import math

import pytest
import torch

import attnlab
from attnlab.core import Site, attach
from attnlab.core.backends.blocked import Blocked
from attnlab.edits import parse
from attnlab.edits.knockout import Knockout
from attnlab.edits.temperature import Temperature
from attnlab.mechanisms.mha import MultiHeadAttention
from attnlab.mechanisms.selective import SelectiveAttention
from attnlab.mechanisms.shared import CaptureProbs
from attnlab.models import hf
from tests.conftest import tiny_causal_lm

D = 8


def _qkv(T=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, T, D, generator=g), torch.randn(2, 2, T, D, generator=g), torch.randn(2, 2, T, D, generator=g)


def _logits(q, k):
    """Reference logits ``[B, H, T, T]`` with the causal mask, GQA expanded."""
    s = q @ k.repeat_interleave(2, dim=1).transpose(-1, -2) / math.sqrt(D)
    T = q.shape[2]
    return s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))


def _probs(q, k, v, edits, site=None):
    cap = CaptureProbs(lambda s: True)
    attnlab.attend(q, k, v, is_causal=True, site=site, edits=[*edits, cap])
    return cap.probs()


@pytest.mark.parametrize(
    "edit", [Temperature(), Temperature(tau=[1, 1, 1, 1]), parse("temperature:tau=1.0,layers=0")], ids=["default", "per head", "spec"]
)
def test_unit_temperature_without_position_term_is_bit_identical(edit):
    model = hf.instrument(tiny_causal_lm("llama"))
    ids = torch.randint(0, 100, (1, 11), generator=torch.Generator().manual_seed(0))
    assert edit.at(hf.sites(model)[0]) is None
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with attach(edits=[edit]):
            assert torch.equal(model(input_ids=ids).logits, base)


def test_probabilities_are_the_softmax_of_logits_over_tau():
    q, k, v = _qkv()
    p = _probs(q, k, v, [Temperature(tau=2.5)])
    torch.testing.assert_close(p, torch.softmax(_logits(q, k) / 2.5, -1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, 9))
    out = attnlab.attend(q, k, v, is_causal=True, edits=[Temperature(tau=2.5)])  # the plain (blocked) path
    torch.testing.assert_close(
        out, attnlab.attend(q, k, v, is_causal=True, scale=1 / (2.5 * math.sqrt(D)), backend="reference"), atol=1e-6, rtol=1e-5
    )


def test_per_head_tau_and_head_selection():
    q, k, v = _qkv()
    s = _logits(q, k)
    p = _probs(q, k, v, [Temperature(tau=[1.0, 2.0, 0.5, 4.0])])
    for h, tau in enumerate([1.0, 2.0, 0.5, 4.0]):
        torch.testing.assert_close(p[:, h], torch.softmax(s[:, h] / tau, -1), atol=1e-6, rtol=1e-5)
    site = Site("layers.1.attn", layer=1, num_heads=4, num_kv_heads=2)
    p = _probs(q, k, v, [parse("temperature:tau=3,heads=L1H2")], site=site)
    base = _probs(q, k, v, [], site=site)
    torch.testing.assert_close(p[:, 2], torch.softmax(s[:, 2] / 3, -1), atol=1e-6, rtol=1e-5)
    assert torch.equal(p[:, [0, 1, 3]], base[:, [0, 1, 3]])  # the other heads are untouched, bit for bit
    assert parse("temperature:tau=3,heads=L1H2").at(Site("layers.0.attn", layer=0)) is None


def test_position_temperature_equals_the_selective_attention_mechanism():
    # paper 51: q̃_i = (1 + σ(α) log n_i) q_i with n_i = i + 1 keys under a causal mask
    torch.manual_seed(0)
    sel = SelectiveAttention(16, 4, token=False, is_causal=True)
    mha = MultiHeadAttention(16, 4, is_causal=True)
    sel.load_state_dict(mha.state_dict(), strict=False)
    with torch.no_grad():
        sel.alpha.fill_(0.8)
    x = torch.randn(2, 13, 16)
    with torch.no_grad(), attach(edits=[Temperature(position_alpha=0.8)]):
        got = mha(x)
    torch.testing.assert_close(got, sel(x).detach(), atol=1e-5, rtol=1e-5)
    q, k, v = _qkv()
    factor = 1 + torch.sigmoid(torch.tensor(0.8)) * torch.log(torch.arange(1, 10).float())  # [T]
    p = _probs(q, k, v, [Temperature(position_alpha=0.8, tau=2.0)])
    torch.testing.assert_close(p, torch.softmax(_logits(q, k) * factor[:, None] / 2.0, -1), atol=1e-6, rtol=1e-5)


def test_blocked_tiles_match_reference():
    q, k, v = _qkv(T=37)
    e = Temperature(tau=[1.0, 2.0, 0.5, 3.0], position_alpha=-1.0, heads=[0, 1, 3])
    ref = attnlab.attend(q, k, v, is_causal=True, backend="reference", edits=[e])
    torch.testing.assert_close(
        attnlab.attend(q, k, v, is_causal=True, backend=Blocked(q_tile=8, k_tile=4), edits=[e]), ref, atol=1e-5, rtol=1e-5
    )


def test_composes_with_knockout_hidden_keys_stay_hidden():
    # logit edits act in list order; −∞ / τ is −∞, so knocked-out keys stay at exactly 0
    q, k, v = _qkv()
    for edits in ([Knockout(target=[8], source=[0, 1]), Temperature(tau=0.5)], [Temperature(tau=0.5), Knockout(target=[8], source=[0, 1])]):
        p = _probs(q, k, v, edits)
        assert torch.equal(p[:, :, 8, :2], torch.zeros(2, 4, 2))
        torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, 9))
        torch.testing.assert_close(p[:, :, 8, 2:], torch.softmax(_logits(q, k)[:, :, 8, 2:] / 0.5, -1), atol=1e-6, rtol=1e-5)


def test_validate_and_options_reject_bad_values():
    sites = [Site(f"layers.{i}.attn", layer=i, num_heads=4, num_kv_heads=2) for i in range(2)]
    with pytest.raises(ValueError, match="tau has 3 values but the model has 4 heads"):
        Temperature(tau=[1, 2, 3]).validate(sites)
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        parse("temperature:tau=2,layers=2").validate(sites)
    with pytest.raises(ValueError, match="L0H7 is out of range"):
        parse("temperature:tau=2,heads=L0H7").validate(sites)
    for bad in (0, -1.0, float("inf"), "hot"):
        with pytest.raises(ValueError, match="tau must be a positive finite number"):
            Temperature(tau=bad)
    with pytest.raises(ValueError, match="position_alpha must be a finite number or None"):
        Temperature(position_alpha=float("nan"))
