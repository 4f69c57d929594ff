"""Direct logit attribution: each head's, MLP's and the embedding's direct share of the logit difference.

Paper: 57 (Circuit analysis at scale). The residual stream at the answer position is a sum of
terms (the embedding, every head's ``z_h @ W_O[h]``, each layer's output bias and MLP output);
with the final norm's scale frozen from the run (as TransformerLens does) the norm is linear in
them, so each term's logit difference ``norm(term) · (W_U[answer] − W_U[wrong])`` is defined and
the terms sum to the model's logit difference (before any final logit softcap) exactly. A
LayerNorm's centering is linear and applied to every term, its bias is a term of its own; an
RMSNorm only scales. Gemma 2/3's ``post_attention_layernorm`` is frozen the same way.

    >>> from attnlab.models.tiny import TinyTransformer
    >>> from attnlab.circuits.pairs import induction_pairs
    >>> model = TinyTransformer(20, dim=16, heads=2, layers=2).eval()
    >>> r = direct_logit_attribution(model, induction_pairs(3, length=5, vocab_size=20))
    >>> r.grid.shape, bool(abs(r.values.sum(1) - r.logit_diff).max() < 1e-5)
    ((2, 2), True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from attnlab.circuits import metrics as M
from attnlab.circuits.pairs import Pairs
from attnlab.circuits.weights import head_weights
from attnlab.models.graph import capture, hook_points

__all__ = ["DLAResult", "direct_logit_attribution", "frozen_norm"]

_RMS_ONE_PLUS = ("GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm")  # x · rsqrt(mean x² + eps) · (1 + w)
_RMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm")  # w · x · rsqrt(mean x² + eps)


def frozen_norm(norm: nn.Module, x: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor | None]:
    """``(f, bias)``: the norm as a linear map with its scale frozen at input ``x [.., C]``, and its bias (None if none).

    ``norm(x) = f(x) + bias``; ``f`` applies to any term ``[.., C]`` (or ``[.., K, C]``, a scale
    per row of ``x`` broadcast over ``K``) of ``x``.
    """
    x = x.double()
    name = type(norm).__name__
    if isinstance(norm, nn.LayerNorm):
        sigma = (x.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()  # [.., 1]
        w = norm.weight.double() if norm.weight is not None else 1.0
        b = norm.bias.double() if norm.bias is not None else None
        return lambda t: (t - t.mean(-1, keepdim=True)) / _rows(sigma, t) * w, b
    if name in _RMS or name in _RMS_ONE_PLUS:
        eps = norm.eps if name in _RMS_ONE_PLUS else norm.variance_epsilon
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # [.., 1]
        w = 1.0 + norm.weight.double() if name in _RMS_ONE_PLUS else norm.weight.double()
        return lambda t: t * _rows(r, t) * w, None
    raise TypeError(f"direct logit attribution knows LayerNorm and the RMSNorms of {', '.join(_RMS + _RMS_ONE_PLUS)}, got {name}")


def _rows(s: Tensor, t: Tensor) -> Tensor:
    """A per-row scale ``[.., 1]`` shaped to broadcast over a term with extra axes ``[.., K, C]``."""
    return s.reshape(*s.shape[:-1], *([1] * (t.dim() - s.dim())), 1)


@dataclass
class DLAResult:
    """Direct logit attribution at one position.

    Attributes:
        table: one row per term: ``term, kind, layer, head, value`` (the mean over pairs); kinds
            ``embed``, ``head``, ``attn_bias``, ``mlp``, ``norm_bias``, ``unembed_bias``.
        grid: ``[L, H]`` head terms (means over pairs).
        values: ``[N, terms]`` each pair's terms, in the table's order.
        logit_diff: ``[N]`` the model's logit difference (at the ``logits`` point, before any softcap).
    """

    table: pd.DataFrame
    grid: np.ndarray
    values: np.ndarray
    logit_diff: np.ndarray

    def per_layer(self) -> pd.DataFrame:
        """The terms summed per layer and kind (heads and output bias as ``attn``)."""
        t = self.table.assign(kind=self.table["kind"].replace({"head": "attn", "attn_bias": "attn"}))
        return t.groupby(["layer", "kind"], as_index=False, sort=False)["value"].sum()


def _ends(model: nn.Module) -> tuple[nn.Module, nn.Module, list]:
    """``(final norm, output layer, blocks)``; a model without them is refused."""
    from attnlab.models import hf
    from attnlab.models.tiny import TinyTransformer

    if isinstance(model, TinyTransformer):
        return model.norm, model.head, list(model.layers)
    norm, head = hf._ends(model)
    if norm is None or head is None:
        raise ValueError(f"{type(model).__name__} has no final norm and output layer: direct logit attribution needs a causal LM")
    return norm, head, hf.layers(model).blocks


@torch.no_grad()
def direct_logit_attribution(model: nn.Module, pairs: Pairs, *, run: str = "clean", position: int = -1, batch_size: int = 8) -> DLAResult:
    """Each term's direct share of ``logit[answer] − logit[wrong]`` at ``position`` of the ``run`` prompts (module docstring).

    Computed in float64 from the run's activations (the run itself in the model's dtype).

    Raises:
        ValueError: ``run`` not ``clean``/``corrupted``; a model without a final norm and output layer.
    """
    if run not in ("clean", "corrupted"):
        raise ValueError(f"run must be 'clean' or 'corrupted', got {run!r}")
    norm, unembed, blocks = _ends(model)
    L = len(blocks)
    post_norms = [
        getattr(b, "post_attention_layernorm", None) if "post_feedforward_layernorm" in dict(b.named_children()) else None for b in blocks
    ]
    W = [head_weights(model, i) for i in range(L)]
    has_mlp = f"layers.{L - 1}.mlp.out" in hook_points(model)
    W_U = unembed.weight.double()  # [V, C]
    b_U = unembed.bias.double() if unembed.bias is not None else None
    points = ["embed", "layers.*.attn.z", f"layers.{L - 1}.resid_post", "logits"] + (["layers.*.mlp.out"] if has_mlp else [])
    names: list[tuple[str, str, int, int]] = []
    values, diffs = [], []
    for clean, corrupted, answer, wrong in pairs.batches(batch_size):
        ids = clean if run == "clean" else corrupted
        with capture(model, points) as cache:
            M.logits_of(model, ids)
        u = W_U[answer] - W_U[wrong]  # [B, C]
        f, norm_bias = frozen_norm(norm, cache[f"layers.{L - 1}.resid_post"][:, position])
        terms: list[tuple[tuple[str, str, int, int], Tensor]] = [(("embed", "embed", -1, -1), cache["embed"][:, position].double())]
        for i, w in enumerate(W):
            z = cache[f"layers.{i}.attn.z"][:, position].double()  # [B, H, D]
            heads = torch.einsum("bhd,hdc->bhc", z, w.W_O.double())  # [B, H, C]
            bias = w.b_O.double().expand(len(z), -1)  # [B, C]
            if post_norms[i] is not None:  # Gemma 2/3: attn.out = post_attention_layernorm(o_proj(z))
                g, _ = frozen_norm(post_norms[i], heads.sum(1) + bias)
                heads, bias = g(heads), g(bias)
            terms += [((f"L{i}H{h}", "head", i, h), heads[:, h]) for h in range(w.heads)]
            terms.append(((f"L{i}.attn_bias", "attn_bias", i, -1), bias))
            if has_mlp:
                terms.append(((f"L{i}.mlp", "mlp", i, -1), cache[f"layers.{i}.mlp.out"][:, position].double()))
        row = [(f(t) * u).sum(-1) for _, t in terms]  # each [B]
        keys = [k for k, _ in terms]
        if norm_bias is not None:
            row.append(norm_bias @ u.T)
            keys.append(("final_norm.bias", "norm_bias", -1, -1))
        if b_U is not None:
            row.append(b_U[answer] - b_U[wrong])
            keys.append(("unembed.bias", "unembed_bias", -1, -1))
        names = keys
        values.append(torch.stack(row, 1))  # [B, terms]
        diffs.append(M.logit_diff(cache["logits"][:, position, None].double(), answer, wrong))
    vals = torch.cat(values).cpu().numpy()  # [N, terms]
    table = pd.DataFrame([{"term": t, "kind": k, "layer": i, "head": h} for t, k, i, h in names]).assign(value=vals.mean(0))
    heads = table[table["kind"] == "head"]
    grid = heads.pivot_table(index="layer", columns="head", values="value", sort=False).to_numpy()  # [L, H]
    return DLAResult(table, grid, vals, torch.cat(diffs).cpu().numpy())
