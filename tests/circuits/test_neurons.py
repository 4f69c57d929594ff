"""Integrated gradients over MLP neurons and the greedy neuron path (paper 69)."""

import pytest
import torch

from attnlab.circuits.neurons import ablate_neurons, down_projection, layer_ig, neuron_path, path_ig, replace_neurons, target_prob
from attnlab.models.tiny import TinyTransformer
from tests.conftest import tiny_causal_lm


def _sharpened(model):
    """Random weights of std 0.3 (instead of 0.02), so that neurons move the output measurably."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    return model


def _tiny():
    torch.manual_seed(0)
    return _sharpened(TinyTransformer(17, dim=16, heads=2, layers=3).eval())


def _width(model, layer) -> int:
    seen = []
    with replace_neurons(model, {layer: lambda x: seen.append(x.shape[-1]) or x}):
        target_prob(model, IDS, 0)
    return seen[0]


IDS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])


@pytest.mark.parametrize("family", ["tiny", pytest.param("llama", marks=pytest.mark.slow), pytest.param("gpt2", marks=pytest.mark.slow)])
def test_layer_ig_is_complete_at_50_steps(family):
    model = _tiny() if family == "tiny" else _sharpened(tiny_causal_lm(family))
    target = int(model(IDS)[0, -1].argmax()) if family == "tiny" else int(model(input_ids=IDS).logits[0, -1].argmax())
    full = target_prob(model, IDS, target).item()
    with ablate_neurons(model, {1: list(range(_width(model, 1)))}):
        zeroed = target_prob(model, IDS, target).item()
    attributions = layer_ig(model, IDS, target, 1, steps=50)
    assert abs(attributions.sum().item() - (full - zeroed)) < 1e-3
    assert abs(full - zeroed) > 1e-2  # the layer matters, so the identity says something


def test_path_ig_is_complete_and_replacing_with_the_own_value_changes_nothing():
    model = _tiny()
    path = {0: 5, 1: 17, 2: 40}
    full = target_prob(model, IDS, 2).item()
    with replace_neurons(model, {1: lambda x: x.clone()}):
        assert target_prob(model, IDS, 2).item() == full
    with ablate_neurons(model, path):
        zeroed = target_prob(model, IDS, 2).item()
    assert abs(path_ig(model, IDS, 2, path, steps=50).sum().item() - (full - zeroed)) < 1e-3


@pytest.mark.slow
def test_greedy_search_with_every_candidate_picks_the_best_joint_path_layer_by_layer():
    torch.manual_seed(0)
    model = _sharpened(TinyTransformer(17, dim=4, heads=2, layers=2).eval())  # 16 neurons per layer
    found = neuron_path(model, IDS, 2, steps=4, candidates=16)
    # reference: brute force over layer 0, then over layer 1 given the chosen layer-0 neuron
    best0 = max(range(16), key=lambda n: path_ig(model, IDS, 2, {0: n}, steps=4).sum().item())
    best1 = max(range(16), key=lambda n: path_ig(model, IDS, 2, {0: best0, 1: n}, steps=4).sum().item())
    assert found.neurons == {0: best0, 1: best1}
    assert found.score == pytest.approx(path_ig(model, IDS, 2, found.neurons, steps=4).sum().item(), abs=1e-6)


def test_ablation_zeroes_only_the_chosen_neurons():
    model = _tiny()
    seen = {}

    def keep(x):
        seen["x"] = x
        return x

    with ablate_neurons(model, {1: [3, 7]}), replace_neurons(model, {1: keep}):
        model(IDS)
    assert (seen["x"][..., [3, 7]] == 0).all() and (seen["x"][..., 4] != 0).any()
    with replace_neurons(model, {1: keep}):  # the hooks are gone after the block
        model(IDS)
    assert (seen["x"][..., 3] != 0).any()


def test_bad_inputs_are_refused():
    model = _tiny()
    with pytest.raises(ValueError, match="one prompt"):
        layer_ig(model, IDS.expand(2, -1), 2, 0)
    with pytest.raises(ValueError, match="steps is the number"):
        layer_ig(model, IDS, 2, 0, steps=0)
    with pytest.raises(ValueError, match="out of range"):
        layer_ig(model, IDS, 2, 9)
    with pytest.raises(ValueError, match="attention-only"):
        down_projection(TinyTransformer(11, dim=16, heads=2, layers=2, mlp=False), 0)
