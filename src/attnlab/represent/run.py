"""One representation method on one or two models and a dataset, as a :class:`attnlab.results.RepresentResult` (``attnlab represent``).

Methods: ``probe`` (per-layer linear probes per concept, paper 13), ``cka`` (linear CKA of every
layer pair, of one model or across two), ``match`` (unit correlation, Hungarian matching and
spectral groups between two models layer by layer, paper 66), ``align`` (token-group and
consecutive-layer cosine, paper 35).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from attnlab.represent import units
from attnlab.represent.align import align_layers
from attnlab.represent.datasets import Dataset, tokenize_pairs
from attnlab.represent.probe import check_labels, probe_layers
from attnlab.represent.similarity import CrossStats, pair_groups
from attnlab.represent.stream import layer_points, pool, states
from attnlab.results import RepresentResult, make_meta, model_meta

__all__ = ["METHODS", "check_dataset", "cka_grid", "run_represent"]

METHODS = ("probe", "cka", "match", "align")
Progress = Callable[[str, int, int], None] | None


def _pooling(model: nn.Module) -> str:
    from attnlab.models.conventions import model_kind
    from attnlab.models.tiny import TinyTransformer

    return "last" if isinstance(model, TinyTransformer) or model_kind(model) == "decoder" else "mean"


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return [list(tokenizer(t)["input_ids"]) for t in texts]


def _same_tokens(a: list[list[int]], b: list[list[int]]) -> None:
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            raise ValueError(
                f"the two models tokenize example {i} differently ({len(x)} and {len(y)} tokens): cka and match compare "
                "token by token, so they need one tokenizer; give two models that share it, or compare one model's layers"
            )


def check_dataset(dataset: Dataset, method: str, folds: int = 5) -> None:
    """Refuse a dataset ``method`` cannot use (before any model runs): the wrong format, a concept without labels or with one class."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if method == "align" and dataset.format != "paired":
        raise ValueError(f'align needs a paired dataset ({{"a", "b"}} records, e.g. --dataset paired), got a {dataset.format} one')
    if method != "align" and dataset.format != "labelled":
        raise ValueError(f'{method} needs a labelled dataset ({{"text", "label"}} records, e.g. --dataset concepts), got a paired one')
    if method == "probe":
        for concept, records in dataset.concepts().items():
            if any("label" not in r for r in records):
                raise ValueError(f"concept {concept!r} has records without a label: probe needs {{'text', 'label'}} records")
            check_labels([r["label"] for r in records], folds, f"concept {concept!r}")


def _probe(model, seqs, dataset: Dataset, folds: int, batch_size: int, progress: Progress) -> tuple[list[dict], dict]:
    how = _pooling(model)
    rows: list[list[torch.Tensor]] = []
    for streams, mask, examples in states(model, seqs, batch_size=batch_size):
        rows.append([pool(x, mask, how) for x in streams])
        if progress:
            progress("forward", examples.stop, len(seqs))
    layers = [torch.cat(col) for col in zip(*rows, strict=True)]  # per stream: (N, C)
    table, best = [], {}
    for concept, records in dataset.concepts().items():
        idx = [i for i, r in enumerate(dataset.records) if str(r.get("concept", "label")) == concept]
        found = probe_layers([x[idx] for x in layers], [r["label"] for r in records], folds=folds)
        table += [{"concept": concept, **r} for r in found]
        top = max(found, key=lambda r: r["accuracy"])
        best[concept] = {"layer": top["layer"], "accuracy": top["accuracy"], "selectivity": top["selectivity"]}
        if progress:
            progress("probes", len(best), len(dataset.concepts()))
    return table, {"pooling": how, "best": best}


def cka_grid(
    models: list[nn.Module],
    seqs: list[list[int]],
    *,
    batch_size: int = 8,
    max_bytes: int = 2**31,
    dtype: torch.dtype = torch.float64,
    progress: Progress = None,
) -> tuple[list[list[float]], dict]:
    """Linear CKA of every layer pair (of one model, or model A's layers × model B's), per token.

    The pairs' running sums (:class:`CrossStats`) are split so that each group fits in ``max_bytes``
    (:func:`~attnlab.represent.similarity.pair_groups`); each group is one pass over ``seqs``.
    Returns the ``[La][Lb]`` grid and ``{"tokens", "passes"}``.
    """
    one = len(models) == 1
    la = len(layer_points(models[0]))
    lb = la if one else len(layer_points(models[1]))
    pairs = [(i, j) for i in range(la) for j in range(i, la)] if one else [(i, la + j) for i in range(la) for j in range(lb)]
    width = _widths(models, seqs[:1])
    groups = pair_groups(pairs, width, max_bytes, torch.finfo(dtype).bits // 8)
    cka: dict[tuple[int, int], float] = {}
    tokens = 0
    for g, group in enumerate(groups):
        stats = _fill(CrossStats(group, dtype=dtype), models, seqs, batch_size, progress, f"pass {g + 1}/{len(groups)}")
        cka.update({(a, b): stats.cka(a, b) for a, b in group})
        tokens = stats.n
    key = (lambda i, j: (min(i, j), max(i, j))) if one else (lambda i, j: (i, la + j))
    grid = [[cka[key(i, j)] for j in range(lb)] for i in range(la)]
    return grid, {"tokens": tokens, "passes": len(groups)}


def _fill(stats: CrossStats, models: list[nn.Module], seqs: list[list[int]], batch_size: int, progress: Progress, what: str) -> CrossStats:
    """``stats`` fed every batch of ``seqs``: each model's streams at the real tokens, models' streams in order."""
    for batches in zip(*(states(m, seqs, batch_size=batch_size) for m in models), strict=True):
        mask = batches[0][1]
        stats.update([x[mask] for streams, _, _ in batches for x in streams])  # (tokens, C) per stream
        if progress:
            progress(what, batches[0][2].stop, len(seqs))
    return stats


def _widths(models: list[nn.Module], seqs: list[list[int]]) -> list[int]:
    """Every stream's width, read from one forward pass of one example per model."""
    return [x.shape[-1] for m in models for x in next(states(m, seqs, batch_size=1))[0]]


def _cka(models, seqs, batch_size: int, max_bytes: int, progress: Progress) -> tuple[list[dict], list[list[float]], dict]:
    grid, extra = cka_grid(models, seqs, batch_size=batch_size, max_bytes=max_bytes, progress=progress)
    table = [{"layer_a": i, "layer_b": j, "cka": v} for i, row in enumerate(grid) for j, v in enumerate(row)]
    return table, grid, extra


def _match(models, seqs, batch_size: int, groups: int, progress: Progress) -> tuple[list[dict], dict]:
    if len(models) != 2:
        raise ValueError("match compares two networks' units: give --model twice (e.g. two seeds, or a model and a permuted copy)")
    la, lb = (len(layer_points(m)) for m in models)
    if la != lb:
        raise ValueError(f"match pairs layers by depth: the models have {la - 1} and {lb - 1} layers; give two models of one depth")
    stats = _fill(CrossStats([(i, la + i) for i in range(la)]), models, seqs, batch_size, progress, "forward")
    table = []
    for i in range(la):
        corr = stats.correlation(i, la + i)  # (Ca, Cb)
        m = units.match_units(corr if corr.shape[0] <= corr.shape[1] else corr.T)
        width = min(corr.shape)
        spectral = units.spectral_groups(stats.correlation(i, i), corr, stats.correlation(la + i, la + i), min(groups, width))
        table.append(
            {
                "layer": i,
                "matched": m.mean,
                "best": float(corr.max(1).values.mean()),
                "shared_groups": spectral["shared"],
                "units": width,
            }
        )
    return table, {"tokens": stats.n, "groups": groups}


def run_represent(
    models: list[nn.Module],
    tokenizers: list,
    dataset: Dataset,
    method: str,
    *,
    settings: dict,
    folds: int = 5,
    groups: int = 8,
    batch_size: int = 8,
    memory_mib: int = 2048,
    progress: Progress = None,
) -> RepresentResult:
    """Run ``method`` (one of :data:`METHODS`) on ``models`` (one, or two for ``cka`` across models and ``match``).

    ``memory_mib`` bounds cka's running sums: pairs beyond it run in further passes over the data.
    """
    if memory_mib < 1:
        raise ValueError(f"memory_mib must be at least 1 MiB, got {memory_mib}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if not 1 <= len(models) <= 2 or len(tokenizers) != len(models):
        raise ValueError(f"give one or two models, each with its tokenizer: got {len(models)} models and {len(tokenizers)} tokenizers")
    if len(models) == 2 and method in ("probe", "align"):
        raise ValueError(f"{method} reads one model: give --model once (cka and match compare two)")
    check_dataset(dataset, method, folds)
    start = time.perf_counter()
    extra: dict = {}
    grid: list[list[float]] = []
    if method == "align":
        seqs, spans_a, spans_b = tokenize_pairs(tokenizers[0], dataset.records)
        table = align_layers(models[0], seqs, spans_a, spans_b, batch_size=batch_size)
    else:
        seqs = _encode(tokenizers[0], dataset.texts())
        if len(models) == 2:
            _same_tokens(seqs, _encode(tokenizers[1], dataset.texts()))
        if method == "probe":
            table, extra = _probe(models[0], seqs, dataset, folds, batch_size, progress)
        elif method == "cka":
            table, grid, extra = _cka(models, seqs, batch_size, memory_mib * 2**20, progress)
        else:
            table, extra = _match(models, seqs, batch_size, groups, progress)
    meta = make_meta(
        "represent",
        settings={
            **settings,
            "method": method,
            "examples": len(dataset.records),
            "folds": folds,
            "groups": groups,
            "batch_size": batch_size,
            "memory_mib": memory_mib,
        },
        model=model_meta(models[0]),
        wall_s=time.perf_counter() - start,
        models=[model_meta(m) for m in models],
        streams=[layer_points(m) for m in models],
        **extra,
    )
    return RepresentResult(meta, table, grid)
