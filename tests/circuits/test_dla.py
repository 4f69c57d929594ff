"""Direct logit attribution: the terms sum to the model's logit difference in float64, on every decoder family."""

import numpy as np
import pytest
import torch

import attnlab
from attnlab.circuits import direct_logit_attribution
from attnlab.circuits.metrics import logits_of
from tests.circuits._models import model as make_model
from tests.circuits._models import pairs as make_pairs
from tests.conftest import tiny_causal_lm


@pytest.mark.parametrize("family", ["tiny", "tiny_attn_only", "llama", "qwen2", "gemma", "gemma2", "gemma3", "gpt2"])
def test_dla_terms_sum_to_the_logit_difference(family):
    model, p = make_model(family), make_pairs(4)
    r = direct_logit_attribution(model, p, batch_size=3)
    np.testing.assert_allclose(r.values.sum(1), r.logit_diff, rtol=0, atol=1e-5)
    with torch.no_grad():
        ref = logits_of(model, torch.stack(p.clean))[:, -1]  # [N, V]
    if family != "gemma2":  # Gemma 2 softcaps after the logits point
        expected = (ref[torch.arange(4), p.answer] - ref[torch.arange(4), p.wrong]).numpy()
        np.testing.assert_allclose(r.logit_diff, expected, rtol=0, atol=1e-10)
    L = 3 if family == "gemma3" else 2
    assert r.grid.shape == (L, 4)
    assert r.per_layer()["value"].sum() == pytest.approx(r.table["value"].sum())


def test_a_head_term_is_its_output_through_the_frozen_norm_and_unembedding():
    """By hand on the tiny model: LayerNorm(x) = (x − mean)/σ·g + b, the head's share is (z_h W_O[h] − mean)/σ·g · (W_U[a] − W_U[w])."""
    model, p = make_model("tiny"), make_pairs(2)
    r = direct_logit_attribution(model, p)
    c, a, w = p.clean[0][None], int(p.answer[0]), int(p.wrong[0])
    with torch.no_grad():
        with attnlab.capture(model, ["layers.1.attn.z", "layers.1.resid_post"]) as cache:
            model(c)
        x = cache["layers.1.resid_post"][0, -1]
        sigma = (x.var(unbiased=False) + model.norm.eps).sqrt()
        W_O = model.layers[1].attn.o_proj.weight  # [C, H·D], head 2 is columns 8..11 (D = 4)
        out = cache["layers.1.attn.z"][0, -1, 2] @ W_O[:, 8:12].T  # [C]
        by_hand = ((out - out.mean()) / sigma * model.norm.weight) @ (model.head.weight[a] - model.head.weight[w])
    column = list(r.table["term"]).index("L1H2")
    assert r.values[0, column] == pytest.approx(float(by_hand), abs=1e-12)


def test_dla_refuses_an_encoder():
    bert = tiny_causal_lm("bert")
    with pytest.raises(ValueError, match="needs a causal LM"):
        direct_logit_attribution(bert, make_pairs(2))
