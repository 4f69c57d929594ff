"""Extreme-token and layer-importance probes, against hidden states from output_hidden_states."""

import torch
import torch.nn.functional as F

from attnlab.probes import Extreme, LayerImportance
from tests.probes.helpers import eager_and_instrumented, run


def test_block_similarity_and_residual_norms_equal_hidden_states():
    ids = torch.randint(0, 100, (1, 15), generator=torch.Generator().manual_seed(4))
    _, hidden, model = eager_and_instrumented(ids, num_hidden_layers=3)
    li, ex = LayerImportance(), Extreme()
    run(model, ids, [li, ex])
    r = li.result()
    for layer in range(2):  # hidden_states[-1] has the final norm applied; compare the inner blocks
        want = F.cosine_similarity(hidden[layer].double(), hidden[layer + 1].double(), dim=-1).mean()
        assert abs(r["block"][layer] - float(want)) < 1e-6
        n = hidden[layer + 1][0].norm(dim=-1)
        assert abs(ex.result()["residual_ratio"][layer] - float(n[0] / n[1:].median())) < 1e-4


def test_value_norms_equal_explicit_value_projection():
    ids = torch.randint(0, 100, (1, 11), generator=torch.Generator().manual_seed(5))
    _, hidden, model = eager_and_instrumented(ids)
    ex = Extreme()
    run(model, ids, [ex])
    for layer, block in enumerate(model.model.layers):
        with torch.no_grad():
            v = block.self_attn.v_proj(block.input_layernorm(hidden[layer]))[0]  # [T, Hkv*D]
        n = v.norm(dim=-1)
        assert abs(ex.result()["value_ratio"][layer] - float(n[0] / n[1:].median())) < 1e-4


def test_zeroed_attention_sublayer_scores_exactly_one():
    ids = torch.randint(0, 100, (1, 9))
    _, _, model = eager_and_instrumented(ids)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()
    li = LayerImportance()
    run(model, ids, [li])
    r = li.result()
    assert abs(r["attention"][1] - 1.0) < 1e-12
    assert r["attention"][0] < 1.0
    assert r["ranking"][0] == 1
