"""Paper 31: LLM-Drop, dropped attention sublayers contribute exactly 0 and score S = 1."""

import pytest
import torch

import attnlab
from attnlab.core import Site, attach
from attnlab.core.site import Edit, Probe
from attnlab.edits import parse
from attnlab.edits.drop_attention import DropAttention
from attnlab.models import hf
from attnlab.models.tiny import TinyTransformer
from attnlab.probes import LayerImportance
from attnlab.runs.calibrate import calibrate
from attnlab.runs.edit import prepare
from tests.conftest import tiny_causal_lm


class Residual(Probe):
    """A hidden-state probe: each block's input, its attention contribution and its output."""

    observes_attention = False

    def __init__(self):
        self.x_in, self.attn, self.x_out = {}, {}, {}

    def observe(self, chunk, site):
        return

    def result(self):
        return {}

    def observe_sublayer(self, layer, x_in, attn_out):
        self.x_in[layer], self.attn[layer] = x_in, attn_out

    def observe_block(self, layer, x_in, x_out):
        self.x_out[layer] = x_out


class FakeTokenizer:
    def __call__(self, text, return_tensors=None, add_special_tokens=True, verbose=True):  # adds no special tokens
        ids = torch.randint(0, 100, (1, 200), generator=torch.Generator().manual_seed(1))
        return {"input_ids": ids if return_tensors == "pt" else ids[0].tolist()}


def _model(family="llama", layers=2):
    overrides = {"n_layer": layers} if family == "gpt2" else {"num_hidden_layers": layers}
    model = tiny_causal_lm(family, **overrides)
    if family == "gpt2":  # a fresh GPT-2 has zero biases: give the output projections one, as trained models have
        with torch.no_grad():
            for block in model.transformer.h:
                block.attn.c_proj.bias.normal_()
    return hf.instrument(model)


IDS = torch.randint(0, 100, (1, 13), generator=torch.Generator().manual_seed(0))


def _mlp_part(family, block, x):
    if family == "gpt2":
        return block.mlp(block.ln_2(x))
    return block.mlp(block.post_attention_layernorm(x))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_dropped_layer_contributes_exactly_zero_so_the_block_is_input_plus_mlp(family):
    model = _model(family)
    edit = DropAttention(layers=[1])
    prepare(model, [edit], IDS)
    probe = Residual()
    with torch.no_grad(), attach(probes=[probe], edits=[edit]):
        model(input_ids=IDS)
    assert torch.equal(probe.attn[1], torch.zeros_like(probe.attn[1]))  # GPT-2's c_proj bias is dropped too
    assert probe.attn[0].abs().sum() > 0
    block = hf.layers(model).blocks[1]
    with torch.no_grad():
        want = probe.x_in[1] + _mlp_part(family, block, probe.x_in[1])
    torch.testing.assert_close(probe.x_out[1], want, rtol=0, atol=1e-6)
    edit.close()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_importance_probe_scores_a_dropped_layer_exactly_one(family):
    model = _model(family)
    edit = DropAttention(layers=[0])
    prepare(model, [edit], IDS)
    probe = LayerImportance()
    with torch.no_grad(), attach(probes=[probe], edits=[edit]):
        model(input_ids=IDS)
    r = probe.result()
    assert abs(r["attention"][0] - 1.0) < 1e-12 and r["attention"][1] < 1.0 and r["ranking"][0] == 0
    edit.close()


def test_zeroing_head_outputs_alone_leaves_gpt2s_bias_so_the_hook_is_needed():
    model = _model("gpt2")

    class ZeroHeads(Edit):
        stage = "output"

        def at(self, site):
            return torch.zeros_like if site.layer == 0 else None

    probe = LayerImportance()
    with torch.no_grad(), attach(probes=[probe], edits=[ZeroHeads()]):
        model(input_ids=IDS)
    assert probe.result()["attention"][0] < 1.0 - 1e-6


def test_top_zero_and_empty_layers_are_bit_identical():
    model = _model()
    with torch.no_grad():
        base = model(input_ids=IDS).logits
    for edit in (DropAttention(top=0), DropAttention(layers=[]), parse("drop_attention:bottom=0")):
        prepare(model, [edit], IDS)
        with torch.no_grad(), attach(edits=[edit]):
            assert torch.equal(model(input_ids=IDS).logits, base)
    edit = DropAttention(top=1)  # not a no-op: the test can fail
    prepare(model, [edit], IDS)
    with torch.no_grad(), attach(edits=[edit]):
        assert not torch.equal(model(input_ids=IDS).logits, base)
    edit.close()


def test_top_bottom_and_random_follow_the_calibration_ranking():
    model = _model(layers=4)
    ids = FakeTokenizer()("", return_tensors="pt")["input_ids"][0]
    probe = LayerImportance()
    with torch.no_grad(), attach(probes=[probe]):
        for w in range(2):
            model(input_ids=ids[w * 64 : (w + 1) * 64][None])
    ranking = probe.result()["ranking"]
    top = calibrate(DropAttention(top=2), model, FakeTokenizer(), windows=2, window=64)
    assert top.ranking == ranking and top.layers == sorted(ranking[:2])
    bottom = calibrate(DropAttention(bottom=1), model, FakeTokenizer(), windows=2, window=64)
    assert bottom.layers == [ranking[-1]]
    r1, r2, r3 = (DropAttention(random=2, seed=s) for s in (3, 3, 4))
    for r in (r1, r2, r3):
        prepare(model, [r], ids[None, :10])
    assert r1.layers == r2.layers and len(r1.layers) == 2 and r1.ranking is None
    for e in (top, bottom, r1, r2, r3):
        e.close()


def test_prepare_ranks_once_on_its_first_input_and_hooks_are_inert_outside_attach():
    model = _model(layers=3)
    edit = DropAttention(top=1)
    with torch.no_grad():
        base = model(input_ids=IDS).logits  # before any hook
    prepare(model, [edit], IDS)
    first = edit.ranking
    prepare(model, [edit], torch.randint(0, 100, (1, 9)))
    assert edit.ranking is first  # cached
    with torch.no_grad():
        a = model(input_ids=IDS).logits
        edit.close()
        b = model(input_ids=IDS).logits
    assert torch.equal(a, b) and torch.equal(a, base)


def test_dropped_sublayers_contribute_zero_on_the_tiny_model_too():
    torch.manual_seed(0)
    model = TinyTransformer(13, dim=16, heads=2, layers=3).eval()
    ids = torch.randint(0, 13, (1, 8))
    probe = LayerImportance()
    with torch.no_grad(), attach(probes=[probe], edits=[DropAttention(layers=[1])]), attnlab.capture(model, "layers.*.attn.out") as c:
        model(ids)
    assert torch.equal(c["layers.1.attn.out"], torch.zeros(1, 8, 16))
    assert probe.result()["attention"][1] == 1.0 and probe.result()["attention"][0] < 1.0


def test_composes_with_other_output_edits_in_either_order():
    model = _model()

    class AddOne(Edit):
        stage = "output"

        def at(self, site):
            return lambda out: out + 1.0

    edit = DropAttention(layers=[1])
    prepare(model, [edit], IDS)
    for edits in ([edit, AddOne()], [AddOne(), edit]):
        probe = Residual()
        with torch.no_grad(), attach(probes=[probe], edits=edits):
            model(input_ids=IDS)
        assert torch.equal(probe.attn[1], torch.zeros_like(probe.attn[1]))  # dropped whatever ran before
        solo = Residual()
        with torch.no_grad(), attach(probes=[solo], edits=[AddOne()]):
            model(input_ids=IDS)
        assert torch.equal(probe.attn[0], solo.attn[0])  # layer 0 sees only the other edit
    edit.close()


def test_bad_options_and_out_of_range_layers_raise():
    sites = [Site(f"layers.{i}.attn", layer=i, num_heads=4) for i in range(3)]
    with pytest.raises(ValueError, match="exactly one"):
        DropAttention()
    with pytest.raises(ValueError, match="exactly one"):
        DropAttention(layers=[1], top=2)
    with pytest.raises(ValueError, match="number of layers"):
        DropAttention(top=-1)
    with pytest.raises(ValueError, match="layer 3 is out of range"):
        parse("drop_attention:layers=1+3").validate(sites)
    with pytest.raises(ValueError, match="has 3 layers"):
        DropAttention(random=4).validate(sites)
    with pytest.raises(ValueError, match="calibrate"):
        DropAttention(top=2).at(sites[0])
    # a model's site needs no preparation: every model's hook graph applies the sublayer zeroing
    assert DropAttention(layers=[0]).at(Site("layers.0.attn", layer=0, module_path="model.layers.0.self_attn")) is torch.zeros_like
    DropAttention(random=2).validate(sites)


def test_smollm2_drop_the_most_redundant_layers_through_the_harness(smollm2):
    from attnlab.runs.evaluate import compare

    model, tok = smollm2
    edit = calibrate(DropAttention(top=2), model, tok, windows=1, window=64)
    assert len(edit.ranking) == 30 and 0 not in edit.layers  # the first layer is never redundant
    (r,) = compare(model, tok, [edit], ["ppl"], options={"ppl": {"tokens": 64, "window": 64}})
    edit.close()
    assert r.after[0] != r.before[0] and r.after[0] < 2 * r.before[0]
