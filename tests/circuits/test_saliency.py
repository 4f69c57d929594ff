"""NormGrad saliency (paper 10) against the weight gradient of a virtual 1×1 identity convolution."""

import pytest
import torch
from torch import nn

import attnlab
from attnlab.circuits.saliency import normgrad, pair_saliency
from attnlab.models.tiny import TinyTransformer

IDS = torch.tensor([[3, 1, 4, 1, 5, 9, 2]])


def _model():
    torch.manual_seed(0)
    return TinyTransformer(11, dim=16, heads=2, layers=2).double().eval()


def _loss(model):
    return lambda: model(IDS)[0, -1].log_softmax(-1)[4]


def _virtual_conv_grad_norms(model, point: str) -> torch.Tensor:
    """Per location u: ‖∂L/∂W‖_F of a Linear with identity weight inserted at ``point`` at u only (a 1×1 conv's weight gradient at u)."""
    out = []
    for u in range(IDS.shape[1]):
        conv = nn.Linear(16, 16, bias=False).double()
        with torch.no_grad():
            conv.weight.copy_(torch.eye(16))

        def insert(x, name, u=u, conv=conv):  # x [B, T, C] (attn.z: [B, T, H, D], its channels flattened)
            mid = conv(x[:, u : u + 1].flatten(2)).view_as(x[:, u : u + 1])  # identity: the pass is unchanged
            return torch.cat([x[:, :u], mid, x[:, u + 1 :]], 1)

        with attnlab.intervene(model, {point: insert}):
            _loss(model)().backward()
        out.append(conv.weight.grad.norm())
    return torch.stack(out)  # [T]


@pytest.mark.parametrize("point", ["layers.0.resid_post", "layers.1.attn.out", "layers.1.mlp.out", "layers.1.attn.z"])
def test_normgrad_equals_the_weight_gradient_norm_of_a_virtual_identity_conv(point):
    model = _model()
    saliency = normgrad(model, point, _loss(model))  # [1, T]
    assert torch.allclose(saliency[0], _virtual_conv_grad_norms(model, point), atol=1e-6, rtol=0)


def test_selective_normgrad_keeps_only_positive_products():
    model = _model()
    seen = {}

    def keep(x, name):
        seen["a"] = x
        return x

    with attnlab.intervene(model, {"layers.1.resid_pre": keep}):
        loss = _loss(model)()
        (g,) = torch.autograd.grad(loss, seen["a"])
    reference = (seen["a"].detach() * g).clamp_min(0).norm(dim=-1)  # [1, T]
    assert torch.allclose(normgrad(model, "layers.1.resid_pre", _loss(model), selective=True), reference, atol=1e-12)


def test_normgrad_refuses_streamed_points_and_non_scalar_losses():
    model = _model()
    with pytest.raises(ValueError, match="one hook point with a token axis"):
        normgrad(model, "layers.0.attn.probs", _loss(model))
    with pytest.raises(ValueError, match="scalar"):
        normgrad(model, "layers.0.resid_post", lambda: model(IDS))


@pytest.mark.parametrize("selective", [False, True])
def test_normgrad_needs_no_parameter_gradients(selective):
    model = _model()
    with_grads = normgrad(model, "layers.1.resid_pre", _loss(model), selective=selective)
    model.requires_grad_(False)  # as after a gradient-free analysis: the point's own gradient still exists
    assert torch.equal(normgrad(model, "layers.1.resid_pre", _loss(model), selective=selective), with_grads)
    with pytest.raises(ValueError, match=r"loss does not depend on layers\.1\.resid_pre"):
        normgrad(model, "layers.1.resid_pre", lambda: (model(IDS), torch.tensor(1.0))[1])


def _by_hand(model, pairs, point: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Both variants of each pair alone, from autograd on the logit difference, then the mean over pairs: ``[T]`` each."""
    plain, selective = [], []
    for clean, answer, wrong in zip(pairs.clean, pairs.answer, pairs.wrong, strict=True):
        seen = {}

        def keep(x, name, seen=seen):
            seen["a"] = x
            return x

        with attnlab.intervene(model, {point: keep}):
            logits = model(clean[None])[0, -1]  # [V]
            (g,) = torch.autograd.grad(logits[answer] - logits[wrong], seen["a"])
        a = seen["a"].detach()[0]  # [T, C]
        plain.append(g[0].norm(dim=-1) * a.norm(dim=-1))
        selective.append((a * g[0]).clamp_min(0).norm(dim=-1))
    return torch.stack(plain).mean(0), torch.stack(selective).mean(0)


def test_pair_saliency_is_each_pairs_normgrad_of_the_logit_difference_averaged():
    from attnlab.circuits.pairs import induction_pairs

    model = _model()
    pairs = induction_pairs(5, length=4, vocab_size=11, seed=1)
    s = pair_saliency(model, pairs, batch_size=2)  # batches of 2, 2 and 1: each prompt's gradient is its own
    assert s.rows == ["layers.0.resid_pre", "layers.1.resid_pre"]
    for i, point in enumerate(s.rows):
        plain, selective = _by_hand(model, pairs, point)
        assert torch.allclose(torch.tensor(s.normgrad[i], dtype=torch.float64), plain, atol=1e-10, rtol=0)
        assert torch.allclose(torch.tensor(s.selective[i], dtype=torch.float64), selective, atol=1e-10, rtol=0)
    with torch.no_grad():
        logits = model(torch.stack(pairs.clean))[:, -1]  # [N, V]
    rows = torch.arange(len(pairs))
    assert abs(s.logit_diff - float((logits[rows, pairs.answer] - logits[rows, pairs.wrong]).mean())) < 1e-10


def test_pair_saliency_needs_one_token_length():
    from attnlab.circuits.pairs import from_ids

    pairs = from_ids([[1, 2, 3], [1, 2, 3, 4]], [[4, 2, 3], [4, 2, 3, 4]], [5, 6], [7, 8])
    with pytest.raises(ValueError, match=r"one token length, got lengths \[3, 4\]"):
        pair_saliency(_model(), pairs)
