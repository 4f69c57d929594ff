"""Neuron paths over prompt pairs (paper 69): each pair's path is neuron_path's, its drop is measured by ablation, and IG is complete."""

import pytest
import torch

from attnlab.circuits.neuron_paths import neuron_paths
from attnlab.circuits.neurons import ablate_neurons, neuron_path, target_prob
from attnlab.circuits.pairs import induction_pairs
from attnlab.models.tiny import TinyTransformer


def _model():
    """Random weights of std 0.3 (instead of 0.02), so that neurons move the output measurably."""
    torch.manual_seed(0)
    model = TinyTransformer(13, dim=16, heads=2, layers=3).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    return model


PAIRS = induction_pairs(3, length=4, vocab_size=13, seed=2)


@pytest.mark.slow
def test_each_pairs_path_is_the_greedy_path_and_its_drop_is_what_ablating_it_does():
    model = _model()
    r = neuron_paths(model, PAIRS, layers=[1, 2], steps=50, random_paths=4)
    assert r.layers == [1, 2] and len(r.grid) == 2 and len(r.grid[0]) == 3  # [L][P]
    for i, p in enumerate(r.paths):
        ids, target = PAIRS.clean[i][None], int(PAIRS.answer[i])
        found = neuron_path(model, ids, target, layers=[1, 2], steps=50, candidates=1)
        assert p["path"] == found.label()
        assert [row["neuron"] for row in r.table if row["pair"] == i] == list(found.neurons.values())
        assert [r.grid[k][i] for k in range(2)] == found.attributions.tolist()
        with torch.no_grad():
            base = float(target_prob(model, ids, target)[0])
            with ablate_neurons(model, found.neurons):
                ablated = float(target_prob(model, ids, target)[0])
        assert p["p_target"] == base and p["p_ablated"] == ablated
        assert abs(p["ig_sum"] - p["drop"]) < 1e-3  # completeness of the joint IG at m = 50
        assert len(p["random_drops"]) == 4 and p["beats_random"] == (p["drop"] > max(p["random_drops"]))
    assert max(abs(p["drop"]) for p in r.paths) > 1e-2  # the paths matter, so the identities say something
    s = r.summary()
    assert s["path_drop"] == sum(p["drop"] for p in r.paths) / 3 and s["random_drop"] == sum(sum(p["random_drops"]) for p in r.paths) / 12


@pytest.mark.slow
def test_random_paths_are_seeded_and_one_neuron_per_layer():
    model = _model()
    a = neuron_paths(model, PAIRS, layers=[2], steps=2, random_paths=5, seed=1)
    b = neuron_paths(model, PAIRS, layers=[2], steps=2, random_paths=5, seed=1)
    assert [p["random_drops"] for p in a.paths] == [p["random_drops"] for p in b.paths]
    assert len({d for p in a.paths for d in p["random_drops"]}) > 1


def test_bad_layers_and_random_paths_are_refused():
    model = _model()
    with pytest.raises(ValueError, match=r"layers \[5\] do not exist: the model has layers 0\.\.2"):
        neuron_paths(model, PAIRS, layers=[1, 5])
    with pytest.raises(ValueError, match="random_paths"):
        neuron_paths(model, PAIRS, random_paths=-1)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3", "gpt2"])
def test_ig_and_saliency_run_on_every_decoder_family(family):
    import attnlab
    from attnlab.circuits.saliency import pair_saliency
    from tests.conftest import tiny_causal_lm

    model = tiny_causal_lm(family).eval()
    attnlab.hook_points(model)
    pairs = induction_pairs(2, length=3, vocab_size=model.config.vocab_size, seed=0)
    r = neuron_paths(model, pairs, layers=[1], steps=2, random_paths=2)
    assert len(r.paths) == 2 and all(p["path"].startswith("L1N") for p in r.paths)
    s = pair_saliency(model, pairs)
    assert len(s.rows) == model.config.num_hidden_layers and all(v >= 0 for row in s.normgrad for v in row)
