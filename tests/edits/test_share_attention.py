"""Paper 14: EchoAtt without distillation, targets take their source's probabilities in the same pass."""

import inspect

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

import attnlab
from attnlab.core import Site, attach
from attnlab.core import masks as M
from attnlab.core.site import Probe
from attnlab.edits import parse
from attnlab.edits.share_attention import ShareAttention
from attnlab.edits.sink_redistribute import SinkRedistribute
from attnlab.mechanisms.shared import CaptureProbs
from attnlab.models import hf
from attnlab.runs.calibrate import calibrate
from attnlab.runs.edit import prepare
from tests.conftest import tiny_causal_lm

CACHE = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"  # transformers renamed it
IDS = torch.randint(0, 100, (1, 14), generator=torch.Generator().manual_seed(0))


class Rows(Probe):
    """A probe that keeps every chunk of probabilities it sees, per layer."""

    def __init__(self):
        self.probs = {}

    def observe(self, chunk, site):
        self.probs.setdefault(site.layer, []).append(chunk.probs.clone())

    def result(self):
        return {k: torch.cat(v, dim=2) for k, v in self.probs.items()}


class FakeTokenizer:
    def __call__(self, text, return_tensors=None, add_special_tokens=True, verbose=True):  # adds no special tokens
        ids = torch.randint(0, 100, (1, 100), generator=torch.Generator().manual_seed(2))
        return {"input_ids": ids if return_tensors == "pt" else ids[0].tolist()}


def _model(layers=3):
    return hf.instrument(tiny_causal_lm("llama", num_hidden_layers=layers))


def _probs(model, edits, ids=IDS):
    rows = Rows()
    with torch.no_grad(), attach(probes=[rows], edits=edits):
        logits = model(input_ids=ids).logits
    return logits, rows.result()


def test_a_target_fed_its_own_probabilities_is_bit_identical():
    model = _model()
    ref, _ = _probs(model, [CaptureProbs("layers.1.attn")])  # the row pass at layer 1, probabilities unchanged
    got, _ = _probs(model, [ShareAttention(source=1, targets=[1])])
    assert torch.equal(got, ref)
    base, _ = _probs(model, [])
    for edit in (ShareAttention(top=0), parse("share_attention:random=0")):
        assert torch.equal(_probs(model, [edit])[0], base)
    assert not torch.equal(_probs(model, [ShareAttention(source=0, targets=[1])])[0], base)  # the test can fail


def test_sharing_replaces_exactly_the_target_probabilities():
    model = _model()
    _, before = _probs(model, [])
    _, after = _probs(model, [parse("share_attention:source=0,targets=2")])
    assert torch.equal(after[2], after[0])  # the target sees the source's rows, head for head (GQA: 4 heads, 2 kv)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])  # layers before the target are untouched
    assert not torch.equal(before[2], before[0])
    torch.testing.assert_close(after[2].sum(-1), torch.ones_like(after[2].sum(-1)), rtol=0, atol=1e-6)


def test_target_output_is_source_probabilities_times_its_own_values_under_gqa():
    g = torch.Generator().manual_seed(1)
    q1, q2 = torch.randn(2, 1, 4, 9, 8, generator=g, dtype=torch.float64).unbind(0)
    k1, k2, v1, v2 = torch.randn(4, 1, 2, 9, 8, generator=g, dtype=torch.float64).unbind(0)
    with attach(edits=[ShareAttention(source=0, targets=[1])]):
        attnlab.attend(q1, k1, v1, is_causal=True, site=Site("a", layer=0))
        out = attnlab.attend(q2, k2, v2, is_causal=True, site=Site("b", layer=1))
    s = (q1 @ k1.repeat_interleave(2, 1).transpose(-1, -2)) / 8**0.5  # [1, 4, 9, 9]
    P = torch.softmax(s.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf")), -1)
    torch.testing.assert_close(out, P @ v2.repeat_interleave(2, 1), rtol=1e-12, atol=1e-12)


def test_the_target_must_see_the_keys_of_its_source():
    q, k, v = torch.randn(3, 1, 2, 10, 4).unbind(0)
    with attach(edits=[ShareAttention(source=0, targets=[1])]), pytest.raises(ValueError, match="must see the keys"):
        attnlab.attend(q, k, v, is_causal=True, site=Site("a", layer=0))
        attnlab.attend(q, k, v, mask=M.sliding_window(2) & M.causal, site=Site("b", layer=1))


def test_decode_step_shares_the_new_row():
    model = _model()
    edit = ShareAttention(pairs=["0>2"])
    with torch.no_grad():
        out = model(input_ids=IDS, use_cache=True)
        rows = Rows()
        with attach(probes=[rows], edits=[edit]):
            model(input_ids=torch.tensor([[5]]), use_cache=True, **{CACHE: out.past_key_values})
    r = rows.result()
    assert r[2].shape[2] == 1 and torch.equal(r[2], r[0])


def test_calibrate_measures_cosine_similarity_and_chooses_blocks_of_the_most_similar_layers():
    model = _model(layers=5)
    edit = calibrate(ShareAttention(top=2), model, FakeTokenizer(), windows=2, window=40)
    ids = FakeTokenizer()("", return_tensors="pt")["input_ids"][0]
    eager = tiny_causal_lm("llama", num_hidden_layers=5)
    want = 0
    for w in range(2):
        with torch.no_grad():
            A = torch.stack(eager(input_ids=ids[w * 40 : (w + 1) * 40][None], output_attentions=True).attentions)[
                :, 0
            ].double()  # [L, H, T, T]
        v = F.normalize(A.flatten(2), dim=-1)
        want = want + torch.einsum("lhx,mhx->lm", v, v) / A.shape[1] / 2
    torch.testing.assert_close(edit.similarity, want, rtol=0, atol=1e-5)
    adjacent = [float(want[t - 1, t]) for t in range(1, 5)]
    best = sorted(sorted(range(1, 5), key=lambda t: -adjacent[t - 1])[:2])
    sources = {t: (t - 2 if t - 1 in best else t - 1) for t in best}  # a run of targets shares the layer before it
    assert edit.pairs == sources
    r1, r2 = ShareAttention(random=2, seed=7), ShareAttention(random=2, seed=7)
    prepare(model, [r1], IDS)
    r2.validate(hf.sites(model))
    assert r1.pairs == r2.pairs and len(r1.pairs) == 2


def test_chains_resolve_to_the_first_layer():
    e = ShareAttention(pairs=[(0, 1), "1>2", (2, 3)])
    assert e.pairs == {1: 0, 2: 0, 3: 0} and set(e.captures) == {0}


def test_composition_order_share_then_redistribute_or_the_reverse():
    model = _model()
    act = SinkRedistribute(beta=0.5, sinks=[3], layers=[2])
    _, shared_then_act = _probs(model, [ShareAttention(source=0, targets=[2]), act])
    _, act_then_shared = _probs(model, [act, ShareAttention(source=0, targets=[2])])
    src = shared_then_act[0]
    assert torch.equal(act_then_shared[2], src)  # sharing last overwrites the redistribution
    kv = torch.arange(src.shape[-1])
    assert torch.equal(shared_then_act[2], act.at(Site("layers.2.attn", layer=2))(src, kv, kv))  # edits act in the order given


def test_bad_options_and_out_of_range_layers_raise():
    sites = [Site(f"layers.{i}.attn", layer=i, num_heads=4) for i in range(3)]
    with pytest.raises(ValueError, match="give source"):
        ShareAttention()
    with pytest.raises(ValueError, match="give source"):
        ShareAttention(source=1)
    with pytest.raises(ValueError, match="give source"):
        ShareAttention(top=1, pairs=["0>1"])
    with pytest.raises(ValueError, match="runs before"):
        ShareAttention(source=2, targets=[1])
    with pytest.raises(ValueError, match="source>target"):
        ShareAttention(pairs=["1-2"])
    with pytest.raises(ValueError, match="number of target layers"):
        ShareAttention(top=-1)
    with pytest.raises(ValueError, match="layer 3 is out of range"):
        ShareAttention(source=0, targets=[3]).validate(sites)
    with pytest.raises(ValueError, match=r"only layers 1\.\.2"):
        ShareAttention(random=3).validate(sites)
    with pytest.raises(ValueError, match="calibrate"):
        ShareAttention(top=1).at(sites[0])


def test_smollm2_calibration_finds_similar_adjacent_layers(smollm2):
    model, tok = smollm2
    edit = calibrate(ShareAttention(top=3), model, tok, windows=1, window=48)
    S = edit.similarity
    assert S.shape == (30, 30) and torch.allclose(S.diagonal(), torch.ones(30, dtype=S.dtype))
    assert len(edit.pairs) == 3 and all(s < t for t, s in edit.pairs.items())
    ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]
    with torch.no_grad(), attach(edits=[edit]):
        assert torch.isfinite(model(input_ids=ids).logits).all()
