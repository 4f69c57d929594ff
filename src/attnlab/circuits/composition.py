"""Paper 45 (Talking heads): SVD of each head's OV circuit and Q/K/V composition scores between heads.

Column convention, as the paper writes it: a head reads the normalised residual stream ``x [C]``
with ``q = W_Q x``, ``k = W_K x``, ``v = W_V x`` and writes ``W_O z``; its circuits are
``W_QK = W_Qᵀ W_K [C, C]`` (the logit is ``x_qᵀ W_QK x_k``) and ``W_OV = W_O W_V [C, C]``. The input
norm's linear part is folded into ``W_Q, W_K, W_V`` (LayerNorm: gain and centring; RMSNorm: gain),
so the circuits act on the residual stream itself (up to the norm's scalar ``1/σ``). Rotary
embeddings and biases are left out, as in the paper.

How much head ``h2`` (a later layer) reads what head ``h1`` writes, Elhage et al.'s score::

    K-composition:  ‖W_QK^{h2}  W_OV^{h1}‖_F / (‖W_QK^{h2}‖_F ‖W_OV^{h1}‖_F)
    Q-composition:  ‖W_QK^{h2}ᵀ W_OV^{h1}‖_F / (‖W_QK^{h2}‖_F ‖W_OV^{h1}‖_F)
    V-composition:  ‖W_OV^{h2}  W_OV^{h1}‖_F / (‖W_OV^{h2}‖_F ‖W_OV^{h1}‖_F)

and per rank-1 component ``s_i u_i v_iᵀ`` of ``W_OV^{h1}`` (its SVD), the same score with the
component in place of ``W_OV^{h1}``: ``‖W_QK^{h2} u_i‖ / ‖W_QK^{h2}‖_F`` for K-composition.

Every product is computed through ``[D, D]`` matrices (``‖A M B‖_F² = tr(Mᵀ AᵀA M BBᵀ)``), never
a ``[C, C]`` one per pair of heads.

Shapes: ``L`` layers, ``H`` heads, ``C`` model width, ``D`` head dim.

Example:
    >>> from attnlab.models.tiny import TinyTransformer
    >>> model = TinyTransformer(11, dim=16, heads=2, layers=2, mlp=False)
    >>> composition_scores(model, "k").shape          # [L, H, L, H]: writer (l1, h1) -> reader (l2, h2)
    torch.Size([2, 2, 2, 2])
    >>> component_scores(model, "k").shape            # [L, H, D, L, H]: component i of the writer
    torch.Size([2, 2, 8, 2, 2])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from attnlab.circuits.weights import head_weights
from attnlab.edits.ov_component import RemoveOVComponent
from attnlab.heads import parse_heads

__all__ = ["KINDS", "FoldedWeights", "component_scores", "composition_scores", "folded_weights", "ov_component_edit", "ov_svd"]

KINDS = ("q", "k", "v")
_DECODERS = ("llama", "qwen2", "mistral", "gemma", "gemma2")


@dataclass(frozen=True)
class FoldedWeights:
    """Every layer's per-head weights, input norm folded in, row convention (``q = x @ W_Q[l, h]``).

    Attributes:
        W_Q, W_K, W_V: ``[L, H, C, D]`` (key/value heads repeated to ``H`` under GQA).
        W_O: ``[L, H, D, C]``.
    """

    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor


def _num_layers(model: nn.Module) -> int:
    from attnlab.models import hf
    from attnlab.models.tiny import TinyTransformer

    if isinstance(model, TinyTransformer):
        return len(model.layers)
    _supported(model)
    return len(hf.layers(model).blocks)


def _supported(model: nn.Module) -> str:
    """The model type of a Hugging Face model whose weights this module knows (else a TypeError naming them)."""
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in (*_DECODERS, "gpt2"):
        raise TypeError(
            f"composition knows the weights of TinyTransformer (mha) and {', '.join((*_DECODERS, 'gpt2'))} models, "
            f"got {type(model).__name__} ({kind})"
        )
    return kind


def _input_norm(model: nn.Module, layer: int) -> tuple[Tensor, bool]:
    """Layer ``layer``'s attention-input norm: its gain ``[C]`` and whether it centres (LayerNorm) first."""
    from attnlab.mechanisms.mha import MultiHeadAttention
    from attnlab.models import hf
    from attnlab.models.tiny import TinyTransformer

    if isinstance(model, TinyTransformer):
        block = model.layers[layer]
        if type(block.attn) is not MultiHeadAttention or type(block.attn.q_proj) is not nn.Linear:
            raise ValueError(f"composition needs a TinyTransformer built with the plain 'mha' mechanism, got {model.mechanism!r}")
        return block.norm1.weight, True
    kind = _supported(model)
    block = hf.layers(model).blocks[layer]
    if kind == "gpt2":
        return block.ln_1.weight, True
    w = block.input_layernorm.weight
    return (1 + w if kind.startswith("gemma") else w), False  # Gemma's RMSNorm scales by 1 + w


def _layer_weights(model: nn.Module, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One layer's ``W_Q, W_K, W_V [H, C, D]``, ``W_O [H, D, C]`` (:func:`~attnlab.circuits.weights.head_weights`) and its input norm's linear part ``N [C, C]``."""
    gain, centre = _input_norm(model, layer)  # refuses unknown models before reading weights
    w = head_weights(model, layer)
    C = w.W_O.shape[-1]
    N = torch.diag(gain.detach().float())  # [C, C]
    if centre:  # LayerNorm removes the mean first: x -> x (I - 11ᵀ/C)
        N = (torch.eye(C) - torch.full((C, C), 1.0 / C)) @ N
    return w.W_Q.float(), w.W_K.float(), w.W_V.float(), w.W_O.float(), N


@torch.no_grad()
def folded_weights(model: nn.Module) -> FoldedWeights:
    """Every layer's per-head weights (float32, CPU) with the input norm's gain (and LayerNorm's centring) folded in.

    Raises:
        TypeError: a model whose weights this module does not know (BERT is post-norm; Gemma 3
            normalises queries and keys per head, which no linear map folds).
        ValueError: a TinyTransformer whose mechanism is not the plain ``mha``.
    """
    parts = [_layer_weights(model, i) for i in range(_num_layers(model))]
    q, k, v = (torch.stack([p[j].cpu() for p in parts]) for j in range(3))  # [L, H, C, D]
    norms = torch.stack([p[4].cpu() for p in parts])  # [L, C, C]
    fold = lambda W: torch.einsum("lac,lhcd->lhad", norms, W)  # noqa: E731  N @ W per layer: [L, H, C, D]
    return FoldedWeights(fold(q), fold(k), fold(v), torch.stack([p[3].cpu() for p in parts]))


def _weights(model_or_weights) -> FoldedWeights:
    return model_or_weights if isinstance(model_or_weights, FoldedWeights) else folded_weights(model_or_weights)


def ov_svd(weights) -> tuple[Tensor, Tensor, Tensor]:
    """The SVD of every head's ``W_OV = W_O W_V`` (column convention): ``U [L, H, C, D]``, ``S [L, H, D]``, ``V [L, H, C, D]``.

    ``W_OV = Σ_i S[..., i] U[..., :, i] V[..., :, i]ᵀ``; computed from the QR factors of ``W_Oᵀ``
    and ``W_V`` (``W_OV = Q_o (R_o R_vᵀ) Q_vᵀ``), so only ``[D, D]`` matrices are decomposed.
    ``weights``: a model or its :class:`FoldedWeights`.
    """
    w = _weights(weights)
    Qo, Ro = torch.linalg.qr(w.W_O.transpose(-1, -2))  # W_Oᵀ [L, H, C, D] = Qo Ro
    Qv, Rv = torch.linalg.qr(w.W_V)  # W_V [L, H, C, D] = Qv Rv, so W_V-as-[D, C] = Rvᵀ Qvᵀ
    Uc, S, Vch = torch.linalg.svd(Ro @ Rv.transpose(-1, -2))  # core [L, H, D, D]
    return Qo @ Uc, S, Qv @ Vch.transpose(-1, -2)  # [L, H, C, D], [L, H, D], [L, H, C, D]


def _reader(w: FoldedWeights, kind: str) -> tuple[Tensor, Tensor]:
    """The reading head's ``(A, R)`` ``[L, H, C, D]``: its circuit is ``A Rᵀ`` and it reads the writer through ``Rᵀ``.

    K: ``W_QK = W_Q W_Kᵀ``-as-rows (keys read); Q: ``W_QKᵀ`` (queries read); V: ``W_OV = W_Oᵀ W_Vᵀ`` (values read).
    """
    if kind not in KINDS:
        raise ValueError(f"composition kind must be one of {', '.join(KINDS)} (query, key or value composition), got {kind!r}")
    return {"k": (w.W_Q, w.W_K), "q": (w.W_K, w.W_Q), "v": (w.W_O.transpose(-1, -2), w.W_V)}[kind]


def _gram(X: Tensor) -> Tensor:
    return X.transpose(-1, -2) @ X  # [.., D, D]


def composition_scores(weights, kind: str = "k") -> Tensor:
    """Composition of every earlier head's ``W_OV`` with every later head's circuit: ``[L, H, L, H]``.

    ``out[l1, h1, l2, h2]`` is how much head ``h2`` of layer ``l2`` reads, through its keys
    (``"k"``), queries (``"q"``) or values (``"v"``), what head ``h1`` of layer ``l1`` writes (module
    docstring). Pairs with ``l2 <= l1`` are NaN. ``weights``: a model or its :class:`FoldedWeights`.

    Paper: 45 (Talking heads), after Elhage et al. (2021).
    """
    w = _weights(weights)
    A, R = _reader(w, kind)
    L, H = A.shape[:2]
    GA, GR = _gram(A), _gram(R)  # [L, H, D, D]
    reader_norm = torch.einsum("lhij,lhji->lh", GA, GR).clamp_min(0).sqrt()  # ‖A Rᵀ‖_F [L, H]
    GB = _gram(w.W_V)  # writer's B = W_Vᵀ: B Bᵀ = W_Vᵀ W_V [L, H, D, D]
    writer_norm = torch.einsum("lhij,lhji->lh", w.W_O @ w.W_O.transpose(-1, -2), GB).clamp_min(0).sqrt()  # ‖W_O W_V‖_F
    out = torch.full((L, H, L, H), float("nan"))
    for l1 in range(L - 1):
        M = torch.einsum("lacd,hec->lahde", R[l1 + 1 :], w.W_O[l1])  # Rᵀ W_Oᵀ of each reader, writer pair [L2, H2, H1, D, D]
        N = GA[l1 + 1 :, :, None] @ M @ GB[l1][None, None]  # GA M GB [L2, H2, H1, D, D]
        sq = (M * N).sum((-1, -2))  # tr(Mᵀ GA M GB) [L2, H2, H1]
        score = sq.clamp_min(0).sqrt() / (reader_norm[l1 + 1 :, :, None] * writer_norm[l1][None, None, :])
        out[l1, :, l1 + 1 :] = rearrange(score, "l a h -> h l a")
    return out


def component_scores(weights, kind: str = "k") -> Tensor:
    """Composition of each rank-1 component of every earlier head's ``W_OV`` with every later head: ``[L, H, D, L, H]``.

    ``out[l1, h1, i, l2, h2] = ‖X u_i‖ / ‖X‖_F`` where ``u_i`` is the ``i``-th left singular vector of
    ``W_OV^{l1,h1}`` (:func:`ov_svd`, by decreasing singular value) and ``X`` the reader's
    ``W_QK``, ``W_QKᵀ`` or ``W_OV`` (``kind``); that is ``‖X s_i u_i v_iᵀ‖_F / (‖X‖_F ‖s_i u_i v_iᵀ‖_F)``.
    Pairs with ``l2 <= l1`` are NaN.

    Paper: 45 (Talking heads: the composition score per OV component).
    """
    w = _weights(weights)
    A, R = _reader(w, kind)
    U, _, _ = ov_svd(w)  # [L, H, C, D]
    L, H, _, D = U.shape
    GA = _gram(A)
    reader_norm = torch.einsum("lhij,lhji->lh", GA, _gram(R)).clamp_min(0).sqrt()  # [L, H]
    out = torch.full((L, H, D, L, H), float("nan"))
    for l1 in range(L - 1):
        Ru = torch.einsum("lacd,hci->lahid", R[l1 + 1 :], U[l1])  # Rᵀ u_i [L2, H2, H1, D(i), D]
        sq = ((Ru @ GA[l1 + 1 :, :, None]) * Ru).sum(-1)  # ‖A Rᵀ u_i‖² = (Rᵀu)ᵀ GA (Rᵀu) [L2, H2, H1, D]
        out[l1, :, :, l1 + 1 :] = rearrange(sq.clamp_min(0).sqrt() / reader_norm[l1 + 1 :, :, None, None], "l a h i -> h i l a")
    return out


def ov_component_edit(weights, head, component: int) -> RemoveOVComponent:
    """The edit that removes component ``component`` (0: the largest) of ``head``'s ``W_OV`` (:class:`RemoveOVComponent`).

    ``head``: ``"L0H1"`` or ``(0, 1)``. ``weights``: a model or its :class:`FoldedWeights`.

    Paper: 45 (Talking heads: removing the composing component breaks induction).
    """
    w = _weights(weights)
    (layer, h), *more = parse_heads(head)
    L, H, _, D = w.W_V.shape
    if more or not (0 <= layer < L and 0 <= h < H):
        raise ValueError(f"name one head of the model (layers 0..{L - 1}, heads 0..{H - 1}), e.g. 'L0H1', got {head!r}")
    if not 0 <= component < D:
        raise ValueError(f"component is an index into the head's {D} singular values (0 = largest), got {component=}")
    U, _, _ = ov_svd(w)
    return RemoveOVComponent(f"L{layer}H{h}", direction=U[layer, h, :, component], W_O=w.W_O[layer, h])
