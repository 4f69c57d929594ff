"""Calibration: what an edit declares it needs measured once, before it acts, measured on a model.

:func:`calibrate` reads the edit's :attr:`~attnlab.core.Edit.calibration`:

- ``"probe"``: the observer of :meth:`~attnlab.core.Edit.calibration_probe` is attached to
  unedited passes over :meth:`~attnlab.core.Edit.calibration_inputs` (text windows, reference
  texts), then handed to :meth:`~attnlab.core.Edit.calibrated` (LLM-Drop's layer ranking,
  EchoAtt's layer similarity, VAR's sink dimensions, mean ablation's mean head outputs);
- a name in :data:`SEARCHES`: a search that builds candidate edits, scores each, and hands its
  choice to :meth:`~attnlab.core.Edit.calibrated` (:func:`act_heads`, paper 47).

VHD/VHR (paper 26) choose heads for :class:`~attnlab.edits.head_scale.HeadScale` by running the
model with and without a context: :func:`vhd`, :func:`vhr_select`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from attnlab.core import attach
from attnlab.core.site import Edit
from attnlab.edits.head_mask import HeadOutputs
from attnlab.edits.head_scale import HeadScale, vhr_rule
from attnlab.edits.sink_redistribute import SinkRedistribute
from attnlab.heads import parse_heads
from attnlab.models import hf
from attnlab.models.conventions import model_kind
from attnlab.models.hf_load import input_device
from attnlab.runs._checks import check_positions
from attnlab.runs.edit import bind, prepare, unedited

__all__ = ["SEARCHES", "act_heads", "calibrate", "vhd", "vhr_select"]


def calibrate(
    edit: Edit, model, tokenizer, *, progress: Callable[[str], None] | None = None, allow_extrapolation: bool = False, **options
) -> Edit:
    """Calibrate ``edit`` on ``model`` as it declares (nothing when its ``calibration`` is None).

    Args:
        options: for ``"probe"`` calibrations, the edit's :meth:`~attnlab.core.Edit.calibration_inputs`
            options (``text``, ``windows``, ``window``; ``texts``, ``max_tokens``); for a search,
            the search's (:func:`act_heads`: ``score``, ``candidates``, ``margin``, ...).
        progress: called with a line per step of a search.
        allow_extrapolation: let calibration inputs exceed the positions the model was trained on
            (refused by default, as :func:`attnlab.runs.scan.scan` does).

    Returns:
        ``edit``, so that ``calibrate(DropAttention(top=4), model, tok)`` can be passed on.
    """
    bind(model, [edit])
    kind = edit.calibration
    if kind is None:
        return edit
    if kind == "probe":
        observer = edit.calibration_probe()
        if observer is None:
            raise ValueError(f"{edit!r} declares a probe calibration but calibration_probe() gave none")
        inputs = edit.calibration_inputs(tokenizer, **options)
        _check_lengths(model, edit, inputs, allow_extrapolation)
        for ids in inputs:
            unedited(model, ids, observer)
        edit.calibrated(observer)
        return edit
    if kind not in SEARCHES:
        raise ValueError(f"{edit!r} asks for calibration {kind!r}: choose 'probe' or a search of {', '.join(SEARCHES)}")
    return SEARCHES[kind](edit, model, tokenizer, progress=progress, allow_extrapolation=allow_extrapolation, **options)


def _check_lengths(model, edit: Edit, inputs: Sequence[Tensor], allow_extrapolation: bool) -> None:
    longest = max((int(ids.shape[-1]) for ids in inputs), default=0)
    check_positions(model, longest, f"the calibration of {edit!r} (inputs of {longest} tokens)", allow_extrapolation)


def act_heads(
    edit: SinkRedistribute,
    model,
    tokenizer,
    *,
    score: Callable | None = None,
    candidates=None,
    margin: float = 0.0,
    text: str = "lucrece",
    windows: int = 2,
    window: int = 256,
    progress: Callable[[str], None] | None = None,
    allow_extrapolation: bool = False,
) -> SinkRedistribute:
    """ACT (paper 47): keep each head whose edit alone improves ``score``; the kept heads replace ``edit``'s.

    ACT's rule (official code, one run per ``(layer, head)``): with ``s0`` the score of the
    unedited model and ``s_lh`` the score with only head ``(l, h)`` edited
    (:meth:`SinkRedistribute.only`), keep the heads with ``s_lh > s0 + margin``. ``edit.scores``
    holds ``s_lh − s0``.

    Args:
        score: ``fn(model, tokenizer, edits) -> float``, higher is better, e.g. needle recall
            ``lambda m, t, e: sum(evaluate.needle(m, t, e))``. Default: minus the mean
            perplexity of ``windows`` windows of ``window`` tokens of ``text`` (a shipped text
            name or raw text; *Lucrece* is held out from the Tempest perplexity of
            :mod:`attnlab.runs.evaluate`), each candidate prepared on each window.
        candidates: ``(layer, head)`` pairs to try; default every head of layers 2..L−2 (the
            official script skips the first two layers and the last).
        margin: smallest improvement that keeps a head.
        progress: called with a line per head.

    Returns:
        ``edit``, calibrated.
    """
    sites = bind(model, [edit])
    if score is None:
        if model_kind(model) != "decoder":
            raise ValueError(
                f"ACT's default score is perplexity, which needs a decoder's next-token logits, and {type(model).__name__} is an encoder: "
                "give the heads (sink_redistribute:heads=...), method=var, or a score function of your own"
            )
        ids = edit.calibration_inputs(tokenizer, text=text, windows=windows, window=window)
        _check_lengths(model, edit, ids, allow_extrapolation)
        score = lambda m, t, edits: -_perplexity(m, ids, edits)  # noqa: E731
    L, H = len(sites), sites[0].num_heads
    pairs = (
        parse_heads(candidates)
        if candidates is not None
        else [(la, h) for la in range(2, L - 1) if edit.layers is None or la in edit.layers for h in range(H)]
    )
    base = score(model, tokenizer, [])
    kept: dict[int, list[int]] = {}
    scores: dict[tuple[int, int], float] = {}
    for i, (layer, h) in enumerate(pairs):
        scores[(layer, h)] = score(model, tokenizer, [edit.only([(layer, h)])]) - base
        if scores[(layer, h)] > margin:
            kept.setdefault(layer, []).append(h)
        if progress:
            progress(f"ACT calibration {i + 1}/{len(pairs)}: L{layer}H{h} {scores[(layer, h)]:+.4f}")
    edit.calibrated({"heads": kept, "scores": scores})
    return edit


SEARCHES: dict[str, Callable] = {"act_heads": act_heads}
"""Searches an edit may name as its ``calibration``: ``fn(edit, model, tokenizer, *, progress, **options) -> edit``."""


def _perplexity(model, ids: list[Tensor], edits: Sequence[Edit]) -> float:
    """Mean perplexity over ``[1, T + 1]`` windows, the edits prepared on each window first."""
    out = []
    for chunk in ids:
        prepare(model, edits, chunk[:, :-1])
        with torch.no_grad(), attach(edits=list(edits)):
            logits = model(input_ids=chunk[:, :-1].to(input_device(model))).logits.cpu()
        out.append(float(torch.exp(torch.nn.functional.cross_entropy(logits[0].float(), chunk[0, 1:]))))
    return sum(out) / len(out)


# --- VHD/VHR (paper 26): heads that read a context --------------------------------------------------


def _ids(tokenizer, x, device) -> Tensor:
    if isinstance(x, Tensor):
        ids = x if x.dim() == 2 else x[None]
    elif isinstance(x, str):
        ids = tokenizer(x, return_tensors="pt")["input_ids"]
    else:
        raise TypeError(f"a prompt is a string or a tensor of token ids, got {type(x).__name__}")
    return ids.to(device)


def _last_outputs(model, tokenizer, prompt, edits: Sequence[Edit]) -> Tensor:
    """Every head's output at the last position, ``[L, H, D]`` (first sequence of the batch)."""
    try:
        sites = hf.sites(model)
    except AttributeError as e:
        raise ValueError("vhd needs an instrumented model: call attnlab.models.hf.instrument(model) first") from e
    rec = HeadOutputs()
    with torch.no_grad(), attach(edits=[*edits, rec]):
        model(input_ids=_ids(tokenizer, prompt, input_device(model)))
    return torch.stack([rec.last[s.name][0].float() for s in sites])  # [L, H, D]


def vhd(model, tokenizer, with_context, without_context, *, edits: Sequence[Edit] = ()) -> Tensor:
    """VHD of every head: ``‖o_{l,h}(with)[−1] − o_{l,h}(without)[−1]‖₂``, as ``[L, H]``.

    Paper: 26 (VHD/VHR), Eq. 4.
    Shapes: ``[L, H]`` float32, for the first sequence of the batch.

    Args:
        model: a model instrumented with :func:`attnlab.models.hf.instrument`.
        tokenizer: turns a string into ``input_ids`` (unused for tensor prompts).
        with_context: the prompt with the context segment (a string or ``[1, T]`` ids).
        without_context: the same prompt without it.
        edits: attached to both runs (VHR passes the heads it has scaled so far).
    """
    a, b = (_last_outputs(model, tokenizer, p, edits) for p in (with_context, without_context))
    return torch.linalg.vector_norm(a - b, dim=-1)  # [L, H]


def vhr_select(
    model,
    tokenizer,
    with_context,
    without_context,
    *,
    alpha: float = 2.0,
    layers: Sequence[int] | None = None,
    sequential: bool = True,
) -> list[tuple[int, int]]:
    """Vision-aware Head Reinforcement for any context segment: the heads it reinforces, as ``(layer, head)`` pairs.

    Paper: 26 (VHD/VHR), Algorithm 1. Feed the heads to :class:`~attnlab.edits.head_scale.HeadScale`.

    Args:
        alpha: the factor chosen heads of earlier layers are scaled by while later layers
            are judged (``sequential``); use the same in ``HeadScale``.
        layers: layers to reinforce (default all; the paper: LLaVA-1.5's second and last 14).
        sequential: select layer by layer on the reinforced model, as the paper; False
            computes VHD once and applies the rule to every layer.

    Example:
        >>> heads = vhr_select(model, tok, "Paris is in France. Paris is in", "Paris is in")  # doctest: +SKIP
        >>> edit = HeadScale(heads=heads, factor=2.0)                                       # doctest: +SKIP
    """
    edits: list = []
    chosen: list[tuple[int, int]] = []
    judged = -1  # how many chosen heads the current outputs were computed with
    for layer in _layers(model, layers):
        if judged < 0 or (sequential and len(chosen) > judged):
            edits = [HeadScale(heads=chosen, factor=alpha)] if chosen else []
            a, b = (_last_outputs(model, tokenizer, p, edits) for p in (with_context, without_context))  # [L, H, D]
            scores, ta = torch.linalg.vector_norm(a - b, dim=-1), b.pow(2).sum(-1)  # [L, H] each
            judged = len(chosen)
        chosen += [(layer, h) for h in vhr_rule(scores[layer], ta[layer])]
    return chosen


def _layers(model, layers) -> list[int]:
    L = len(hf.layers(model).blocks)
    order = list(range(L)) if layers is None else sorted({int(x) for x in layers})
    if any(not 0 <= x < L for x in order):
        raise ValueError(f"vhr_select: layers={order} out of range: the model has layers 0..{L - 1}")
    return order
