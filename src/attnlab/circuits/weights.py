"""Per-head attention weights ``W_Q, W_K, W_V, W_O`` of every supported architecture.

One convention for every model (TransformerLens's): a head reads the normalised residual
stream ``x [.., C]`` and writes ``z_h @ W_O[h]``::

    q_h = x @ W_Q[h] + b_Q[h]      # [.., D]   (before rotary embeddings and any q/k norm)
    k_h = x @ W_K[h] + b_K[h]      # [.., D]
    v_h = x @ W_V[h] + b_V[h]      # [.., D]
    attn_out = Σ_h z_h @ W_O[h] + b_O     # [.., C]  (z_h: the head's slice of ``attn.z``)

Grouped-query models (``Hkv < H``) have their key/value weights expanded to ``H`` heads (query
head ``h`` reads key/value head ``h // (H / Hkv)``, as ``repeat_kv`` does). Where ``attn.out``
is more than the projection (Gemma 2/3 normalise it with ``post_attention_layernorm``), ``W_O``
is still the projection's; :func:`attnlab.circuits.dla` handles the norm.

Supported: Hugging Face Llama, Qwen2, Mistral, Gemma 1-3 (``q_proj`` ... ``o_proj``, Linear
``[out, in]``), GPT-2 (``c_attn``/``c_proj``, Conv1D ``[in, out]``), BERT
(``attention.self.query`` ... ``attention.output.dense``), and ``TinyTransformer`` built with
the ``mha`` mechanism (σReparam layers give their effective weights).

    >>> from attnlab.models.tiny import TinyTransformer
    >>> w = head_weights(TinyTransformer(11, dim=16, heads=2, layers=2), 1)
    >>> w.W_Q.shape, w.W_O.shape, w.b_O.shape
    (torch.Size([2, 16, 8]), torch.Size([2, 8, 16]), torch.Size([16]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

__all__ = ["HeadWeights", "head_weights"]

_DECODERS = ("llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3_text")


@dataclass(frozen=True)
class HeadWeights:
    """One layer's attention weights split per head (detached; the parameters' dtype and device).

    Attributes:
        W_Q, W_K, W_V: ``[H, C, D]`` (key/value expanded to ``H`` heads under GQA).
        W_O: ``[H, D, C]``.
        b_Q, b_K, b_V: ``[H, D]`` (zeros where the model has no bias).
        b_O: ``[C]`` (zeros where the model has no bias).
        kv_heads: ``Hkv``, the model's own number of key/value heads.
    """

    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor
    b_Q: Tensor
    b_K: Tensor
    b_V: Tensor
    b_O: Tensor
    kv_heads: int

    @property
    def heads(self) -> int:
        return self.W_Q.shape[0]


def _linear(m: nn.Module) -> tuple[Tensor, Tensor | None]:
    """``(weight [out, in], bias [out] | None)`` of a Linear (σReparam: its effective weight) or a GPT-2 Conv1D."""
    from attnlab.mechanisms.mha import SigmaReparamLinear

    if isinstance(m, SigmaReparamLinear):
        return (m.gamma / m.sigma() * m.weight).detach(), m.bias
    if isinstance(m, nn.Linear):
        return m.weight.detach(), m.bias
    if type(m).__name__ == "Conv1D":  # transformers.pytorch_utils.Conv1D: y = x @ weight + bias, weight [in, out]
        return m.weight.detach().T, m.bias
    raise TypeError(f"expected a Linear or Conv1D projection, got {type(m).__name__}")


def _in_heads(w: Tensor, b: Tensor | None, heads: int, H: int) -> tuple[Tensor, Tensor]:
    """A projection ``[heads·D, C]`` as ``([H, C, D], [H, D])``, repeating key/value heads to ``H``."""
    W = rearrange(w, "(h d) c -> h c d", h=heads)  # [heads, C, D]
    B = rearrange(b.detach(), "(h d) -> h d", h=heads) if b is not None else W.new_zeros(heads, W.shape[-1])  # [heads, D]
    if heads != H:
        W, B = W.repeat_interleave(H // heads, dim=0), B.repeat_interleave(H // heads, dim=0)  # [H, C, D], [H, D]
    return W, B


def _out_heads(w: Tensor, b: Tensor | None, H: int) -> tuple[Tensor, Tensor]:
    """An output projection ``[C, H·D]`` as ``([H, D, C], [C])``."""
    W = rearrange(w, "c (h d) -> h d c", h=H)  # [H, D, C]
    return W, (b.detach() if b is not None else W.new_zeros(W.shape[-1]))


def _modules(model: nn.Module, layer: int) -> tuple[list[nn.Module], int, int]:
    """``([q, k, v, o] projections, H, Hkv)``; GPT-2's fused ``c_attn`` is returned as one module for q, k and v."""
    from attnlab.mechanisms.mha import MultiHeadAttention
    from attnlab.models import hf
    from attnlab.models.tiny import TinyTransformer

    if isinstance(model, TinyTransformer):
        n = len(model.layers)
        if not 0 <= layer < n:
            raise ValueError(f"layer {layer} is out of range: the model has layers 0..{n - 1}")
        attn = model.layers[layer].attn
        if not isinstance(attn, MultiHeadAttention):
            raise ValueError(f"per-head weights need the 'mha' mechanism, this TinyTransformer uses {model.mechanism!r}")
        return [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj], attn.heads, attn.kv_heads
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in (*_DECODERS, "gpt2", "bert"):
        raise TypeError(
            f"per-head weights are known for TinyTransformer and {', '.join((*_DECODERS, 'gpt2', 'bert'))}, got {type(model).__name__}"
        )
    blocks = hf.layers(model).blocks
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer} is out of range: the model has layers 0..{len(blocks) - 1}")
    block = blocks[layer]
    if kind == "gpt2":
        H = config.n_head
        return [block.attn.c_attn, block.attn.c_attn, block.attn.c_attn, block.attn.c_proj], H, H
    if kind == "bert":
        s, H = block.attention.self, config.num_attention_heads
        return [s.query, s.key, s.value, block.attention.output.dense], H, H
    a, H = block.self_attn, config.num_attention_heads
    return [a.q_proj, a.k_proj, a.v_proj, a.o_proj], H, config.num_key_value_heads or H


def head_weights(model: nn.Module, layer: int) -> HeadWeights:
    """Layer ``layer``'s ``W_Q, W_K, W_V [H, C, D]``, ``W_O [H, D, C]`` and biases (module docstring: the convention).

    Raises:
        TypeError: a model whose attention weights attnlab does not know.
        ValueError: a layer out of range; a TinyTransformer whose mechanism is not ``mha``.
    """
    (q, k, v, o), H, Hkv = _modules(model, layer)
    with torch.no_grad():
        if q is k:  # GPT-2: c_attn maps C -> 3C as [q | k | v]
            w, b = _linear(q)  # [3C, C], [3C]
            ws, bs = w.chunk(3, dim=0), (b.chunk(3) if b is not None else (None,) * 3)
            (W_Q, b_Q), (W_K, b_K), (W_V, b_V) = (_in_heads(ws[i], bs[i], H, H) for i in range(3))
        else:
            W_Q, b_Q = _in_heads(*_linear(q), H, H)
            W_K, b_K = _in_heads(*_linear(k), Hkv, H)
            W_V, b_V = _in_heads(*_linear(v), Hkv, H)
        W_O, b_O = _out_heads(*_linear(o), H)
    return HeadWeights(W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O, Hkv)
