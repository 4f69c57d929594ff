"""SSA (paper 53): the locally biased key sampler, the subsampled attention, and its inference modes."""

import math

import pytest
import torch

from attnlab.models.tiny import TinyTransformer
from attnlab.train import train
from attnlab.train.ssa import ensemble_predict, local_key_subset, subsampled_attention, use_ssa
from tests.train.toy import Lag


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return TinyTransformer(8, **{"dim": 16, "heads": 2, "layers": 2, "max_len": 32, **kw})


@pytest.mark.parametrize("causal", [False, True])
def test_subset_has_keep_distinct_keys_per_block_and_only_past_keys_when_causal(causal):
    g = torch.Generator().manual_seed(0)
    idx, ok = local_key_subset(64, 8, block=8, locality=4.0, is_causal=causal, generator=g)
    assert idx.shape == (8, 8)
    for b in range(8):
        chosen = idx[b][ok[b]]
        n = min(8, (b + 1) * 8) if causal else 8
        assert len(chosen) == n and len(set(chosen.tolist())) == n
        assert bool((chosen[1:] > chosen[:-1]).all())
        if causal:
            assert int(chosen.max()) < (b + 1) * 8


def test_subset_is_local_closer_to_its_block_than_a_uniform_draw():
    g = torch.Generator().manual_seed(0)
    centre = torch.arange(16)[:, None] * 8 + 3.5  # [nB, 1]
    dist = {}
    for name, loc in (("local", 4.0), ("uniform", math.inf)):
        idx, _ = local_key_subset(128, 16, block=8, locality=loc, generator=g)
        dist[name] = float((idx - centre).abs().mean())
    assert dist["local"] < 0.3 * dist["uniform"], dist


def test_subsampled_attention_with_every_key_equals_full_attention():
    q, k, v = (torch.randn(2, 4, 10, 8, dtype=torch.float64) for _ in range(3))
    idx, ok = local_key_subset(10, 10, block=4, locality=2.0)
    for causal in (False, True):
        got = subsampled_attention(q, k, v, idx, ok, block=4, is_causal=causal)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(8)
        if causal:
            s = s.masked_fill(torch.ones(10, 10, dtype=torch.bool).triu(1), float("-inf"))
        want = s.softmax(-1) @ v
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "kw",
    [{}, {"heads": 4, "mechanism_options": {"kv_heads": 1}, "positions": "rope"}, {"causal": False}],
    ids=["mha", "mqa-rope", "encoder"],
)
def test_training_pass_with_ratio_one_and_ensemble_equal_the_full_model(kw):
    full = tiny(**kw)
    x = torch.randint(0, 8, (3, 32))
    want = full.eval()(x)
    model = use_ssa(tiny(**kw), ratio=1, block=8)
    torch.testing.assert_close(model.train()(x), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.eval()(x), want)
    torch.testing.assert_close(ensemble_predict(model, x, samples=3), want.softmax(-1), atol=1e-5, rtol=0)


def test_sampled_training_pass_differs_from_full_and_eval_is_full_attention():
    x = torch.randint(0, 8, (3, 32))
    want = tiny().eval()(x)
    model = use_ssa(tiny(), ratio=4, block=8)
    assert (model.train()(x) - want).abs().max() > 1e-3
    torch.testing.assert_close(model.eval()(x), want)
    p = ensemble_predict(model, x, samples=2)
    torch.testing.assert_close(p.sum(-1), torch.ones(3, 32))


def test_ssa_model_trains_through_train_and_evaluates_with_full_attention():
    torch.manual_seed(0)
    model = use_ssa(TinyTransformer(8, dim=32, heads=2, layers=1, max_len=16), ratio=2, block=4)
    r = train(Lag(), model, steps=200, batch_size=32, lr=3e-3, eval_every=50, eval_batches=2, progress=False, threads=1)
    assert r.final_metric > 0.9, r.test_metric


def test_bad_options_raise():
    with pytest.raises(ValueError, match="ratio"):
        use_ssa(tiny(), ratio=0.5)
    with pytest.raises(ValueError, match="mha"):
        use_ssa(TinyTransformer(8, dim=16, heads=2, layers=1, mechanism="linear"))
