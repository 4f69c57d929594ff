"""visual_sensitivity (paper 4) and word_to_patch (paper 64) against full softmax attention computed by hand."""

import math

import pytest
import torch

import attnlab
from attnlab.core.spans import Span
from attnlab.probes import VisualSensitivity, WordToPatch

T, D = 10, 8
KEYS = [2, 3, 4, 5]


def _qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 3, T, D, generator=g, dtype=torch.float64) for _ in range(3))


def _attention(q, k):
    s = q @ k.transpose(-1, -2) / math.sqrt(D)  # [B, H, T, T]
    return torch.softmax(s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")), -1)


@pytest.mark.parametrize("rows", ["last", [4, 7, 9]])
def test_mass_and_ratio_equal_the_hand_computed_rows(rows):
    q, k, v = _qkv()
    probe = VisualSensitivity(keys=KEYS, rows=rows)
    attnlab.attend(q, k, v, is_causal=True, probes=[probe])
    r = probe.result()["attend"]
    rs = [T - 1] if rows == "last" else rows
    a = _attention(q, k)[:, :, rs]  # [B, H, R, T]
    mass = a[..., KEYS].sum(-1)  # [B, H, R]
    uniform = torch.tensor([sum(kk <= q_ for kk in KEYS) / (q_ + 1) for q_ in rs], dtype=torch.float64)  # causal: q sees 0..q
    torch.testing.assert_close(r["mass"], mass.mean(-1))
    torch.testing.assert_close(r["ratio"], mass.mean(-1) / uniform.mean())


def test_rows_that_see_none_of_the_span_give_zero_mass():
    q, k, v = _qkv(1)
    probe = VisualSensitivity(keys=KEYS, rows=[0, 1])
    attnlab.attend(q, k, v, is_causal=True, probes=[probe])
    assert float(probe.result()["attend"]["mass"].abs().max()) == 0.0


def test_word_to_patch_is_the_mean_of_the_words_rows_over_the_image():
    q, k, v = _qkv(2)
    probe = WordToPatch(word=[7, 8], image=KEYS)
    attnlab.attend(q, k, v, is_causal=True, probes=[probe])
    want = _attention(q, k)[:, :, [7, 8]][..., KEYS].mean(2)  # [B, H, P]
    torch.testing.assert_close(probe.result()["attend"].double(), want, atol=1e-6, rtol=1e-5)


def test_spans_of_another_sequence_and_empty_selections_are_refused():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"visual_sensitivity keys: .* 12 tokens, the input has 10"):
        attnlab.attend(q, k, v, is_causal=True, probes=[VisualSensitivity(keys=Span(KEYS, name="image", length=12))])
    with pytest.raises(ValueError, match=r"word_to_patch image: .* 12 tokens, the input has 10"):
        attnlab.attend(q, k, v, is_causal=True, probes=[WordToPatch(word=[8], image=Span(KEYS, name="image", length=12))])
    with pytest.raises(ValueError, match="needs the key span"):
        VisualSensitivity(keys=[])
    with pytest.raises(ValueError, match="rows must be 'last' or query positions"):
        VisualSensitivity(keys=KEYS, rows="first")
    with pytest.raises(ValueError, match="needs both spans"):
        WordToPatch(word=[], image=KEYS)
