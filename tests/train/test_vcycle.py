"""V-cycle operators (paper 72): de-coalescing keeps the function; coalescing inverts it; interpolation is linear."""

import pytest
import torch

from attnlab.models.tiny import TinyTransformer
from attnlab.train.vcycle import coalesce, decoalesce, interpolate, v_cycle
from tests.train.toy import Lag


def large(seed=0, **kw):
    torch.manual_seed(seed)
    m = TinyTransformer(11, **{"dim": 32, "heads": 4, "layers": 2, "max_len": 16, **kw})
    with torch.no_grad():  # weights well away from init: LayerNorm gains, biases and all
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.eval()


X = torch.randint(0, 11, (3, 16))


@pytest.mark.parametrize(
    "kw",
    [{}, {"mechanism_options": {"kv_heads": 2}}, {"positions": "rope"}, {"causal": False}, {"mlp": False}],
    ids=["mha", "gqa", "rope", "encoder", "attention-only"],
)
def test_decoalesce_after_coalesce_preserves_the_function_within_1e_5(kw):
    small = coalesce(large(**kw))
    assert (small.dim, small.heads) == (16, 2)
    big = decoalesce(small).eval()
    assert (big.dim, big.heads) == (32, 4)
    torch.testing.assert_close(big(X), small.eval()(X), atol=1e-5, rtol=0)


def test_coalesce_inverts_decoalesce_exactly():
    small = coalesce(large())
    back = coalesce(decoalesce(small))
    for (n, a), b in zip(small.state_dict().items(), back.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-7, rtol=0, msg=n)


def test_coalesce_averages_written_pairs_and_sums_read_pairs_by_hand():
    m = large()
    small = coalesce(m)
    w = m.layers[0].attn.q_proj.weight.detach()  # [H·D, C] = [32, 32]: rows are written heads, columns read features
    want = (w[:16, :16] + w[:16, 16:] + w[16:, :16] + w[16:, 16:]) / 2
    torch.testing.assert_close(small.layers[0].attn.q_proj.weight, want)
    torch.testing.assert_close(small.norm.weight, (m.norm.weight[:16] + m.norm.weight[16:]) / 2)


def test_depth_coalesce_averages_layer_pairs_and_decoalesce_repeats_them():
    m = large(layers=4)
    small = coalesce(m, width=False, depth=True)
    assert len(small.layers) == 2
    torch.testing.assert_close(small.layers[1].mlp[0].weight, (m.layers[2].mlp[0].weight + m.layers[3].mlp[0].weight) / 2)
    big = decoalesce(small, width=False, depth=True)
    for i in range(4):
        torch.testing.assert_close(big.layers[i].attn.k_proj.weight, small.layers[i // 2].attn.k_proj.weight)


def test_interpolate_is_the_weighted_mean():
    a, b = large(0), large(1)
    want = {k: 0.75 * v + 0.25 * b.state_dict()[k] for k, v in a.state_dict().items()}
    interpolate(a, b, 0.25)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, want[k])


def test_v_cycle_trains_small_then_large():
    torch.manual_seed(0)
    m = TinyTransformer(8, dim=32, heads=2, layers=1, max_len=16)
    opts = {"batch_size": 32, "lr": 3e-3, "eval_every": 50, "eval_batches": 2, "progress": False, "threads": 1}
    big, r_small, r_big = v_cycle(Lag(), m, small_steps=150, steps=100, **opts)
    assert big.dim == 32 and r_small.steps_done == 150 and r_big.final_metric > 0.9, (r_small.test_metric, r_big.test_metric)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="even"):
        coalesce(TinyTransformer(5, dim=12, heads=3, layers=1))
    with pytest.raises(ValueError, match="mha"):
        coalesce(TinyTransformer(5, dim=16, heads=2, layers=1, mechanism="linear"))
    with pytest.raises(ValueError, match="alpha"):
        interpolate(large(), large(), 2)
