"""Paper 69 (Influential neuron path): integrated gradients over MLP neurons, the greedy neuron path, its ablation.

A *neuron* is one channel of an MLP's hidden activation, the input of its down projection
(``act(gate(x)) * up(x)`` in Llama-style MLPs, ``gelu(fc(x))`` in GPT-2, BERT and
``TinyTransformer``): ``[B, T, I]``, ``I`` the MLP width. The hook graph stops at ``mlp.out``
(after the down projection), so this module reaches neurons with a forward pre-hook on the down
projection (:func:`replace_neurons`), temporary like :func:`attnlab.intervene`.

The target is ``f = p(target | prompt)``, the next-token probability at the last position. A
neuron's activation is scaled at every position together: neuron ``n`` of layer ``l`` takes the
values ``α · â_{l,n}`` (``â`` from the unedited pass, ``[T]``), baseline ``α = 0``. Integrated
gradients (midpoint rule over ``steps`` values of ``α``, one batch)::

    IG(n) = Σ_t â_{l,n,t} · (1/m) Σ_k ∂f/∂n_t |_{α = (k + ½)/m}

Completeness: ``Σ_n IG(n) = f(â) − f(0)`` up to the rule's error. *Joint* IG scales every neuron
of a path (one per layer) with the same ``α`` at once, each replaced by ``α`` times its unedited
value, so the path's attributions sum to ``f(x) − f(path zeroed)``.

The greedy layer-progressive search (:func:`neuron_path`) walks the layers in order; at each layer
it ranks the layer's neurons by their IG with the path so far scaled jointly with the whole
layer, takes the ``candidates`` best, and keeps the one whose joint IG with the path is largest.

Shapes: ``B`` batch, ``T`` tokens, ``I`` MLP width, ``V`` vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.circuits.metrics import weights_frozen

__all__ = ["NeuronPath", "ablate_neurons", "down_projection", "layer_ig", "neuron_path", "path_ig", "replace_neurons", "target_prob"]


def down_projection(model: nn.Module, layer: int) -> nn.Module:
    """The module whose input is layer ``layer``'s MLP neurons ``[B, T, I]``.

    Llama, Qwen2, Mistral, Gemma: ``mlp.down_proj``; GPT-2: ``mlp.c_proj``; BERT: ``output.dense``;
    ``TinyTransformer``: the MLP's last Linear.
    """
    from attnlab.models import hf
    from attnlab.models.tiny import TinyTransformer

    blocks = list(model.layers) if isinstance(model, TinyTransformer) else hf.layers(model).blocks
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer} is out of range: the model has layers 0..{len(blocks) - 1}")
    block = blocks[layer]
    if isinstance(model, TinyTransformer):
        if block.mlp is None:
            raise ValueError("this TinyTransformer is attention-only (mlp=False): it has no MLP neurons")
        return block.mlp[-1]
    for path in ("mlp.down_proj", "mlp.c_proj", "output.dense"):
        try:
            return block.get_submodule(path)
        except AttributeError:
            continue
    raise TypeError(f"no MLP down projection (mlp.down_proj, mlp.c_proj, output.dense) in {type(block).__name__}")


@contextmanager
def replace_neurons(model: nn.Module, fns: Mapping[int, Callable[[Tensor], Tensor]]) -> Iterator[None]:
    """Inside the block, layer ``l``'s neurons ``[B, T, I]`` are replaced by ``fns[l](neurons)``.

    A forward pre-hook on each layer's :func:`down_projection`, removed on exit.
    """
    with ExitStack() as stack:
        for layer, fn in fns.items():
            handle = down_projection(model, layer).register_forward_pre_hook(lambda m, args, fn=fn: (fn(args[0]), *args[1:]))
            stack.callback(handle.remove)
        yield


def ablate_neurons(model: nn.Module, path: Mapping[int, int | list[int]]):
    """A context manager in which the neurons of ``path`` (``{layer: neuron or [neurons]}``) are 0 at every position."""

    def zero(idx):
        return lambda x: x.index_fill(-1, torch.as_tensor(idx, device=x.device).reshape(-1), 0.0)

    return replace_neurons(model, {layer: zero(n) for layer, n in path.items()})


def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    from attnlab.models.tiny import TinyTransformer

    return model(ids) if isinstance(model, TinyTransformer) else model(input_ids=ids).logits  # [B, T, V]


def target_prob(model: nn.Module, ids: Tensor, target: int) -> Tensor:
    """``p(target)`` at the last position of each prompt of ``ids`` ``[B, T]``: ``[B]``."""
    return _logits(model, ids)[:, -1].float().softmax(-1)[:, target]


def _check(ids: Tensor, target: int, steps: int) -> None:
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"give one prompt as token ids [1, T], got shape {list(ids.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps is the number of integration points, a positive int (the paper uses 20), got {steps=}")
    if isinstance(target, bool) or not isinstance(target, int):
        raise TypeError(f"target is one token id (an int), got {target!r}")


def _joint_ig(model: nn.Module, ids: Tensor, target: int, chosen: Mapping[int, Tensor | None], steps: int) -> dict[int, Tensor]:
    """Joint IG of the neurons ``chosen`` (``{layer: neuron indices [k]}``, None: the whole layer): ``{layer: [k]}``."""
    _check(ids, target, steps)
    acts: dict[int, Tensor] = {}

    def keep(layer):
        def fn(x):
            acts[layer] = x[0].detach()  # [T, I]
            return x

        return fn

    with torch.no_grad(), replace_neurons(model, {layer: keep(layer) for layer in chosen}):
        _logits(model, ids)
    alpha = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps  # midpoints [m]
    device = ids.device
    leaves: dict[int, Tensor] = {}
    idx = {layer: torch.arange(acts[layer].shape[-1]) if n is None else torch.as_tensor(n).reshape(-1) for layer, n in chosen.items()}

    def scaled(layer):
        def fn(x):  # x [m, T, I]
            i = idx[layer].to(x.device)
            x = x.clone()
            x[..., i] = leaves[layer].to(x.dtype)
            return x

        return fn

    for layer in chosen:
        a = acts[layer][:, idx[layer].to(acts[layer].device)].float()  # [T, k]
        leaves[layer] = (alpha.to(a.device)[:, None, None] * a).requires_grad_()  # [m, T, k]
    with torch.enable_grad(), weights_frozen(model), replace_neurons(model, {layer: scaled(layer) for layer in chosen}):
        f = target_prob(model, ids.expand(steps, -1).to(device), target)  # [m]
        grads = torch.autograd.grad(f.sum(), [leaves[layer] for layer in chosen])
    return {
        layer: (acts[layer][:, idx[layer].to(acts[layer].device)].float() * g.mean(0)).sum(0).detach()  # [k]
        for layer, g in zip(chosen, grads)
    }


def layer_ig(model: nn.Module, ids: Tensor, target: int, layer: int, *, steps: int = 20) -> Tensor:
    """Integrated gradients of ``p(target)`` over every neuron of ``layer`` at once: ``[I]`` (sum: ``f(x) − f(layer zeroed)``).

    Paper: 69 (Influential neuron path: integrated gradients, m = 20).

    Example:
        >>> from attnlab.models.tiny import TinyTransformer
        >>> model = TinyTransformer(11, dim=16, heads=2, layers=2)
        >>> layer_ig(model, torch.randint(0, 11, (1, 6)), target=3, layer=1).shape
        torch.Size([64])
    """
    return _joint_ig(model, ids, target, {layer: None}, steps)[layer]


def path_ig(model: nn.Module, ids: Tensor, target: int, path: Mapping[int, int], *, steps: int = 20) -> Tensor:
    """Joint integrated gradients of a neuron path ``{layer: neuron}``: one attribution per neuron, in layer order ``[len(path)]``.

    Their sum is ``f(x) − f(path zeroed)`` up to the midpoint rule's error.

    Paper: 69 (Influential neuron path: joint attribution).
    """
    out = _joint_ig(model, ids, target, {layer: torch.tensor([n]) for layer, n in sorted(path.items())}, steps)
    return torch.cat([out[layer] for layer in sorted(path)])


@dataclass
class NeuronPath:
    """A neuron path found by :func:`neuron_path`.

    Attributes:
        neurons: ``{layer: neuron}``, one per searched layer.
        attributions: joint IG of each neuron, in layer order ``[len(neurons)]``.
    """

    neurons: dict[int, int]
    attributions: Tensor

    @property
    def score(self) -> float:
        """The path's joint attribution (``f(x) − f(path zeroed)``, up to the rule's error)."""
        return float(self.attributions.sum())

    def label(self) -> str:
        return " → ".join(f"L{layer}N{n}" for layer, n in self.neurons.items())


def neuron_path(
    model: nn.Module,
    ids: Tensor,
    target: int,
    *,
    layers: list[int] | None = None,
    steps: int = 20,
    candidates: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> NeuronPath:
    """The greedy layer-progressive neuron path of ``p(target)``: one neuron per layer, chosen by joint IG.

    Paper: 69 (Influential neuron path: greedy layer-progressive search, m = 20).

    Args:
        model: a model with MLPs (:func:`down_projection` finds them).
        ids: one prompt ``[1, T]``.
        target: the token id whose next-token probability is explained.
        layers: the layers to search, in order (default: every layer).
        steps: integration points ``m``.
        candidates: at each layer, how many of the best-ranked neurons (IG with the whole layer
            scaled jointly with the path so far) are scored by their exact joint IG with the path;
            1 keeps the best-ranked one.
        progress: called as ``progress(done, total)`` after each searched layer.
    """
    from attnlab.models import hf
    from attnlab.models.tiny import TinyTransformer

    n = len(model.layers) if isinstance(model, TinyTransformer) else len(hf.layers(model).blocks)
    layers = list(range(n)) if layers is None else sorted(layers)
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates is how many neurons per layer get an exact joint IG, a positive int, got {candidates=}")
    path: dict[int, int] = {}
    for done, layer in enumerate(layers, 1):
        fixed = {lay: torch.tensor([x]) for lay, x in path.items()}
        ranked = _joint_ig(model, ids, target, {**fixed, layer: None}, steps)[layer]  # [I]
        top = ranked.topk(min(candidates, ranked.numel())).indices.tolist()
        if len(top) == 1:
            path[layer] = top[0]
        else:
            joint = [float(path_ig(model, ids, target, {**path, layer: c}, steps=steps).sum()) for c in top]
            path[layer] = top[max(range(len(top)), key=joint.__getitem__)]
        if progress:
            progress(done, len(layers))
    return NeuronPath(path, path_ig(model, ids, target, path, steps=steps))
