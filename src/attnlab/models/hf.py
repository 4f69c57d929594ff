"""Run Hugging Face models' attention through :func:`attnlab.core.attend`.

:func:`instrument` registers attnlab as an attention implementation with transformers'
``AttentionInterface`` (and a mask function with ``AttentionMaskInterface``: without it a custom
attention function silently receives ``attention_mask=None`` and padding breaks) and switches
the model to it. From then on every attention call of the model is a site ``layers.{i}.attn``
where probes observe and edits act, exactly as in attnlab's own modules.

Masks stay predicates: the model's causal, sliding-window, bidirectional and padding masks become
``attnlab.core.masks`` objects instead of ``T × T`` tensors, so a 32k-token forward never builds
one.

    >>> model, tok = load("smollm2-135m")                         # doctest: +SKIP
    >>> instrument(model)                                         # doctest: +SKIP
    >>> with attnlab.attach(probes=[Entropy()]): model(**tok("Hello", return_tensors="pt"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.core import Edit, Site, attached, attend, hooks
from attnlab.core import masks as M
from attnlab.models.hf_load import EMBEDDED, input_device, load

__all__ = [
    "EMBEDDED",
    "SUPPORTED",
    "Layers",
    "attention_forward",
    "hook_points",
    "input_device",
    "instrument",
    "instrumented",
    "layers",
    "load",
    "mask_function",
    "sites",
]

NAME = "attnlab"
SUPPORTED = ("llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3_text", "gpt2", "bert")
_BACKEND: dict[int, str] = {}  # id(model config) -> attnlab backend for that model
_CALLED: set[str] = set()  # sites whose attention ran through attnlab (checked by instrument)


# --- masks ------------------------------------------------------------------------------------


def _shifted(mask: M.Mask, q_offset: int, kv_offset: int) -> M.Mask:
    """``mask`` evaluated at ``q_idx + q_offset, kv_idx + kv_offset`` (a band stays a band)."""
    if q_offset == kv_offset == 0:
        return mask
    if isinstance(mask, M._Band):
        d = q_offset - kv_offset  # q - kv in the shifted frame = (q - kv) + d
        return M._Band(mask.lo - d, mask.hi - d, f"{mask.name}@{q_offset},{kv_offset}")
    fn = mask.fn
    return M.Mask(lambda b, h, q, kv: fn(b, h, q + q_offset, kv + kv_offset), f"{mask.name}@{q_offset},{kv_offset}", batched=mask.batched)


def _key_padding(padding: Tensor) -> M.Mask:
    """Keys whose padding flag is True, per sequence: ``padding`` is ``[B, Tk]`` bool."""
    return M.Mask(lambda b, h, q, kv: padding[b, kv], "key_padding", batched=True)


def mask_function(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: Tensor | None = None,
    local_size: int | None = None,
    **kwargs,
) -> M.Mask:
    """transformers' mask interface for attnlab: the model's mask as an attnlab predicate.

    Causal, sliding-window and bidirectional masks become exact bands (tile plans are
    analytic); other mask functions are wrapped as predicates; padding becomes a per-sequence
    key mask.
    """
    from transformers import masking_utils as mu

    if mask_function is mu.causal_mask_function:
        base = M.causal if local_size is None else M.sliding_window(local_size - 1)
    elif mask_function is mu.bidirectional_mask_function:
        base = M.full
    elif local_size is not None and _is_sliding_causal(mask_function, local_size):
        base = M.sliding_window(local_size - 1)
    else:
        base = M.Mask(mask_function, "hf_mask_function", batched=True)
    mask = _shifted(base, q_offset, kv_offset)
    if attention_mask is not None:
        padding = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset)
        if padding is not None and not bool(padding.all()):
            mask = mask & _key_padding(padding.bool())
    return mask


def _is_sliding_causal(fn, window: int) -> bool:
    """Whether ``fn`` is transformers' sliding-window causal mask of this window (checked on a grid)."""
    n = 2 * window + 3
    q = torch.arange(n).view(-1, 1)
    kv = torch.arange(n).view(1, -1)
    try:
        got = fn(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), q, kv)
    except Exception:  # a mask function that needs other index shapes: treat as generic
        return False
    return torch.equal(got.expand(n, n), (kv <= q) & (kv > q - window))


# --- the attention function -------------------------------------------------------------------


class _Softcap(Edit):
    """Gemma 2's logit soft-capping, ``c · tanh(score / c)``, as a logit stage of the model's own math."""

    stage = "logits"

    def __init__(self, cap: float):
        self.cap = cap

    def at(self, site):
        cap = self.cap
        return lambda s, b, h, q, kv: cap * torch.tanh(s / cap)


def attention_forward(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask, dropout: float = 0.0, scaling=None, **kwargs
):
    """transformers' attention-function contract, computed by :func:`attnlab.core.attend`.

    Returns ``(out [B, Tq, H, Dv], None)``: attention weights are for probes, not returned.
    """
    if dropout and module.training:
        raise ValueError("attnlab's attention has no dropout: call model.eval() (attnlab instruments models for analysis, not training)")
    for unsupported in ("s_aux", "sinks", "position_bias"):
        if kwargs.get(unsupported) is not None:
            raise ValueError(f"attnlab does not support attention with {unsupported!r} yet; supported model types: {', '.join(SUPPORTED)}")
    site = getattr(module, "attnlab_site", None) or Site(name=type(module).__name__, num_heads=query.shape[1], num_kv_heads=key.shape[1])
    _CALLED.add(site.name)
    Tq, Tk = query.shape[2], key.shape[2]
    mask = attention_mask
    if mask is None:
        causal = kwargs.get("is_causal")
        causal = getattr(module, "is_causal", True) if causal is None else causal
        mask = _shifted(M.causal, Tk - Tq, 0) if causal and Tq > 1 else None
    edits = (_Softcap(kwargs["softcap"]),) if kwargs.get("softcap") else ()
    backend = _BACKEND.get(id(getattr(module, "config", None)), "auto")
    # with a KV cache the queries are the last Tq positions: edits see absolute positions
    out = attend(query, key, value, mask=mask, scale=scaling, site=site, backend=backend, edits=edits, q_offset=Tk - Tq)  # [B, H, Tq, Dv]
    return out.transpose(1, 2).contiguous(), None


# --- model structure --------------------------------------------------------------------------


@dataclass
class Layers:
    """Where a model keeps its layers and each layer's attention sublayer.

    Attributes:
        blocks: the transformer blocks, in order (``model.model.layers``, ``transformer.h``, ...).
        contrib: per block, the module whose output is the attention sublayer's contribution to
            the residual stream (``self_attn``, ``attn``; for BERT, the output projection before
            the residual and LayerNorm).
        paths: module paths of the attention modules that receive the attention call.
    """

    blocks: list[nn.Module]
    contrib: list[nn.Module]
    paths: list[str]


_BLOCK_PATHS = ("model.layers", "layers", "transformer.h", "h", "encoder.layer", "bert.encoder.layer", "model.language_model.layers")
_ATTN_NAMES = ("self_attn", "attn", "attention")


def layers(model: nn.Module) -> Layers:
    """The blocks and attention sublayers of a supported model (ValueError otherwise)."""
    for path in _BLOCK_PATHS:
        blocks = model.get_submodule(path) if _has(model, path) else None
        if isinstance(blocks, nn.ModuleList) and len(blocks):
            name = next((n for n in _ATTN_NAMES if hasattr(blocks[0], n)), None)
            if name is None:
                break
            attn = [getattr(b, name) for b in blocks]
            paths = [f"{path}.{i}.{name}" + (".self" if hasattr(a, "self") else "") for i, a in enumerate(attn)]
            contrib = [a.output.dense if hasattr(a, "output") and hasattr(a.output, "dense") else a for a in attn]
            return Layers(list(blocks), contrib, paths)
    raise ValueError(f"cannot find the transformer layers of {type(model).__name__}; supported model types: {', '.join(SUPPORTED)}")


def _has(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def sites(model: nn.Module) -> list[Site]:
    """The attention sites of an instrumented model, in layer order."""
    return [model.get_submodule(p).attnlab_site for p in layers(model).paths]


def instrument(model: nn.Module, *, backend: str = "auto") -> nn.Module:
    """Route every attention call of ``model`` through :func:`attnlab.core.attend` (in place).

    Each attention module gets a site ``layers.{i}.attn`` with its head counts. Raises a
    ``ValueError`` naming the supported model types when the model's attention does not go
    through transformers' ``AttentionInterface``.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    can_set = getattr(model, "_can_set_attn_implementation", lambda: False)
    if not can_set():
        raise ValueError(
            f"{type(model).__name__} ({model_type}) does not route attention through transformers' AttentionInterface; supported: {', '.join(SUPPORTED)}"
        )
    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, mask_function)
    found = layers(model)
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    for i, path in enumerate(found.paths):
        module = model.get_submodule(path)
        module.attnlab_site = Site(name=f"layers.{i}.attn", layer=i, module_path=path, num_heads=heads, num_kv_heads=kv_heads)
    previous = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    tower = getattr(getattr(model, "model", model), "vision_tower", None)
    if isinstance(tower, nn.Module):  # a vision-language model: only its language model is routed (attnlab.models.vlm)
        tower.set_attn_implementation("eager")
    for m in model.modules():
        if hasattr(m, "config"):
            _BACKEND[id(m.config)] = backend
    _check_routed(model, found, previous, model_type)
    if not getattr(model, "_attnlab_hooks", None):
        model._attnlab_hooks = _hook_graph(model, found)
    return model


def _check_routed(model: nn.Module, found: Layers, previous: str, model_type: str) -> None:
    """Run two tokens through the model and make sure every attention site went through attnlab."""
    _CALLED.clear()
    with torch.no_grad():
        model(input_ids=torch.tensor([[0, 1]], device=input_device(model)))
    missing = [p for p in found.paths if model.get_submodule(p).attnlab_site.name not in _CALLED]
    if missing:
        model.set_attn_implementation(previous)
        raise ValueError(
            f"{type(model).__name__} ({model_type}) does not send its attention through transformers' AttentionInterface "
            f"(e.g. {missing[0]} did not); supported: {', '.join(SUPPORTED)}"
        )


@dataclass
class _Parts:
    """The modules of a block whose outputs are hook points.

    Attributes:
        attn_out: its output is the attention sublayer's contribution to the residual stream
            (``attn.out``): the attention module, Gemma 2/3's ``post_attention_layernorm``,
            BERT's output projection before the residual and LayerNorm.
        mid: its output is ``resid_mid`` in a post-norm block (BERT's ``attention``); None in a
            pre-norm block, where the model keeps ``resid_pre + attn.out`` to itself.
        mlp_out: its output is the MLP's contribution (``mlp.out``).
    """

    attn_out: nn.Module
    mid: nn.Module | None
    mlp_out: nn.Module


def _parts(block: nn.Module, contrib: nn.Module) -> _Parts:
    children = dict(block.named_children())
    if "post_feedforward_layernorm" in children:  # Gemma 2/3: each sublayer's output is normalised before the residual
        return _Parts(children["post_attention_layernorm"], None, children["post_feedforward_layernorm"])
    if "intermediate" in children:  # BERT: post-norm, LayerNorm(x + sublayer) after each sublayer
        return _Parts(contrib, children["attention"], children["output"].dense)
    return _Parts(contrib, None, children["mlp"])


def _ends(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """The final norm and the output layer (None for an encoder without them)."""
    base = dict(model.base_model.named_children())
    norm = base.get("norm") or base.get("ln_f")
    return norm, model.get_output_embeddings()


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replaced(output, new: Tensor):
    return (new, *output[1:]) if isinstance(output, tuple) else new


def hook_points(model: nn.Module) -> list[str]:
    """The hook points of an instrumented model, in the order a forward pass reaches them (docs: "Hook points")."""
    found = layers(model)
    norm, head = _ends(model)
    points = ["embed"]
    for i, path in enumerate(found.paths):
        site = model.get_submodule(path).attnlab_site.name
        points += [f"layers.{i}.resid_pre", *(f"{site}.{p}" for p in ("q", "k", "v", "probs", "z"))]
        points += [f"layers.{i}.{p}" for p in ("attn.out", "resid_mid", "mlp.out", "resid_post")]
    return points + (["final_norm"] if norm is not None else []) + (["logits"] if head is not None else [])


def _hook_graph(model: nn.Module, found: Layers) -> list:
    """Forward hooks that pass the model's activations through the hook points and tell attached probes.

    Each hook returns at once when no tap is active and no probe is attached: a block's input is
    kept only while its block runs, and only then.
    """
    inputs: dict[int, Tensor] = {}  # block inputs, while their block runs
    handles = []

    def output_point(point: str):
        def hook(module, args, output):
            if not hooks.active():
                return None
            out = _first(output)
            new = hooks.emit(point, out)
            return None if new is out else _replaced(output, new)

        return hook

    for i, (block, contrib) in enumerate(zip(found.blocks, found.contrib)):
        parts = _parts(block, contrib)

        def pre(module, args, kwargs, i=i):
            if not hooks.keeps_input():
                inputs.pop(i, None)  # left by a pass that raised
                return None
            x = args[0] if args else kwargs["hidden_states"]
            new = inputs[i] = hooks.block_in(i, x)  # [B, T, C]
            if new is x:
                return None
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

        def attn_out(module, args, output, i=i, pre_norm=parts.mid is None):
            x_in = inputs.get(i)
            if x_in is None and not attached()[1]:  # nothing to tell, replace or edit
                return None
            a = _first(output)  # [B, T, C]
            new = hooks.sublayer(i, x_in, a)
            if pre_norm:
                new = hooks.pre_norm_mid(i, x_in, new)
            return None if new is a else _replaced(output, new)

        def post(module, args, kwargs, output, i=i):
            x_in = inputs.pop(i, None)
            if x_in is None:
                return None
            out = _first(output)
            new = hooks.block_out(i, x_in, out)
            return None if new is out else _replaced(output, new)

        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.register_forward_hook(post, with_kwargs=True))
        handles.append(parts.attn_out.register_forward_hook(attn_out))
        if parts.mid is not None:
            handles.append(parts.mid.register_forward_hook(output_point(f"layers.{i}.resid_mid")))
        handles.append(parts.mlp_out.register_forward_hook(output_point(f"layers.{i}.mlp.out")))
    norm, head = _ends(model)
    for module, point in ((norm, "final_norm"), (head, "logits")):
        if module is not None:
            handles.append(module.register_forward_hook(output_point(point)))
    return handles


@contextmanager
def instrumented(model: nn.Module, *, backend: str = "auto") -> Iterator[nn.Module]:
    """:func:`instrument` for the duration of a block; the previous attention implementation is restored after."""
    previous = model.config._attn_implementation
    instrument(model, backend=backend)
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)
