"""The hook graph: the same points on every supported model, capture equals what the model computes, interventions act."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import attnlab
from attnlab.core import attach
from attnlab.edits import parse
from attnlab.models.tiny import TinyTransformer
from attnlab.probes import Extreme, LayerImportance
from tests.conftest import tiny_causal_lm

FAMILIES = ["llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3", "gpt2", "bert"]
PER_LAYER = ("resid_pre", "attn.q", "attn.k", "attn.v", "attn.probs", "attn.z", "attn.out", "resid_mid", "mlp.out", "resid_post")


def _logits(out):
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _dims(model) -> tuple[int, int, int, int, int]:
    """``(layers, C, H, Hkv, D)`` of a tiny HF model."""
    cfg = model.config
    C = getattr(cfg, "hidden_size", None) or cfg.n_embd
    H = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    Hkv = getattr(cfg, "num_key_value_heads", None) or H
    D = getattr(cfg, "head_dim", None) or C // H
    return cfg.num_hidden_layers, C, H, Hkv, D


def _expected_shapes(L, C, H, Hkv, D, B, T, V) -> dict[str, tuple]:
    out = {"embed": (B, T, C), "final_norm": (B, T, C), "logits": (B, T, V)}
    for i in range(L):
        out |= {f"layers.{i}.{p}": (B, T, C) for p in ("resid_pre", "attn.out", "resid_mid", "mlp.out", "resid_post")}
        out |= {
            f"layers.{i}.attn.q": (B, H, T, D),
            f"layers.{i}.attn.k": (B, Hkv, T, D),
            f"layers.{i}.attn.v": (B, Hkv, T, D),
            f"layers.{i}.attn.probs": (B, H, T, T),
            f"layers.{i}.attn.z": (B, T, H, D),
        }
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_every_hook_point_has_its_documented_shape(family):
    model = tiny_causal_lm(family)
    L, C, H, Hkv, D = _dims(model)
    points = attnlab.hook_points(model)
    per_layer = [f"layers.{i}.{p}" for i in range(L) for p in PER_LAYER]
    ends = [] if family == "bert" else ["final_norm", "logits"]
    assert points == ["embed", *per_layer, *ends]
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), attnlab.capture(model, "*") as cache:
        model(input_ids=ids)
    expected = _expected_shapes(L, C, H, Hkv, D, 2, 7, 101)
    assert list(cache) and set(cache) == set(points)
    for point in points:
        assert tuple(cache[point].shape) == expected[point], point


@pytest.mark.parametrize("family", FAMILIES)
def test_resid_post_is_what_hf_returns_as_hidden_states(family):
    model = tiny_causal_lm(family)
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    points = ["embed", "layers.*.resid_post", *([] if family == "bert" else ["final_norm"])]
    with torch.no_grad(), attnlab.capture(model, points) as cache:
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states  # (embeddings, layer 0, ..., layer L-1)
    L = len(hidden) - 1
    assert torch.equal(cache["embed"], hidden[0])
    # HF's decoders put the final norm's output in place of the last layer's; the encoder does not
    last = L if family == "bert" else L - 1
    for i in range(last):
        assert torch.equal(cache[f"layers.{i}.resid_post"], hidden[i + 1]), i
    if family != "bert":
        assert torch.equal(cache["final_norm"], hidden[L])


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_interventions_give_bit_identical_logits(family):
    model = tiny_causal_lm(family)
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with attnlab.capture(model, "*") as cache:
            ref = _logits(model(input_ids=ids))
        with attnlab.intervene(model, {"*": lambda x, point: x}):
            same_object = _logits(model(input_ids=ids))
        with attnlab.intervene(model, {p: t.clone() for p, t in cache.items()}):
            same_values = _logits(model(input_ids=ids))
    assert torch.equal(same_object, ref)
    assert torch.equal(same_values, ref)


def _zero_head(h):
    def fn(z, point):
        z = z.clone()
        z[:, :, h] = 0  # [B, T, H, D]
        return z

    return fn


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_zeroing_a_head_in_attn_z_equals_the_head_mask_edit(family):
    model = tiny_causal_lm(family)
    ids = torch.randint(0, 100, (1, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        attnlab.hook_points(model)  # instruments the model
        with attach(edits=[parse("head_mask:heads=L1H2,mode=zero")]):
            edited = _logits(model(input_ids=ids))
        with attnlab.intervene(model, {"layers.1.attn.z": _zero_head(2)}):
            patched = _logits(model(input_ids=ids))
        plain = _logits(model(input_ids=ids))
    assert torch.equal(patched, edited)
    assert not torch.allclose(patched, plain)


def _tiny(**kw) -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer(13, dim=16, heads=4, layers=3, **kw).eval()


def test_zeroing_a_head_in_attn_z_equals_the_head_mask_edit_on_the_tiny_model():
    model = _tiny()
    ids = torch.randint(0, 13, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        with attach(edits=[parse("head_mask:heads=L2H1,mode=zero")]):
            edited = model(ids)
        with attnlab.intervene(model, {"layers.2.attn.z": _zero_head(1)}):
            patched = model(ids)
    assert torch.equal(patched, edited)


@given(
    dim_heads=st.sampled_from([(8, 1), (8, 2), (12, 3), (16, 4)]),
    layers=st.integers(1, 3),
    mlp=st.booleans(),
    T=st.integers(1, 12),
    B=st.integers(1, 2),
)
def test_tiny_model_hook_shapes_and_residual_algebra(dim_heads, layers, mlp, T, B):
    dim, heads = dim_heads
    model = TinyTransformer(7, dim=dim, heads=heads, layers=layers, mlp=mlp).eval()
    ids = torch.randint(0, 7, (B, T))
    with torch.no_grad(), attnlab.capture(model, "*") as cache:
        logits = model(ids)
    expected = _expected_shapes(layers, dim, heads, heads, dim // heads, B, T, 7)
    points = attnlab.hook_points(model)
    assert set(cache) == set(points)
    for point in points:
        assert tuple(cache[point].shape) == expected[point], point
    assert torch.equal(cache["logits"], logits)
    for i in range(layers):
        mid = cache[f"layers.{i}.resid_pre"] + cache[f"layers.{i}.attn.out"]
        assert torch.equal(cache[f"layers.{i}.resid_mid"], mid)
        post = mid + cache[f"layers.{i}.mlp.out"] if mlp else mid
        assert torch.equal(cache[f"layers.{i}.resid_post"], post)
        if i + 1 < layers:
            assert torch.equal(cache[f"layers.{i + 1}.resid_pre"], cache[f"layers.{i}.resid_post"])
    assert "layers.0.mlp.out" in points if mlp else "layers.0.mlp.out" not in points


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_captured_probs_are_the_softmax_of_captured_q_and_k_and_give_z(family):
    model = tiny_causal_lm(family)
    ids = torch.randint(0, 100, (1, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), attnlab.capture(model, "layers.1.attn.*") as c:
        model(input_ids=ids)
    q, k, v, p, z = (c[f"layers.1.attn.{n}"] for n in ("q", "k", "v", "probs", "z"))
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)  # [B, H, T, D]
    scale = model.model.layers[1].self_attn.scaling if family == "llama" else q.shape[-1] ** -0.5
    s = q @ k.transpose(-1, -2) * scale  # [B, H, T, T]
    s = s.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(p, s.softmax(-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(z, (p @ v).transpose(1, 2), atol=1e-6, rtol=1e-5)


def test_replacing_probs_with_a_matrix_gives_that_matrix_times_the_values():
    model = _tiny()
    ids = torch.randint(0, 13, (1, 7), generator=torch.Generator().manual_seed(6))
    uniform = torch.ones(7, 7).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True)).expand(1, 4, 7, 7)  # causal mean over the past
    with torch.no_grad(), attnlab.intervene(model, {"layers.0.attn.probs": uniform}), attnlab.capture(model, "layers.0.attn.*") as c:
        model(ids)
    torch.testing.assert_close(c["layers.0.attn.probs"], uniform)
    torch.testing.assert_close(c["layers.0.attn.z"], (uniform @ c["layers.0.attn.v"]).transpose(1, 2), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "bert"])
def test_an_edit_of_resid_mid_reaches_the_mlp_and_the_residual(family):
    model = tiny_causal_lm(family)
    ids = torch.randint(0, 100, (1, 6), generator=torch.Generator().manual_seed(7))
    delta = torch.randn(1, 6, _dims(model)[1], generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        with attnlab.intervene(model, {"layers.0.resid_mid": lambda x, p: x + delta}), attnlab.capture(model, "*") as c:
            model(input_ids=ids)
        with attnlab.capture(model, "*") as ref:
            model(input_ids=ids)
    torch.testing.assert_close(c["layers.0.resid_mid"], ref["layers.0.resid_mid"] + delta, atol=1e-5, rtol=1e-5)
    if family != "bert":  # pre-norm: the block's output is resid_mid' + mlp(norm(resid_mid'))
        torch.testing.assert_close(c["layers.0.resid_post"], c["layers.0.resid_mid"] + c["layers.0.mlp.out"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(c["layers.1.resid_post"], ref["layers.1.resid_post"])


def test_extreme_on_the_tiny_model_equals_norms_of_captured_activations():
    model = _tiny()
    ids = torch.randint(0, 13, (1, 11), generator=torch.Generator().manual_seed(9))
    probe = Extreme(top=3)
    probe.begin(ids, [str(t) for t in ids[0].tolist()])
    with torch.no_grad(), attach(probes=[probe]), attnlab.capture(model, ["layers.*.attn.v", "layers.*.resid_post"]) as c:
        model(ids)
    probe.end()
    r = probe.result()
    for i in range(3):
        v = c[f"layers.{i}.attn.v"][0].transpose(0, 1).flatten(1).norm(dim=-1)  # [T]: every kv head's value, concatenated
        x = c[f"layers.{i}.resid_post"][0].norm(dim=-1)  # [T]
        assert r["value_ratio"][i] == pytest.approx(float(v[0] / v[1:].median()), rel=1e-6)
        assert r["residual_ratio"][i] == pytest.approx(float(x[0] / x[1:].median()), rel=1e-6)
    assert r["peaks"] and max(p["norm"] for p in r["peaks"]) == pytest.approx(
        max(float(c[f"layers.{i}.resid_post"][0].norm(dim=-1).max()) for i in range(3)), abs=0.01
    )


def test_layer_importance_on_the_tiny_model_equals_cosines_of_captured_activations():
    model = _tiny()
    ids = torch.randint(0, 13, (2, 8), generator=torch.Generator().manual_seed(10))
    probe = LayerImportance()
    with torch.no_grad(), attach(probes=[probe]), attnlab.capture(model, "layers.*") as c:
        model(ids)
    r = probe.result()
    cos = torch.nn.functional.cosine_similarity
    for i in range(3):
        x, a = c[f"layers.{i}.resid_pre"], c[f"layers.{i}.attn.out"]
        attn = cos(x.double(), (x + a).double(), dim=-1).mean()  # S_l = mean cos(X, X + Attn(LN X))
        block = cos(x.double(), c[f"layers.{i}.resid_post"].double(), dim=-1).mean()
        assert r["attention"][i] == pytest.approx(float(attn), rel=1e-9)
        assert r["block"][i] == pytest.approx(float(block), rel=1e-9)
    assert sorted(r["ranking"]) == [0, 1, 2]


def test_unknown_points_name_the_valid_ones():
    model = _tiny()
    with (
        pytest.raises(ValueError, match=r"unknown hook point 'layers\.9\.resid_pre'.*layers\.\{0\.\.2\}\.resid_pre"),
        attnlab.capture(model, "layers.9.resid_pre"),
    ):
        pass
    with pytest.raises(ValueError, match=r"unknown hook point 'blocks\.\*'"), attnlab.intervene(model, {"blocks.*": torch.zeros(1)}):
        pass
    with pytest.raises(TypeError, match="TinyTransformer and Hugging Face models"):
        attnlab.hook_points(torch.nn.Linear(2, 2))


def test_a_replacement_of_the_wrong_shape_names_both_shapes():
    model = _tiny()
    ids = torch.randint(0, 13, (1, 5))
    cases = [
        (
            "layers.0.resid_post",
            torch.zeros(1, 4, 16),
            r"layers\.0\.resid_post has shape \[1, 5, 16\] in this pass, the tensor given has shape \[1, 4, 16\]",
        ),
        ("layers.0.attn.out", lambda x, p: x.sum(-1), r"the function's result has shape \[1, 5\]"),
        ("layers.0.attn.probs", torch.zeros(1, 4, 6, 6), r"layers\.0\.attn\.probs has shape \[1, 4, 5, 5\]"),
    ]
    for point, value, message in cases:
        with pytest.raises(ValueError, match=message), attnlab.intervene(model, {point: value}):
            model(ids)
    with pytest.raises(KeyError, match="was not captured"), attnlab.capture(model, "embed") as cache:
        cache["logits"]


def test_nothing_is_kept_without_a_capture():
    model = _tiny()
    ids = torch.randint(0, 13, (1, 5))
    with attnlab.capture(model, "logits") as cache:
        model(ids)
    assert list(cache) == ["logits"]
    model(ids)  # outside the block: the cache does not grow
    assert list(cache) == ["logits"]
