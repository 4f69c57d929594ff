"""Papers 47 (ACT) and 12 (VAR): sink mass scaled by exactly β (p), freed mass to the other keys pro rata."""

import inspect

import pytest
import torch
from transformers import LlamaForCausalLM

import attnlab
from attnlab.core import Site, attach
from attnlab.core.site import Probe
from attnlab.edits import parse
from attnlab.edits.sink_redistribute import SinkRedistribute, redistribute
from attnlab.models import hf
from attnlab.runs.calibrate import calibrate
from attnlab.runs.edit import prepare
from tests.conftest import tiny_causal_lm

CACHE = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"  # transformers renamed it
SITE = Site("layers.0.attn", layer=0, num_heads=3, num_kv_heads=3)


class Rows(Probe):
    """A probe that keeps every chunk of probabilities it sees, per site."""

    def __init__(self):
        self.probs = {}

    def observe(self, chunk, site):
        self.probs.setdefault(site.name, []).append(chunk.probs.clone())

    def result(self):
        return {k: torch.cat(v, dim=2) for k, v in self.probs.items()}


def _rows(B=2, H=3, T=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, H, T, T, generator=g, dtype=dtype) * 2
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1)  # [B, H, T, T] causal rows


def _model_and_ids(T=12, seed=0, **kw):
    model = hf.instrument(tiny_causal_lm("llama", **kw))
    return model, torch.randint(0, 100, (1, T), generator=torch.Generator().manual_seed(seed))


def test_act_rows_sum_to_one_sinks_scale_by_exactly_beta_and_others_gain_pro_rata():
    p = _rows()
    sinks = [2, 4]
    fn = SinkRedistribute(beta=0.3, sinks=sinks, heads=[0, 2]).at(SITE)
    out = fn(p, torch.arange(7), torch.arange(7))
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 3, 7, dtype=torch.float64), rtol=0, atol=1e-12)
    edited = [0, 2]
    assert torch.equal(out[:, edited][..., sinks], p[:, edited][..., sinks] * 0.3)
    assert torch.equal(out[:, 1], p[:, 1])  # head 1 not chosen
    other = [0, 1, 3, 5, 6]  # the first token is not a sink for ACT unless named: it gets its share
    m_s, m_n = p[..., sinks].sum(-1, keepdim=True), p[..., other].sum(-1, keepdim=True)
    gain = out[..., other] - p[..., other]
    want = 0.7 * m_s * p[..., other] / m_n
    torch.testing.assert_close(gain[:, edited], want[:, edited], rtol=1e-12, atol=1e-15)
    assert torch.equal(out[:, :, :2], p[:, :, :2])  # rows 0, 1 see no sink: unchanged


def test_beta_one_and_empty_heads_are_bit_identical():
    p = _rows(dtype=torch.float32)
    s = torch.zeros(7, dtype=torch.bool)
    s[3] = True
    assert torch.equal(redistribute(p, s, ~s, 1.0), p)
    model, ids = _model_and_ids()
    with torch.no_grad():
        base = model(input_ids=ids).logits
    for edit in (SinkRedistribute(beta=1.0, tau=0.05), SinkRedistribute(heads=[], tau=0.05), parse("sink_redistribute:method=var,p=1")):
        prepare(model, [edit], ids)
        with torch.no_grad(), attach(edits=[edit]):
            assert torch.equal(model(input_ids=ids).logits, base)
    edit = SinkRedistribute(beta=0.4, tau=0.05)  # not a no-op: the test can fail
    prepare(model, [edit], ids)
    with torch.no_grad(), attach(edits=[edit]):
        assert not torch.equal(model(input_ids=ids).logits, base)


def test_act_prepare_finds_the_columns_of_the_full_matrix_and_the_pass_scales_them():
    model, ids = _model_and_ids(T=15, seed=1)
    eager = tiny_causal_lm("llama")
    with torch.no_grad():
        A = eager(input_ids=ids, output_attentions=True).attentions  # [layers][1, H, T, T]
    edit = SinkRedistribute(beta=0.25, tau=0.12, layers=[1])
    prepare(model, [edit], ids)
    T = ids.shape[1]
    for layer, a in enumerate(A):
        alpha = a[0].double().sum(1) / torch.arange(T, 0, -1, dtype=torch.float64)  # [H, T]
        want = alpha > 0.12
        want[:, 0] = False
        assert torch.equal(edit._record[f"layers.{layer}.attn"][0], want)
    sinks = edit._record["layers.1.attn"][0]  # [H, T]
    assert sinks.any()
    before, after = Rows(), Rows()
    with torch.no_grad(), attach(probes=[before]):
        model(input_ids=ids)
    with torch.no_grad(), attach(probes=[after], edits=[edit]):
        model(input_ids=ids)
    p, q = before.result()["layers.1.attn"][0], after.result()["layers.1.attn"][0]  # [H, T, T]; layer 0 is untouched
    assert torch.equal(before.result()["layers.0.attn"], after.result()["layers.0.attn"])
    cols = sinks.unsqueeze(1).expand_as(p)
    assert torch.equal(q[cols], p[cols] * 0.25)
    torch.testing.assert_close(q.sum(-1), torch.ones_like(q.sum(-1)), rtol=0, atol=1e-6)


def test_decode_step_uses_the_sinks_of_the_prompt():
    model, ids = _model_and_ids(T=10, seed=2)
    edit = SinkRedistribute(beta=0.5, tau=0.12, layers=[1])
    prepare(model, [edit], ids)
    sinks = edit._record["layers.1.attn"][0]  # [H, 10]
    assert sinks.any()
    probs = []
    for edits in ([], [edit]):
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True)
        rows = Rows()
        with torch.no_grad(), attach(probes=[rows], edits=edits):
            model(input_ids=torch.tensor([[7]]), use_cache=True, **{CACHE: out.past_key_values})
        probs.append(rows.result()["layers.1.attn"][0, :, 0])  # [H, 11]: one row per head
    p, q = probs
    cols = torch.cat([sinks, torch.zeros(sinks.shape[0], 1, dtype=torch.bool)], 1)  # the new key is never a sink
    assert torch.equal(q[cols], p[cols] * 0.5)
    torch.testing.assert_close(q.sum(-1), torch.ones(q.shape[0]), rtol=0, atol=1e-6)


def test_var_edits_rows_by_share_and_region_mass_and_feeds_only_the_region():
    p = _rows(B=1, H=3, T=9, seed=3)
    edit = SinkRedistribute(method="var", p=0.6, sinks=[0, 5], region=[3, 4, 5, 6], rho=0.5, region_mass=0.2)
    out = edit.at(SITE)(p, torch.arange(9), torch.arange(9))
    torch.testing.assert_close(out.sum(-1), torch.ones(1, 3, 9, dtype=torch.float64), rtol=0, atol=1e-12)
    region, nonsink = [3, 4, 5, 6], [3, 4, 6]
    m_r = p[..., region].sum(-1)
    share = p[..., [5]].sum(-1) / m_r
    chosen = (share <= 0.5) & (m_r >= 0.2) & (p[..., nonsink].sum(-1) > 0)
    assert chosen.any() and (~chosen).any()  # both kinds of row occur
    assert torch.equal(out[~chosen], p[~chosen])
    o, q = out[chosen], p[chosen]  # [rows, T]
    assert torch.equal(o[:, [0, 5]], q[:, [0, 5]] * 0.6)
    assert torch.equal(o[:, [1, 2, 7, 8]], q[:, [1, 2, 7, 8]])  # keys outside the region keep their mass
    freed = 0.4 * q[:, [0, 5]].sum(-1, keepdim=True)
    torch.testing.assert_close(
        o[:, nonsink] - q[:, nonsink], freed * q[:, nonsink] / q[:, nonsink].sum(-1, keepdim=True), rtol=1e-12, atol=1e-15
    )


def test_var_sink_tokens_come_from_the_sink_dimensions_of_the_layer_inputs():
    model, ids = _model_and_ids(T=11, seed=4)
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states  # inputs of layers 0, 1 are [0], [1]
    dims, tau = [3, 17], 1.5
    edit = SinkRedistribute(method="var", dims=dims, tau=tau)
    prepare(model, [edit], ids)
    for layer in range(2):
        x = hidden[layer][0]
        r = (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)).abs()
        want = r[:, dims].amax(-1) > tau
        assert want.any() and torch.equal(edit._record[f"layers.{layer}.attn"][0, 0], want)


def test_two_edits_compose_in_order_like_one_with_the_product_scale():
    p = _rows(seed=5)
    kv = torch.arange(7)
    a, b, ab = (SinkRedistribute(beta=s, sinks=[1, 3]).at(SITE) for s in (0.5, 0.4, 0.2))
    torch.testing.assert_close(b(a(p, kv, kv), kv, kv), ab(p, kv, kv), rtol=1e-12, atol=1e-15)
    x = torch.randn(1, 3, 7, 4, dtype=torch.float64)
    rows = Rows()
    attnlab.attend(
        x,
        x,
        x,
        is_causal=True,
        site=SITE,
        edits=[SinkRedistribute(beta=0.5, sinks=[1, 3]), SinkRedistribute(beta=0.4, sinks=[1, 3])],
        probes=[rows],
    )
    direct = Rows()
    attnlab.attend(x, x, x, is_causal=True, site=SITE, edits=[SinkRedistribute(beta=0.2, sinks=[1, 3])], probes=[direct])
    torch.testing.assert_close(rows.result()["layers.0.attn"], direct.result()["layers.0.attn"], rtol=1e-12, atol=1e-15)


def test_calibrate_keeps_exactly_the_heads_that_improve_the_score():
    model, _ = _model_and_ids()

    values = {(1, 0): -0.5, (1, 1): 0.5}  # pretend head 1 of layer 1 helps and head 0 of layer 1 hurts

    def score(m, tok, edits):
        if not edits:
            return 0.0
        ((layer, heads),) = edits[0].head_map.items()
        return values.get((layer, heads[0]), 0.0)

    edit = calibrate(SinkRedistribute(), model, None, score=score, candidates=["L1H0", "L1H1", "L0H2"])
    assert edit.head_map == {1: [1]} and edit.scores == {(1, 0): -0.5, (1, 1): 0.5, (0, 2): 0.0}


def test_calibrate_default_score_runs_every_candidate_through_prepare():
    model, _ = _model_and_ids(num_hidden_layers=4)

    class Tok:
        def __call__(self, text, return_tensors=None, add_special_tokens=True, verbose=True):  # adds no special tokens
            ids = torch.randint(0, 100, (1, 80), generator=torch.Generator().manual_seed(len(text)))
            return {"input_ids": ids if return_tensors == "pt" else ids[0].tolist()}

    edit = calibrate(SinkRedistribute(tau=0.05), model, Tok(), windows=2, window=32)
    assert set(edit.scores) == {(la, h) for la in (2,) for h in range(4)}  # layers 2..L-2
    assert any(v != 0 for v in edit.scores.values())  # the edit does change the perplexity
    assert edit.head_map == {2: [h for h in range(4) if edit.scores[(2, h)] > 0]} or all(v <= 0 for v in edit.scores.values())
    assert len(edit._cache) == 2  # the sinks of each window were found once


def test_bad_options_and_out_of_range_layers_and_heads_raise():
    sites = [Site(f"layers.{i}.attn", layer=i, num_heads=4) for i in range(2)]
    with pytest.raises(ValueError, match="method"):
        SinkRedistribute(method="foo")
    with pytest.raises(ValueError, match="other method"):
        SinkRedistribute(method="act", p=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SinkRedistribute(beta=1.5)
    with pytest.raises(ValueError, match="all ints"):
        SinkRedistribute(heads=[1, "L0H1"])
    with pytest.raises(ValueError, match="layer 5"):
        SinkRedistribute(heads=["L5H0"]).validate(sites)
    with pytest.raises(ValueError, match="head 4"):
        SinkRedistribute(heads=[4]).validate(sites)
    with pytest.raises(ValueError, match="layer 2"):
        parse("sink_redistribute:layers=1+2").validate(sites)
    with pytest.raises(ValueError, match="prepare"):
        SinkRedistribute().at(sites[0])
    SinkRedistribute(heads=["L1H3"]).validate(sites)


def test_smollm2_short_run_finds_sink_columns_and_sink_dimensions(smollm2):
    model, tok = smollm2
    hf.instrument(model)
    ids = tok("The quick brown fox jumps over the lazy dog. " * 4, return_tensors="pt")["input_ids"][:, :40]
    act = SinkRedistribute(layers=[3, 4, 5])
    prepare(model, [act], ids)
    assert sum(int(s[..., 1:].sum()) for s in act._record.values()) > 0  # hidden sinks j >= 1 exist
    var = SinkRedistribute(method="var")
    prepare(model, [var], ids)
    assert len(var.dims) > 0  # massive-activation dimensions of the first token
    assert sum(bool(s[0, 0, 0]) for s in var._record.values()) >= 15  # the first token is a sink in most layers
    with torch.no_grad():
        base = model(input_ids=ids).logits
        for edit in (act, var):
            with attach(edits=[edit]):
                logits = model(input_ids=ids).logits
            assert torch.isfinite(logits).all() and not torch.equal(logits, base)
