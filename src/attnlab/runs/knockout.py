"""Paper 49 (Cross-modal information flow): attention knockout over a sliding window of layers.

:func:`scan` knocks out every edge from a target group of tokens to a source group
(:class:`attnlab.edits.knockout.Knockout`) in a window of ``k`` layers (``k = 9``, the paper's
choice after Geva et al. 2023) around each layer in turn, and reports the relative change of the
answer's probability at the last position, ``(p_knock − p) / p``: where information flows from
the source to the target.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from attnlab.core import attach
from attnlab.core.site import Edit
from attnlab.core.spans import check_span
from attnlab.edits.knockout import Knockout, window_layers
from attnlab.models.hf_load import input_device

__all__ = ["scan"]


def _answer_prob(model, input_ids: Tensor, answer: int, edits: Sequence[Edit], extra: dict) -> float:
    with torch.no_grad(), attach(edits=list(edits)):
        out = model(input_ids=input_ids.to(input_device(model)), **extra)
    logits = getattr(out, "logits", out)  # [B, T, V]
    return float(torch.softmax(logits[0, -1].double(), -1)[answer])


def scan(
    model, input_ids: Tensor, answer: int, target, source, *, window: int = 9, n_layers: int | None = None, inputs: dict | None = None
) -> list[dict]:
    """Knock out target ← source in a sliding window of layers; the answer's probability per window.

    Args:
        model: called as ``model(input_ids=ids)``; returns logits ``[B, T, V]`` or an object with
            ``.logits`` (an instrumented HF model, or any module whose attention runs through
            :func:`attnlab.attend` with sites ``layers.{i}.attn``).
        input_ids: ``[1, T]``.
        answer: the token id whose probability at the last position is measured.
        target, source: the groups (see :func:`attnlab.edits.knockout.token_group`), e.g. a
            vision-language input's spans (``source=s.image``, ``target=s["token 20..20"]``).
        window: layers per window.
        n_layers: number of layers (default: read from the HF model).
        inputs: the model's other inputs (a vision-language model's ``pixel_values`` and
            ``attention_mask``; an ``input_ids`` there is ignored).

    Returns:
        One dict per window center: ``center``, ``layers``, ``prob`` (with the knockout),
        ``base`` (without) and ``change = (prob − base) / base``.
    """
    if n_layers is None:
        from attnlab.models.hf import layers

        n_layers = len(layers(model).blocks)
    extra = {k: v for k, v in (inputs or {}).items() if k != "input_ids"}
    for group, name in ((target, "target"), (source, "source")):
        check_span(group, int(input_ids.shape[-1]), f"knockout scan {name}")
    base = _answer_prob(model, input_ids, answer, (), extra)
    rows = []
    for center in range(n_layers):
        ls = window_layers(center, n_layers, window)
        p = _answer_prob(model, input_ids, answer, [Knockout(target=target, source=source, layers=ls)], extra)
        rows.append({"center": center, "layers": ls, "prob": p, "base": base, "change": (p - base) / base if base else float("nan")})
    return rows
