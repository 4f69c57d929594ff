"""TinyTransformer: every sequence mechanism builds, decoders are causal, sites carry HF-style addresses."""

import pytest
import torch

import attnlab
from attnlab.core.site import Edit
from attnlab.models.tiny import CAUSAL_BY_CONSTRUCTION, TinyTransformer, sequence_mechanisms
from attnlab.probes import Entropy

V, T = 11, 16


def model(mechanism="mha", **kw):
    torch.manual_seed(0)
    return TinyTransformer(V, **{"dim": 32, "heads": 4, "layers": 2, "max_len": 32, "mechanism": mechanism, **kw})


def tokens(n=2, t=T, seed=0):
    return torch.randint(0, V, (n, t), generator=torch.Generator().manual_seed(seed))


class ZeroHeads(Edit):
    """An output edit: zero the per-head outputs at the sites it selects."""

    stage = "output"

    def __init__(self, name):
        self.name = name

    def at(self, site):
        return (lambda out: torch.zeros_like(out)) if site.name == self.name else None


@pytest.mark.parametrize(
    ("mechanism", "causal"), [(m, True) for m in sequence_mechanisms(causal=True)] + [(m, False) for m in sequence_mechanisms()]
)
def test_every_sequence_mechanism_builds_trains_and_runs(mechanism, causal):
    m = model(mechanism, causal=causal)
    out = m(tokens())
    assert out.shape == (2, T, V)
    out.logsumexp(-1).mean().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads[:2])  # embeddings get a gradient
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("mechanism", sequence_mechanisms(causal=True))
def test_causal_decoder_never_reads_the_future(mechanism):
    m = model(mechanism, causal=True).eval()
    with torch.no_grad():  # random weights everywhere: a zero-initialised branch must not hide a leak
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    x = tokens()
    y = x.clone()
    y[:, 9:] = (y[:, 9:] + 1) % V
    with torch.no_grad():
        a, b = m(x), m(y)
    torch.testing.assert_close(a[:, :9], b[:, :9], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_mechanisms_without_a_causal_option_are_causal_by_construction_or_refused():
    assert CAUSAL_BY_CONSTRUCTION <= set(sequence_mechanisms(causal=True))
    assert {"reversed", "fit", "dcal"} <= set(sequence_mechanisms()) - set(sequence_mechanisms(causal=True))


def test_encoder_reads_the_future():
    m = model(causal=False).eval()
    x = tokens()
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % V
    with torch.no_grad():
        assert not torch.allclose(m(x)[:, 0], m(y)[:, 0])


def test_encoder_without_positions_is_permutation_equivariant():
    m = model(causal=False, positions="none").eval()
    x, perm = tokens(), torch.randperm(T, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(m(x[:, perm]), m(x)[:, perm], atol=1e-5, rtol=1e-5)
    assert m.pos is None


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"mechanism": "reversed"}, "bidirectional only"),
        ({"mechanism": "neighborhood"}, "does not map x [B, T, C] to [B, T, C]"),
        ({"mechanism": "shared"}, "does not map x [B, T, C] to [B, T, C]"),
        ({"mechanism": "summarize"}, "does not map x [B, T, C] to [B, T, C]"),
        ({"mechanism": "mhaa"}, "did you mean 'mha'"),
        ({"mechanism": "linear", "positions": "rope"}, "needs a mechanism with a rope option"),
        ({"positions": "sinusoidal"}, "positions must be one of"),
        ({"mechanism_options": {"is_causal": False}}, "contradicts the model's causal=True"),
        ({"mechanism_options": {"causal": True}}, "did you mean 'is_causal'"),
        ({"mechanism_options": {"nope": 1}}, "has no option 'nope'"),
    ],
)
def test_mechanisms_that_do_not_fit_get_a_clear_error(kw, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        model(**kw)


def test_the_error_lists_the_mechanisms_that_fit():
    with pytest.raises(ValueError) as e:
        model("reversed")
    assert "mha" in str(e.value) and "linear" in str(e.value) and "reversed, " not in str(e.value)


def test_sites_are_named_like_hf_models():
    m = model(layers=3)
    assert [s.name for s in m.sites()] == ["layers.0.attn", "layers.1.attn", "layers.2.attn"]
    assert [s.layer for s in m.sites()] == [0, 1, 2] and m.sites()[0].num_heads == 4
    assert m.get_submodule("layers.1.attn").site.module_path == "layers.1.attn"


def test_secondary_sites_get_suffixes():
    names = [s.name for s in model("dcal", causal=False, layers=1).sites()]
    assert names == ["layers.0.attn", "layers.0.attn.glca"]
    names = {s.name for s in model("fit", causal=False, layers=1, mechanism_options={"local_layers": 1, "global_layers": 1}).sites()}
    assert names == {"layers.0.attn.local.0", "layers.0.attn.global.0", "layers.0.attn.read", "layers.0.attn.write"}


def test_entropy_probe_sees_every_layer():
    m, ent = model(), Entropy()
    with attnlab.attach(probes=[ent]):
        m(tokens())
    r = ent.result()
    assert sorted(r) == ["layers.0.attn", "layers.1.attn"] and r["layers.0.attn"]["entropy"].shape == (4,)


def test_output_edit_zeroing_a_layer_equals_removing_its_attention():
    m, x = model().eval(), tokens()
    with torch.no_grad(), attnlab.attach(edits=[ZeroHeads("layers.1.attn")]):
        edited = m(x)
    with torch.no_grad():
        plain = m(x)
        m.layers[1].attn.forward = lambda h: torch.zeros_like(h)  # mha has no o_proj bias: zero heads give zero
        removed = m(x)
    torch.testing.assert_close(edited, removed)
    assert not torch.allclose(edited, plain)
    with torch.no_grad(), attnlab.attach(edits=[ZeroHeads("layers.9.attn")]):
        del m.layers[1].attn.forward
        torch.testing.assert_close(m(x), plain)  # an edit at no existing site changes nothing


def test_attention_only_model_has_no_mlp():
    m = model(mlp=False)
    assert all(b.mlp is None for b in m.layers)
    assert sum(p.numel() for p in m.parameters()) < sum(p.numel() for p in model().parameters())
    assert m(tokens()).shape == (2, T, V)


def test_rope_positions_reach_the_mechanism():
    m = model(positions="rope")
    assert m.pos is None and all(b.attn.rope for b in m.layers)


def test_continuous_inputs():
    torch.manual_seed(0)
    m = TinyTransformer(2, dim=16, heads=2, layers=1, input_dim=3, max_len=8)
    assert m(torch.randn(4, 8, 3)).shape == (4, 8, 2)
    with pytest.raises(ValueError, match=r"inputs must be float \[batch, tokens, 3\]"):
        m(torch.randn(4, 8, 5))


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.full((1, 4), V), "token ids must be in 0..10"),
        (torch.zeros(1, 40, dtype=torch.long), "more than max_len=32"),
        (torch.zeros(1, 4), r"inputs must be token ids \[batch, tokens\]"),
    ],
)
def test_bad_inputs_are_explained(x, message):
    with pytest.raises(ValueError, match=message):
        model()(x)
