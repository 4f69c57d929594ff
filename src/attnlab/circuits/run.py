"""One circuit method on a model and a set of prompt pairs, as a :class:`attnlab.results.CircuitResult` (what ``attnlab circuit`` runs)."""

from __future__ import annotations

import time
from collections.abc import Callable

from torch import nn

from attnlab.circuits import pairs as P
from attnlab.circuits.attribution import attribution_patching
from attnlab.circuits.dla import direct_logit_attribution
from attnlab.circuits.neuron_paths import RANDOM_PATHS, neuron_paths
from attnlab.circuits.pairs import Pairs
from attnlab.circuits.patching import PatchResult, activation_patching
from attnlab.circuits.path import path_patching_sweep
from attnlab.circuits.saliency import pair_saliency
from attnlab.results import CircuitResult, make_meta, model_meta

__all__ = ["METHODS", "PER", "TASKS", "pair_records", "run_circuit", "task_pairs"]

METHODS = ("patch", "path", "attrib", "dla", "ig", "saliency")
PER = {"head": "layers.*.attn.z", "position": "layers.*.resid_pre"}  # what patch and attrib patch, per unit
TASKS = ("ioi", "induction", "colored_objects", "multiple_choice")


def task_pairs(task: str, tokenizer, n: int, seed: int = 0) -> Pairs:
    """The built-in pairs of ``task`` (one of :data:`TASKS`)."""
    if task == "ioi":
        return P.ioi_pairs(tokenizer, n, seed=seed)
    if task == "induction":
        return P.induction_pairs(n, tokenizer=tokenizer, seed=seed)
    if task == "colored_objects":
        return P.colored_objects_pairs(tokenizer, n, seed=seed)
    if task == "multiple_choice":
        return P.multiple_choice_pairs(tokenizer, n, seed=seed)
    raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}, or give --prompts pairs.jsonl")


def pair_records(pairs: Pairs, tokenizer=None) -> list[dict]:
    """``{"clean", "corrupted", "answer", "wrong"}`` per pair, as text: the records the pairs came from, else their ids decoded
    by ``tokenizer``, else the ids themselves (``"ids 3 17 5"``)."""
    if pairs.records:
        return [{k: r[k] for k in P.KEYS} for r in pairs.records]

    def text(ids) -> str:
        ids = [int(i) for i in (ids.tolist() if ids.dim() else [ids.item()])]
        return tokenizer.decode(ids) if tokenizer is not None else "ids " + " ".join(map(str, ids))

    return [
        {"clean": text(c), "corrupted": text(k), "answer": text(a), "wrong": text(w)}
        for c, k, a, w in zip(pairs.clean, pairs.corrupted, pairs.answer, pairs.wrong, strict=True)
    ]


def _patch_result(r: PatchResult, axes: list[str], meta_extra: dict) -> tuple[list[dict], list[list[float]], list[str], list[str], dict]:
    summary = {"clean": r.clean, "corrupted": r.corrupted}
    return r.table.to_dict("records"), r.grid.tolist(), axes, r.rows, {"summary": summary, **meta_extra}


def _by_receiver(model, pairs: Pairs, receivers: list[str], kw: dict):
    """Each sender head path-patched alone into each receiver alone: the table (with a ``receiver`` column) and the
    ``[senders, receivers]`` grid (NaN where a sender is not below the receiver)."""
    sweeps = {r: path_patching_sweep(model, pairs, [r], **kw) for r in receivers}
    table = [row | {"receiver": r} for r, sw in sweeps.items() for row in sw.table.to_dict("records")]
    senders = sorted({(row["layer"], row["head"]) for row in table})
    score = {(row["layer"], row["head"], row["receiver"]): row["score"] for row in table}
    grid = [[score.get((sl, sh, r), float("nan")) for r in receivers] for sl, sh in senders]  # [senders, receivers]
    first = next(iter(sweeps.values()))
    summary = {"clean": first.clean, "corrupted": first.corrupted}
    return table, grid, ["sender", "receiver"], [f"L{sl}H{sh}" for sl, sh in senders], {"summary": summary}


def _ig(model, pairs: Pairs, layers: list[int] | None, steps: int, progress):
    """Each pair's neuron path: per-layer attributions as a ``[layer, pair]`` grid, the paths and their ablation in ``meta``."""
    r = neuron_paths(model, pairs, layers=layers, steps=steps, progress=progress)
    return r.table, r.grid, ["layer", "pair"], [f"layers.{i}" for i in r.layers], {"summary": r.summary(), "paths": r.paths}


def _saliency(model, pairs: Pairs, batch_size: int, progress):
    """NormGrad of each token at each layer's ``resid_pre``: the ``[layer, position]`` grid, the selective variant's in ``meta``."""
    s = pair_saliency(model, pairs, PER["position"], batch_size=batch_size, progress=progress)
    table = [
        {"point": p, "layer": i, "position": t, "normgrad": a, "selective": b}
        for i, p in enumerate(s.rows)
        for t, (a, b) in enumerate(zip(s.normgrad[i], s.selective[i], strict=True))
    ]
    return table, s.normgrad, ["layer", "position"], s.rows, {"summary": {"logit_diff": s.logit_diff}, "selective_grid": s.selective}


def run_circuit(
    model: nn.Module,
    pairs: Pairs,
    method: str,
    *,
    settings: dict,
    receivers: list[str] | str = "logits",
    per: str = "head",
    batch_size: int = 8,
    layers: list[int] | None = None,
    steps: int = 20,
    tokenizer=None,
    progress: Callable[[str, int, int], None] | None = None,
) -> CircuitResult:
    """Run ``method`` and record it with the pairs (as text: ``tokenizer`` decodes pairs built from ids).

    Methods: ``patch`` (activation patching of ``attn.z`` per head, or of ``resid_pre`` per
    position: ``per``), ``path`` (each head into ``receivers`` together; several receivers: into
    each alone, a senders × receivers grid), ``attrib`` (attribution patching as ``patch``, with its
    agreement with it), ``dla``, ``ig`` (paper 69: each clean prompt's neuron path over ``layers``
    with ``steps`` integration points, ablated against 20 random paths: :mod:`attnlab.circuits.neuron_paths`)
    and ``saliency`` (paper 10: NormGrad of each token at each layer's ``resid_pre``, both variants).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if per not in PER or (per != "head" and method not in ("patch", "attrib")):
        raise ValueError(f"per={per!r}: patch and attrib take per='head' or 'position', the other methods take per='head' only")
    start = time.perf_counter()
    kw = {"batch_size": batch_size, "progress": progress}
    if method == "patch":
        out = _patch_result(activation_patching(model, pairs, PER[per], per=per, **kw), ["layer", per], {})
    elif method == "path" and isinstance(receivers, list) and len(receivers) > 1:
        out = _by_receiver(model, pairs, receivers, kw)
    elif method == "path":
        out = _patch_result(path_patching_sweep(model, pairs, receivers, **kw), ["layer", "head"], {})
    elif method == "attrib":
        from attnlab.circuits.attribution import agreement

        estimate = attribution_patching(model, pairs, PER[per], per=per, **kw)
        exact = activation_patching(model, pairs, PER[per], per=per, **kw)
        out = _patch_result(estimate, ["layer", per], {"agreement": agreement(estimate, exact)})
    elif method == "ig":
        out = _ig(model, pairs, layers, steps, progress)
    elif method == "saliency":
        out = _saliency(model, pairs, batch_size, progress)
    else:
        d = direct_logit_attribution(model, pairs, batch_size=batch_size)
        summary = {"logit_diff": float(d.logit_diff.mean()), "terms_sum": float(d.values.sum(1).mean())}
        out = (
            d.table.to_dict("records"),
            d.grid.tolist(),
            ["layer", "head"],
            [f"layers.{i}" for i in range(len(d.grid))],
            {"summary": summary},
        )
    table, grid, axes, rows, extra = out
    meta = make_meta(
        "circuit",
        settings={**settings, "method": method, "per": per, "pairs": len(pairs)}
        | ({"receivers": receivers} if method == "path" else {})
        | ({"layers": layers or "all", "steps": steps, "random_paths": RANDOM_PATHS} if method == "ig" else {}),
        model=model_meta(model),
        wall_s=time.perf_counter() - start,
        pairs=pair_records(pairs, tokenizer),
        **extra,
    )
    return CircuitResult(meta, table, grid, axes, rows)
