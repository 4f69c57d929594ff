"""Composition scores and OV SVD (paper 45) against hand-computed values and dense [C, C] references."""

import math

import pytest
import torch

import attnlab
from attnlab.circuits.composition import FoldedWeights, component_scores, composition_scores, folded_weights, ov_component_edit, ov_svd
from attnlab.models.tiny import TinyTransformer
from tests.conftest import tiny_causal_lm


def _hand_weights() -> FoldedWeights:
    """C = 2, D = 1, one head per layer. Column convention: W_OV⁰ = [[1, 0], [2, 0]], W_QK¹ = [[0, 1], [0, 0]], W_OV¹ = [[0, 1], [0, 0]]."""
    W_Q = torch.tensor([[[[1.0], [0.0]]], [[[1.0], [0.0]]]])  # [L=2, H=1, C=2, D=1]: q reads x0
    W_K = torch.tensor([[[[0.0], [1.0]]], [[[0.0], [1.0]]]])  # k reads x1
    W_V = torch.tensor([[[[1.0], [0.0]]], [[[0.0], [1.0]]]])  # layer 0 reads x0, layer 1 reads x1
    W_O = torch.tensor([[[[1.0, 2.0]]], [[[1.0, 0.0]]]])  # [L, H, D, C]: layer 0 writes (1, 2), layer 1 writes (1, 0)
    return FoldedWeights(W_Q, W_K, W_V, W_O)


def test_composition_scores_equal_hand_computed_values():
    w = _hand_weights()
    # K: W_QK W_OV⁰ = [[2, 0], [0, 0]] -> 2 / (1 · √5); Q: W_QKᵀ W_OV⁰ = [[0, 0], [1, 0]] -> 1/√5; V: W_OV¹ W_OV⁰ = [[2, 0], [0, 0]] -> 2/√5
    assert composition_scores(w, "k")[0, 0, 1, 0].item() == pytest.approx(2 / math.sqrt(5), abs=1e-6)
    assert composition_scores(w, "q")[0, 0, 1, 0].item() == pytest.approx(1 / math.sqrt(5), abs=1e-6)
    assert composition_scores(w, "v")[0, 0, 1, 0].item() == pytest.approx(2 / math.sqrt(5), abs=1e-6)
    assert torch.isnan(composition_scores(w, "k")[1, 0, 0, 0])  # a later head does not write into an earlier one
    # one component (D = 1): the component score is the whole-head score
    assert component_scores(w, "k")[0, 0, 0, 1, 0].item() == pytest.approx(2 / math.sqrt(5), abs=1e-6)


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = TinyTransformer(13, dim=12, heads=3, layers=3, mlp=False).eval()
    with torch.no_grad():
        for block in model.layers:
            block.norm1.weight.uniform_(0.5, 1.5)  # a gain that is not 1, so folding it matters
    return model


def _dense(model, layer, h):
    """Column-convention W_QK, W_OV ``[C, C]`` of a tiny mha head straight from its Linear weights and LayerNorm."""
    a, norm = model.layers[layer].attn, model.layers[layer].norm1
    C, D = model.dim, a.head_dim
    fold = torch.diag(norm.weight.detach()) @ (torch.eye(C) - 1.0 / C)  # LN(x) ∝ γ ⊙ (x − mean)
    rows = slice(h * D, (h + 1) * D)
    Wq, Wk, Wv = (m.weight.detach()[rows] @ fold for m in (a.q_proj, a.k_proj, a.v_proj))  # [D, C]
    Wo = a.o_proj.weight.detach()[:, rows]  # [C, D]
    return Wq.T @ Wk, Wo @ Wv


def _score(X, Y):
    return ((X @ Y).norm() / (X.norm() * Y.norm())).item()


@pytest.mark.parametrize("kind", ["q", "k", "v"])
def test_composition_scores_match_dense_matrices(kind):
    model = _tiny()
    scores = composition_scores(model, kind)
    for l1, h1, l2, h2 in [(0, 0, 1, 2), (0, 2, 2, 1), (1, 1, 2, 0)]:
        qk2, ov2 = _dense(model, l2, h2)
        reader = {"k": qk2, "q": qk2.T, "v": ov2}[kind]
        assert scores[l1, h1, l2, h2].item() == pytest.approx(_score(reader, _dense(model, l1, h1)[1]), abs=1e-5)


def test_component_scores_match_dense_rank_one_components():
    model = _tiny(1)
    scores = component_scores(model, "k")
    qk, _ = _dense(model, 2, 1)
    _, ov = _dense(model, 0, 2)
    U, S, Vh = torch.linalg.svd(ov)
    for i in range(3):
        comp = S[i] * torch.outer(U[:, i], Vh[i])
        assert scores[0, 2, i, 2, 1].item() == pytest.approx(_score(qk, comp), abs=1e-5)


def test_ov_svd_reconstructs_each_heads_ov_circuit():
    model = _tiny(2)
    U, S, V = ov_svd(model)
    _, ov = _dense(model, 1, 2)
    assert torch.allclose(U[1, 2] @ torch.diag(S[1, 2]) @ V[1, 2].T, ov, atol=1e-5)
    assert (S[..., :-1] >= S[..., 1:] - 1e-6).all()  # by decreasing singular value


def test_grouped_query_weights_repeat_key_value_heads():
    model = tiny_causal_lm("llama")  # 4 heads, 2 key/value heads, RMSNorm
    w = folded_weights(model)
    assert w.W_K.shape == (2, 4, 32, 8) and torch.equal(w.W_K[:, 0], w.W_K[:, 1]) and not torch.equal(w.W_K[:, 1], w.W_K[:, 2])
    g = model.model.layers[1].input_layernorm.weight.detach()
    Wq = model.model.layers[1].self_attn.q_proj.weight.detach()[8:16]  # head 1 [D, C]
    assert torch.allclose(w.W_Q[1, 1], (Wq * g).T, atol=1e-6)  # gain folded: q = (γ ⊙ x) W_Qᵀ
    assert composition_scores(w, "k").shape == (2, 4, 2, 4)


def test_unsupported_models_and_kinds_are_refused():
    with pytest.raises(TypeError, match="composition knows the weights of TinyTransformer"):
        folded_weights(tiny_causal_lm("bert"))
    with pytest.raises(ValueError, match="plain 'mha' mechanism"):
        folded_weights(TinyTransformer(11, dim=16, heads=2, layers=2, mechanism="linear"))
    with pytest.raises(ValueError, match="kind must be one of q, k, v"):
        composition_scores(_hand_weights(), "o")


def test_removing_an_ov_component_equals_editing_the_output_projection():
    model = _tiny(3)
    ids = torch.randint(0, 13, (2, 9))
    w = folded_weights(model)
    U, _, _ = ov_svd(w)
    u = U[0, 1, :, 0]  # head L0H1's top output direction
    base = model(ids)
    with attnlab.attach(edits=[ov_component_edit(w, "L0H1", 0)]):
        edited = model(ids)
    o = model.layers[0].attn.o_proj.weight
    D = model.layers[0].attn.head_dim
    with torch.no_grad():
        o[:, D : 2 * D] -= torch.outer(u, u @ o[:, D : 2 * D])  # W_O ← (I − u uᵀ) W_O for head 1: W_OV − s u vᵀ
        reference = model(ids)
    assert torch.allclose(edited, reference, atol=1e-5)
    assert (edited - base).abs().max() > 1e-4  # and it changes something


def test_ov_component_edit_checks_head_and_component():
    w = _hand_weights()
    with pytest.raises(ValueError, match="name one head"):
        ov_component_edit(w, "L5H0", 0)
    with pytest.raises(ValueError, match="component is an index"):
        ov_component_edit(w, "L0H0", 1)
