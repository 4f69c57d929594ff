"""One circuit method on a model and a set of prompt pairs, as a :class:`attnlab.results.CircuitResult` (what ``attnlab circuit`` runs)."""

from __future__ import annotations

import time
from collections.abc import Callable

from torch import nn

from attnlab.circuits import pairs as P
from attnlab.circuits.attribution import attribution_patching
from attnlab.circuits.dla import direct_logit_attribution
from attnlab.circuits.pairs import Pairs
from attnlab.circuits.patching import PatchResult, activation_patching
from attnlab.circuits.path import path_patching_sweep
from attnlab.results import CircuitResult, make_meta, model_meta

__all__ = ["METHODS", "TASKS", "run_circuit", "task_pairs"]

METHODS = ("patch", "path", "attrib", "dla")
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


def _patch_result(r: PatchResult, axes: list[str], meta_extra: dict) -> tuple[list[dict], list[list[float]], list[str], list[str], dict]:
    summary = {"clean": r.clean, "corrupted": r.corrupted}
    return r.table.to_dict("records"), r.grid.tolist(), axes, r.rows, {"summary": summary, **meta_extra}


def run_circuit(
    model: nn.Module,
    pairs: Pairs,
    method: str,
    *,
    settings: dict,
    receivers: list[str] | str = "logits",
    batch_size: int = 8,
    progress: Callable[[str, int, int], None] | None = None,
) -> CircuitResult:
    """Run ``method`` (``patch``: attn.z per head; ``path``: each head into ``receivers``; ``attrib``: attribution patching of attn.z per head, with its agreement with ``patch``; ``dla``)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    start = time.perf_counter()
    kw = {"batch_size": batch_size, "progress": progress}
    if method == "patch":
        out = _patch_result(activation_patching(model, pairs, "layers.*.attn.z", per="head", **kw), ["layer", "head"], {})
    elif method == "path":
        out = _patch_result(path_patching_sweep(model, pairs, receivers, **kw), ["layer", "head"], {})
    elif method == "attrib":
        from attnlab.circuits.attribution import agreement

        estimate = attribution_patching(model, pairs, "layers.*.attn.z", per="head", **kw)
        exact = activation_patching(model, pairs, "layers.*.attn.z", per="head", **kw)
        out = _patch_result(estimate, ["layer", "head"], {"agreement": agreement(estimate, exact)})
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
        settings={**settings, "method": method, "pairs": len(pairs)},
        model=model_meta(model),
        wall_s=time.perf_counter() - start,
        **extra,
    )
    return CircuitResult(meta, table, grid, axes, rows)
