"""Run diffusers models' attention through :func:`attnlab.core.attend`.

:func:`instrument` gives every ``Attention`` module of a diffusers model (a
``UNet2DConditionModel``, a DiT or PixArt transformer) an attnlab attention processor, so each
self- and cross-attention call is a site where probes observe and edits act, as in an LLM.
The processor computes what diffusers' default ``AttnProcessor2_0`` computes (norms, projections,
the attention mask, output projection, residual and rescaling), with the attention itself done by
``attend``.

Site names follow the module paths, shortened: ``down_blocks`` → ``down``, ``up_blocks`` → ``up``,
``mid_block`` → ``mid``, and the ``attentions`` / ``transformer_blocks`` levels dropped (a
transformer model's top-level ``transformer_blocks`` becomes ``blocks``):

- ``down_blocks.0.attentions.1.transformer_blocks.0.attn2`` → ``down.0.1.0.attn2``
- ``mid_block.attentions.0.transformer_blocks.0.attn1`` → ``mid.0.0.attn1``
- ``transformer_blocks.3.attn1`` (DiT, PixArt) → ``blocks.3.attn1``

``attn1`` is self-attention over the image tokens, ``attn2`` cross-attention from image tokens to
the text tokens, so ``"*.attn2"`` selects every cross-attention site. Each site carries its
``grid``: the ``(h, w)`` layout of its query tokens, from the model input's height and width, so
region masks given at the latent resolution are resized to every site.

    >>> unet = UNet2DConditionModel(...)                                   # doctest: +SKIP
    >>> instrument(unet)                                                   # doctest: +SKIP
    >>> [s.name for s in sites(unet)][:2]                                  # doctest: +SKIP
    ['down.0.0.0.attn1', 'down.0.0.0.attn2']
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from attnlab.core import Site, attend

__all__ = ["Processor", "instrument", "instrumented", "site_name", "sites"]

_RENAMES = {"down_blocks": "down", "up_blocks": "up", "mid_block": "mid"}
_DROPPED = ("attentions", "transformer_blocks")
_ROUTED = ("AttnProcessor2_0", "AttnProcessor")  # diffusers' default processors: the math the attnlab processor reproduces


def site_name(path: str) -> str:
    """The attnlab site name of a diffusers attention module path (see the module docstring)."""
    parts = path.split(".")
    if parts[0] == "transformer_blocks":
        return ".".join(["blocks", *parts[1:]])
    return ".".join(_RENAMES.get(p, p) for p in parts if p not in _DROPPED)


class _Input:
    """The height and width of the model's latest input ``sample`` ``[B, C, H, W]``, shared by its processors."""

    hw: tuple[int, int] | None = None


class Processor:
    """A diffusers attention processor that computes attention with :func:`attnlab.core.attend` at a site.

    The logits are scaled by the module's ``attn.scale``: ``1/sqrt(D)``, what ``AttnProcessor2_0``
    uses, unless the module was built with ``scale_qk=False`` (then 1, as ``AttnProcessor`` uses).

    Args:
        site: the site of this module (its name, layer index, heads; ``grid`` is set per call).
        shape: the model input's spatial size, recorded by :func:`instrument`'s pre-hook.
        backend: the attnlab backend (``"auto"`` picks per call).
    """

    def __init__(self, site: Site, shape: _Input, backend: str = "auto"):
        self.site, self.shape, self.backend = site, shape, backend

    def grid(self, tokens: int) -> tuple[int, int] | None:
        """The ``(h, w)`` layout of ``tokens`` query tokens: the input's ``(H, W)`` divided by a common factor, or None."""
        if self.shape.hw is None:
            return None
        H, W = self.shape.hw
        f = round(math.sqrt(H * W / tokens)) if tokens else 0
        if f < 1 or H % f or W % f or (H // f) * (W // f) != tokens:
            return None
        return H // f, W // f

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            B, C, h, w = hidden_states.shape
            hidden_states = hidden_states.view(B, C, h * w).transpose(1, 2)  # [B, T, C]
        B, T, _ = hidden_states.shape
        Tk = T if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, Tk, B)  # [B*H, Tq|1, Tk]
            attention_mask = attention_mask.view(B, attn.heads, -1, attention_mask.shape[-1])  # [B, H, Tq|1, Tk]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        D = key.shape[-1] // attn.heads
        q = query.view(B, -1, attn.heads, D).transpose(1, 2)  # [B, H, Tq, D]
        k = key.view(B, -1, attn.heads, D).transpose(1, 2)  # [B, H, Tk, D]
        v = value.view(B, -1, attn.heads, D).transpose(1, 2)  # [B, H, Tk, D]
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        site = dataclasses.replace(self.site, grid=self.grid(T))
        out = attend(q, k, v, mask=attention_mask, scale=attn.scale, site=site, backend=self.backend)  # [B, H, Tq, D]
        out = out.transpose(1, 2).reshape(B, -1, attn.heads * D).to(q.dtype)  # [B, Tq, C]
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(B, C, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from diffusers.models.attention_processor import Attention

    return [(path, m) for path, m in model.named_modules() if isinstance(m, Attention)]


def instrument(model: nn.Module, *, backend: str = "auto") -> nn.Module:
    """Route every attention module of a diffusers ``model`` through :func:`attnlab.core.attend` (in place).

    Raises:
        ValueError: the model has no diffusers ``Attention`` module, or one whose processor is
            not diffusers' default (``AttnProcessor2_0``/``AttnProcessor``): joint, added-KV or
            IP-adapter processors compute other math, which the attnlab processor would change.
    """
    found = _attention_modules(model)
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no diffusers Attention module to route: "
            "instrument a UNet2DConditionModel or a transformer (DiT, PixArt) whose attention is diffusers' Attention"
        )
    for path, m in found:
        kind = type(m.processor).__name__
        if kind not in (*_ROUTED, "Processor"):
            raise ValueError(
                f"{path} uses the processor {kind}, not diffusers' default ({' or '.join(_ROUTED)}): attnlab cannot route it "
                "without changing its math; reset it with model.set_default_attn_processor() if that is what you want"
            )
    shape = _Input()

    def record(module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        shape.hw = tuple(sample.shape[-2:]) if isinstance(sample, Tensor) and sample.dim() == 4 else None

    if getattr(model, "_attnlab_input_hook", None) is not None:
        model._attnlab_input_hook.remove()
    model._attnlab_input_hook = model.register_forward_pre_hook(record, with_kwargs=True)
    for i, (path, m) in enumerate(found):
        site = Site(name=site_name(path), layer=i, module_path=path, num_heads=m.heads, num_kv_heads=m.heads)
        m.set_processor(Processor(site, shape, backend))
    return model


def sites(model: nn.Module) -> list[Site]:
    """The attention sites of an instrumented diffusers model, in module order."""
    out = []
    for path, m in _attention_modules(model):
        if not isinstance(m.processor, Processor):
            raise ValueError(f"{path} is not routed through attnlab: call attnlab.models.diffusers.instrument(model) first")
        out.append(m.processor.site)
    return out


@contextmanager
def instrumented(model: nn.Module, *, backend: str = "auto") -> Iterator[nn.Module]:
    """:func:`instrument` for the duration of a block; the previous processors are restored after."""
    previous = {path: m.processor for path, m in _attention_modules(model)}
    instrument(model, backend=backend)
    try:
        yield model
    finally:
        for path, m in _attention_modules(model):
            m.set_processor(previous[path])
        model._attnlab_input_hook.remove()
        model._attnlab_input_hook = None
