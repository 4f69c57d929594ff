"""Paper 69 (Influential neuron path) over prompt pairs: each clean prompt's neuron path, and what ablating it does.

For each pair, the target is the pair's answer token and ``f = p(answer | clean prompt)`` at the
last position (the corrupted prompt and the wrong answer are not used). The greedy
layer-progressive search (:func:`attnlab.circuits.neurons.neuron_path`, ``candidates=1``: at each
layer the neuron with the largest IG when scaled jointly with the path so far) finds one MLP
neuron per searched layer; their joint integrated gradients are the per-layer attributions. The
path is then ablated (its neurons zeroed at every position) and so are ``random_paths`` random
paths of the same size (one uniformly random neuron in each of the same layers, seeded): the
drop is ``f − f(ablated)``.

Shapes: ``P`` pairs, ``L`` searched layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from attnlab.circuits.neurons import ablate_neurons, neuron_path, replace_neurons, target_prob
from attnlab.circuits.pairs import Pairs

__all__ = ["RANDOM_PATHS", "NeuronPaths", "neuron_paths"]

RANDOM_PATHS = 20  # random paths ablated per pair, as bench/repro/neuron_path.py


@dataclass
class NeuronPaths:
    """What :func:`neuron_paths` found.

    Attributes:
        layers: the searched layers, in order ``[L]``.
        table: one row per pair and searched layer: ``pair, layer, neuron, attribution`` (joint IG).
        paths: one record per pair: ``pair, path`` (``L3N17 → L4N2``), ``p_target``, ``p_ablated``,
            ``drop``, ``ig_sum`` (≈ ``drop``: completeness), ``random_drops`` (one per random path),
            ``beats_random`` (the path's drop exceeds every random path's).
        grid: the attributions ``[L][P]``.
    """

    layers: list[int]
    table: list[dict]
    paths: list[dict]
    grid: list[list[float]]

    def summary(self) -> dict[str, float]:
        """Means over pairs: ``p_target``, ``path_drop``, ``random_drop`` (over every random path) and ``ig_sum``."""
        randoms = [d for p in self.paths for d in p["random_drops"]]
        mean = lambda key: sum(p[key] for p in self.paths) / len(self.paths)  # noqa: E731
        return {
            "p_target": mean("p_target"),
            "path_drop": mean("drop"),
            "random_drop": sum(randoms) / len(randoms) if randoms else float("nan"),
            "ig_sum": mean("ig_sum"),
        }


def _widths(model: nn.Module, ids, layers: list[int]) -> dict[int, int]:
    """Each layer's MLP width ``I``, read from one pass."""
    widths: dict[int, int] = {}

    def keep(layer):
        def fn(x):  # [B, T, I]
            widths[layer] = x.shape[-1]
            return x

        return fn

    with torch.no_grad(), replace_neurons(model, {layer: keep(layer) for layer in layers}):
        target_prob(model, ids, 0)
    return widths


def neuron_paths(
    model: nn.Module,
    pairs: Pairs,
    *,
    layers: list[int] | None = None,
    steps: int = 20,
    random_paths: int = RANDOM_PATHS,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> NeuronPaths:
    """The neuron path of each pair's answer on its clean prompt, its attributions, and its ablation against random paths.

    Paper: 69 (Influential neuron path: joint integrated gradients, greedy layer-progressive search, m = 20).

    Args:
        model: a causal LM with MLPs (:func:`attnlab.circuits.neurons.down_projection` finds them).
        pairs: prompt pairs; the clean prompts and the answers are used.
        layers: the layers to search, in order (default every layer).
        steps: integration points ``m`` (the paper: 20).
        random_paths: random paths of the same size ablated per pair, for comparison.
        seed: the random paths' seed.
        progress: called as ``progress(what, done, total)`` after each searched layer.

    Example:
        >>> from attnlab.models.tiny import TinyTransformer
        >>> from attnlab.circuits.pairs import induction_pairs
        >>> model = TinyTransformer(20, dim=16, heads=2, layers=2).eval()
        >>> r = neuron_paths(model, induction_pairs(2, length=4, vocab_size=20), steps=4, random_paths=3)
        >>> len(r.grid), len(r.grid[0]), len(r.paths[0]["random_drops"])
        (2, 2, 3)
    """
    from attnlab.models import hf
    from attnlab.models.tiny import TinyTransformer

    n = len(model.layers) if isinstance(model, TinyTransformer) else len(hf.layers(model).blocks)
    layers = list(range(n)) if layers is None else sorted(set(layers))
    bad = [layer for layer in layers if not 0 <= layer < n]
    if not layers or bad:
        raise ValueError(f"layers {bad or layers} do not exist: the model has layers 0..{n - 1}")
    if isinstance(random_paths, bool) or not isinstance(random_paths, int) or random_paths < 0:
        raise ValueError(f"random_paths is how many random paths to ablate per pair, an int ≥ 0, got {random_paths=}")
    g = torch.Generator().manual_seed(seed)
    table, paths = [], []
    for i, ids in enumerate(pairs.clean):
        ids, target = ids[None], int(pairs.answer[i])  # [1, T]
        width = _widths(model, ids, layers)
        report = (lambda done, total, i=i: progress(f"pair {i + 1}/{len(pairs)}: neuron path, layer", done, total)) if progress else None
        found = neuron_path(model, ids, target, layers=layers, steps=steps, candidates=1, progress=report)
        with torch.no_grad():
            base = float(target_prob(model, ids, target)[0])
            with ablate_neurons(model, found.neurons):
                ablated = float(target_prob(model, ids, target)[0])
            randoms = []
            for _ in range(random_paths):
                path = {layer: int(torch.randint(width[layer], (1,), generator=g)) for layer in layers}
                with ablate_neurons(model, path):
                    randoms.append(base - float(target_prob(model, ids, target)[0]))
        drop = base - ablated
        attributions = found.attributions.tolist()
        table += [{"pair": i, "layer": layer, "neuron": found.neurons[layer], "attribution": a} for layer, a in zip(layers, attributions)]
        paths.append(
            {
                "pair": i,
                "path": found.label(),
                "p_target": base,
                "p_ablated": ablated,
                "drop": drop,
                "ig_sum": found.score,
                "random_drops": randoms,
                "beats_random": bool(randoms) and drop > max(randoms),
            }
        )
    grid = [[row["attribution"] for row in table if row["layer"] == layer] for layer in layers]  # [L][P]
    return NeuronPaths(layers, table, paths, grid)
