"""Paper 72 (multi-level V-cycle training): coalesce a model, train it small, de-coalesce and interpolate.

The operators of the multi-level framework on a :class:`~attnlab.models.tiny.TinyTransformer` with
``mha`` attention:

- width: features ``j`` and ``j + C/2`` of the residual stream form a pair, and so do heads ``h``
  and ``h + H/2`` and MLP neurons ``j`` and ``j + 2C``. :func:`coalesce` merges each pair (half the
  width and the heads; the head dimension is kept): an axis a layer writes is averaged over the
  pair, an axis a linear layer reads is summed. :func:`decoalesce` splits each merged unit into two
  copies and halves the linear weights that read them, so the wider model computes exactly the
  function of the narrower one (LayerNorm of ``[x, x]`` is ``[LN x, LN x]``).
  ``coalesce(decoalesce(m))`` gives ``m``'s weights back.
- depth: layers ``2i`` and ``2i + 1`` merge into their average; de-coalescing repeats each layer
  twice (this does not preserve the function).
- :func:`interpolate`: ``W = (1 − α) W_dec + α W_large`` (paper: α = 0.5), the de-coalesced
  weights pulled toward the large model they came from.

:func:`v_cycle` runs the two-level cycle through :func:`attnlab.train.train`: coalesce the
large model, train the small one, de-coalesce, interpolate with the large one, train that.

    >>> from attnlab.models.tiny import TinyTransformer
    >>> large = TinyTransformer(11, dim=16, heads=4, layers=2)
    >>> small = coalesce(large)
    >>> small.dim, small.heads, decoalesce(small).dim
    (8, 2, 16)
"""

from __future__ import annotations

import torch
from torch import nn

from attnlab.mechanisms.mha import MultiHeadAttention
from attnlab.models.tiny import TinyTransformer
from attnlab.train.loop import train

__all__ = ["coalesce", "decoalesce", "interpolate", "v_cycle"]


def _check(model: nn.Module, *, width: bool, depth: bool, shrink: bool) -> None:
    if not isinstance(model, TinyTransformer) or model.mechanism != "mha":
        raise ValueError(f"V-cycle operators need a TinyTransformer with mechanism='mha', got {type(model).__name__}")
    attn = model.layers[0].attn
    if not isinstance(attn, MultiHeadAttention) or any(isinstance(m, nn.Linear) and type(m) is not nn.Linear for m in attn.modules()):
        raise ValueError("V-cycle operators need plain mha layers: build the model without sigma_reparam, and coalesce before use_ssa")
    if not (width or depth):
        raise ValueError("nothing to do: pass width=True, depth=True or both")
    if shrink and width and (model.dim % 2 or model.heads % 2 or attn.kv_heads % 2):
        raise ValueError(
            "width coalescing pairs features and heads: dim, heads and kv_heads must be even, "
            f"got dim={model.dim}, heads={model.heads}, kv_heads={attn.kv_heads}"
        )
    if shrink and depth and len(model.layers) % 2:
        raise ValueError(f"depth coalescing pairs layers: the model needs an even number of layers, got {len(model.layers)}")


def _like(model: TinyTransformer, *, dim: int, heads: int, layers: int) -> TinyTransformer:
    """A model of ``model``'s kind with another width, head count and depth (``kv_heads`` scaled with the heads)."""
    options = dict(model.mechanism_options)
    kv = model.layers[0].attn.kv_heads
    options["kv_heads"] = kv * heads // model.heads
    return TinyTransformer(
        model.vocab_size,
        dim=dim,
        heads=heads,
        layers=layers,
        mechanism="mha",
        mechanism_options=options,
        mlp=model.layers[0].mlp is not None,
        positions=model.positions,
        max_len=model.max_len,
        causal=model.causal,
        input_dim=model.input_dim,
    )


def _reads(model: nn.Module) -> set[str]:
    """Names of the weights whose axis 1 is an input axis (linear layers)."""
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _layer_of(name: str, depth_from: int, depth_to: int) -> list[str]:
    """The source names a target parameter is built from when the depth changes (``layers.i.`` renumbered)."""
    if not name.startswith("layers.") or depth_from == depth_to:
        return [name]
    i, rest = name.split(".", 2)[1:]
    i = int(i)
    if depth_to < depth_from:  # coalesce: layer i <- layers 2i, 2i+1
        return [f"layers.{2 * i}.{rest}", f"layers.{2 * i + 1}.{rest}"]
    return [f"layers.{i // 2}.{rest}"]  # de-coalesce: layers 2i, 2i+1 <- layer i


@torch.no_grad()
def _map(source: TinyTransformer, target: TinyTransformer) -> TinyTransformer:
    src, reads = source.state_dict(), _reads(target)
    out = {}
    for name, t in target.state_dict().items():
        s = torch.stack([src[n] for n in _layer_of(name, len(source.layers), len(target.layers))]).mean(0)  # depth merged
        for axis in range(s.dim()):
            read = axis == 1 and name in reads
            if t.shape[axis] == 2 * s.shape[axis]:  # de-coalesce: two copies; a read axis halved
                s = torch.cat([s, s], axis) / (2 if read else 1)
            elif 2 * t.shape[axis] == s.shape[axis]:  # coalesce: a pair averaged, a read axis summed
                a, b = s.chunk(2, axis)
                s = a + b if read else (a + b) / 2
        out[name] = s.to(t.dtype)
    target.load_state_dict(out)
    return target


def coalesce(model: TinyTransformer, *, width: bool = True, depth: bool = False) -> TinyTransformer:
    """A new model with paired features/heads/neurons merged (``width``) and paired layers averaged (``depth``).

    Paper: 72, A multi-level framework for accelerating training transformer models (V-cycle).

    Example:
        >>> coalesce(TinyTransformer(5, dim=16, heads=4, layers=2), depth=True).layers.__len__()
        1
    """
    _check(model, width=width, depth=depth, shrink=True)
    dim, heads = (model.dim // 2, model.heads // 2) if width else (model.dim, model.heads)
    small = _like(model, dim=dim, heads=heads, layers=len(model.layers) // 2 if depth else len(model.layers))
    return _map(model, small)


def decoalesce(model: TinyTransformer, *, width: bool = True, depth: bool = False) -> TinyTransformer:
    """A new model with every feature/head/neuron split in two (``width``; same function) and every layer repeated (``depth``).

    Paper: 72, A multi-level framework for accelerating training transformer models (V-cycle).
    """
    _check(model, width=width, depth=depth, shrink=False)
    dim, heads = (model.dim * 2, model.heads * 2) if width else (model.dim, model.heads)
    large = _like(model, dim=dim, heads=heads, layers=len(model.layers) * 2 if depth else len(model.layers))
    return _map(model, large)


@torch.no_grad()
def interpolate(decoalesced: nn.Module, large: nn.Module, alpha: float = 0.5) -> nn.Module:
    """``decoalesced`` with every weight set to ``(1 − α) W_dec + α W_large``, in place.

    Paper: 72, A multi-level framework for accelerating training transformer models (α = 0.5).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1] (paper: 0.5), got alpha={alpha!r}")
    dec, big = decoalesced.state_dict(), large.state_dict()
    if dec.keys() != big.keys() or any(dec[k].shape != big[k].shape for k in dec):
        raise ValueError("interpolate needs two models of the same shapes: pass decoalesce(coalesce(large)) and large")
    decoalesced.load_state_dict(
        {k: torch.lerp(dec[k], big[k].to(dec[k].dtype), alpha) if dec[k].is_floating_point() else dec[k] for k in dec}
    )
    return decoalesced


def v_cycle(
    task, model: TinyTransformer, *, small_steps: int, steps: int, alpha: float = 0.5, width: bool = True, depth: bool = False, **options
):
    """The two-level V-cycle: train ``coalesce(model)`` for ``small_steps``, de-coalesce, interpolate with ``model``, train ``steps``.

    Paper: 72, A multi-level framework for accelerating training transformer models (V-cycle).

    Args:
        task: a :class:`attnlab.tasks.Task`.
        model: the large model at initialisation (left unchanged).
        small_steps: training steps of the coalesced model.
        steps: training steps of the large model after interpolation.
        alpha: interpolation weight of the large model's initial weights.
        width, depth: which pairs to coalesce.
        **options: passed to both :func:`attnlab.train.train` calls (``lr``, ``batch_size``, ...).

    Returns:
        ``(large, small_result, large_result)``: the trained large model and both runs' results.
    """
    small = coalesce(model, width=width, depth=depth)
    small_result = train(task, small, steps=small_steps, **options)
    large = interpolate(decoalesce(small, width=width, depth=depth), model, alpha)
    return large, small_result, train(task, large, steps=steps, **options)
