"""A model's hook graph: list its hook points, capture activations, replace them.

The same addresses on every supported model: Hugging Face Llama, Qwen2, Mistral, Gemma 1-3,
GPT-2 and BERT (instrumented on first use), and :class:`attnlab.models.tiny.TinyTransformer`
(docs: "Hook points" gives each point's shape and place in the block):

    >>> import torch
    >>> import attnlab
    >>> from attnlab.models.tiny import TinyTransformer
    >>> model = TinyTransformer(11, dim=16, heads=2, layers=2)
    >>> ids = torch.randint(0, 11, (1, 6))
    >>> with attnlab.capture(model, ["layers.*.resid_post", "layers.0.attn.z"]) as cache:
    ...     logits = model(ids)
    >>> cache["layers.1.resid_post"].shape, cache["layers.0.attn.z"].shape
    (torch.Size([1, 6, 16]), torch.Size([1, 6, 2, 8]))
    >>> zero_head_1 = lambda z, point: torch.cat([z[:, :, :1], torch.zeros_like(z[:, :, 1:])], dim=2)
    >>> with attnlab.intervene(model, {"layers.0.attn.z": zero_head_1}):
    ...     edited = model(ids)
    >>> edited.shape
    torch.Size([1, 6, 11])

Captures and interventions are temporary (gone when the block exits), nest, and cost nothing
when unused. Each captured point holds its tensor from the last time a pass reached it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

from torch import Tensor, nn

from attnlab.core import hooks

__all__ = ["Cache", "capture", "hook_points", "intervene"]


def hook_points(model: nn.Module) -> list[str]:
    """Every hook point of ``model``, in the order a forward pass reaches them.

    A Hugging Face model is instrumented first (:func:`attnlab.models.hf.instrument`), if it
    was not already.
    """
    from attnlab.models.tiny import TinyTransformer

    if isinstance(model, TinyTransformer):
        return model.hook_points()
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - depends on the install
        PreTrainedModel = ()
    if isinstance(model, PreTrainedModel):
        from attnlab.models import hf

        if model.config._attn_implementation != hf.NAME:
            hf.instrument(model)
        return hf.hook_points(model)
    raise TypeError(
        f"attnlab knows the hook points of TinyTransformer and Hugging Face models ({', '.join(_hf_supported())}), got {type(model).__name__}"
    )


def _hf_supported() -> tuple[str, ...]:
    from attnlab.models.hf import SUPPORTED

    return SUPPORTED


def _summary(points: list[str]) -> str:
    """The points with layer numbers folded: ``embed, layers.{0..29}.resid_pre, ...``."""
    layers = sorted({int(m) for p in points for m in re.findall(r"^layers\.(\d+)\.", p)})
    span = f"{{{layers[0]}..{layers[-1]}}}" if layers else ""
    return ", ".join(dict.fromkeys(re.sub(r"^layers\.\d+\.", f"layers.{span}.", p) for p in points))


def _resolve(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """The points the names or globs select, in graph order; an unknown one is a ValueError naming the valid points."""
    points = hook_points(model)
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"a hook point is a name or a glob (e.g. 'layers.*.attn.z'), got {pattern!r}")
        hit = fnmatch.filter(points, pattern)
        if not hit:
            raise ValueError(f"unknown hook point {pattern!r} for {type(model).__name__}: valid points are {_summary(points)}")
        chosen.update(hit)
    return [p for p in points if p in chosen]


class Cache(dict):
    """Captured activations by hook point (detached tensors); a point the pass never reached says so."""

    def __missing__(self, point: str):
        reached = ", ".join(self) or "none"
        raise KeyError(f"{point!r} was not captured in this pass: captured points are {reached}")


@contextmanager
def capture(model: nn.Module, points: str | Iterable[str]) -> Iterator[Cache]:
    """Keep the activations at ``points`` (names or globs) of every pass inside the block.

    ``attn.probs`` is materialised ``[B, H, Tq, Tk]`` (float32) only for the sites captured;
    every other point is stored as the model computes it, detached.

    Raises:
        ValueError: a name or glob that matches no point (the message lists the valid ones).
    """
    cache = Cache()

    def keep(x: Tensor, point: str) -> Tensor:
        cache[point] = x.detach()
        return x

    with hooks.tapping(hooks.Tap(_resolve(model, points), keep, reads=True)):
        yield cache


Replacement = Tensor | Callable[[Tensor, str], Tensor]


@contextmanager
def intervene(model: nn.Module, replacements: Mapping[str, Replacement]) -> Iterator[None]:
    """Replace activations inside the block: ``{point: tensor}`` or ``{point: fn(tensor, point) -> tensor}``.

    A point may be a glob (the same replacement at every point it matches). A tensor must have
    the activation's shape exactly; it is cast to the activation's dtype and device. At
    ``attn.probs`` a tensor is the whole ``[B, H, Tq, Tk]`` matrix and a function receives chunks
    of whole rows ``[B, H, Tc, Ts]`` (the keys a chunk's rows can see). Per-head and
    per-position edits are ordinary tensor operations on ``attn.z`` ``[B, T, H, D]`` and the
    residual points ``[B, T, C]``.

    Raises:
        ValueError: an unknown point; in the pass, a tensor or a function's result whose shape is
            not the activation's (the message gives both).
    """
    if not isinstance(replacements, Mapping):
        raise TypeError(f"intervene takes a mapping {{point: tensor or fn(tensor, point)}}, got {type(replacements).__name__}")
    taps = []
    for pattern, value in replacements.items():
        if not isinstance(value, Tensor) and not callable(value):
            raise TypeError(f"intervene: the replacement for {pattern!r} must be a tensor or fn(tensor, point), got {type(value).__name__}")
        points = _resolve(model, [pattern])
        whole = [p for p in points if not p.endswith(".probs")]
        rows = [p for p in points if p.endswith(".probs")]
        if whole:
            taps.append(hooks.Tap(whole, _replace(value)))
        if rows:
            taps.append(hooks.Tap(rows, lambda x, point: x, rows=_replace_rows(value)))
    with hooks.tapping(*taps):
        yield


def _checked(new, x: Tensor, point: str, what: str) -> Tensor:
    if not isinstance(new, Tensor):
        raise TypeError(f"intervene: {what} for {point} must be a tensor, got {type(new).__name__}")
    if new.shape != x.shape:
        raise ValueError(f"intervene: {point} has shape {list(x.shape)} in this pass, {what} has shape {list(new.shape)}: they must match")
    return new.to(dtype=x.dtype, device=x.device)


def _replace(value: Replacement) -> Callable[[Tensor, str], Tensor]:
    if isinstance(value, Tensor):
        return lambda x, point: _checked(value, x, point, "the tensor given")
    return lambda x, point: _keep_identity(value(x, point), x, point)


def _keep_identity(new, x: Tensor, point: str) -> Tensor:
    return x if new is x else _checked(new, x, point, "the function's result")


def _replace_rows(value: Replacement) -> Callable:
    """A probability edit for ``attn.probs``: rows of a whole replacement matrix, or a function on each chunk."""
    if not isinstance(value, Tensor):
        return lambda probs, point, q_idx, kv_idx, shape: _keep_identity(value(probs, point), probs, point)

    def rows(probs: Tensor, point: str, q_idx: Tensor, kv_idx: Tensor, shape: tuple[int, ...]) -> Tensor:
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"intervene: {point} has shape {list(shape)} in this pass, the tensor given has shape {list(value.shape)}: they must match"
            )
        v = value.to(dtype=probs.dtype, device=probs.device)
        return v[:, :, q_idx.to(v.device)][..., kv_idx.to(v.device)]  # [B, H, Tc, Ts]

    return rows
