"""Path patching: how much of the answer flows from sender heads into receiver heads' queries, keys or values.

Paper: 5 (Circuit component reuse), after Wang et al.'s IOI path patching. For one batch of
pairs, denoising (``direction="denoise"``: source = clean, target = corrupted; ``"noise"`` swaps them):

1. Run the source and the target prompts; keep the senders' ``attn.z`` from the source run and
   every head's ``attn.z`` from the target run.
2. Run the target prompt with every head's output (``layers.*.attn.z``) frozen to its target
   value, except the senders, whose outputs are the source values; MLPs, norms and the rest
   recompute. Keep the receivers' ``attn.q`` / ``attn.k`` / ``attn.v`` (the inputs chosen), which now
   carry the senders' effect along the direct path (and through MLPs) only.
3. Run the target prompt once more with only the receivers' chosen inputs replaced by those from
   step 2 (everything else computes freely) and read the metric.

``receivers="logits"`` scores the senders' direct path to the output instead: the metric of step 2.
Under grouped-query attention a receiver's key/value head is shared by its group, so patching a
receiver's ``k`` or ``v`` patches the group's. The score is ``(patched − corrupted) / (clean − corrupted)``.

    >>> from attnlab.models.tiny import TinyTransformer
    >>> from attnlab.circuits.pairs import induction_pairs
    >>> model = TinyTransformer(20, dim=16, heads=2, layers=2).eval()
    >>> r = path_patching(model, induction_pairs(4, length=5, vocab_size=20), senders=["L0H1"], receivers=["L1H0"], inputs="k")
    >>> sorted(r)
    ['clean', 'corrupted', 'metric', 'score']
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from attnlab.circuits import metrics as M
from attnlab.circuits.pairs import Pairs
from attnlab.circuits.patching import DIRECTIONS, PatchResult, Progress, _grid
from attnlab.heads import parse_heads
from attnlab.models.graph import capture, hook_points, intervene

__all__ = ["path_patching", "path_patching_sweep"]

Head = tuple[int, int]


def _shape(model: nn.Module) -> tuple[int, int]:
    """``(L, H)`` from the hook graph and the first site's head count."""
    from attnlab.models import hf
    from attnlab.models.tiny import TinyTransformer

    points = hook_points(model)
    L = sum(p.endswith(".attn.z") for p in points)
    if L == 0:
        raise ValueError(f"{type(model).__name__} has no attention sites (attn.z points): path patching needs softmax attention")
    sites = model.sites() if isinstance(model, TinyTransformer) else hf.sites(model)
    return L, sites[0].num_heads


def _receiver_inputs(inputs: str) -> list[str]:
    chosen = list(dict.fromkeys(inputs))
    if not chosen or set(chosen) - set("qkv"):
        raise ValueError(f"inputs is any of 'q', 'k', 'v' (e.g. 'qkv', 'k'), got {inputs!r}")
    return chosen


def _patched_run(model, target_ids, source_z, target_z, senders: list[Head], receivers, inputs: list[str], H: int) -> Tensor:
    """Steps 2 and 3 of the module docstring: the logits of the target run with the senders' path patched ``[B, T, V]``."""
    frozen = {}
    for layer, z in target_z.items():
        z = z.clone()  # [B, T, H, D]
        for sl, sh in senders:
            if sl == layer:
                z[:, :, sh] = source_z[layer][:, :, sh]
        frozen[f"layers.{layer}.attn.z"] = z
    wanted = [f"layers.{rl}.attn.{x}" for rl in {r[0] for r in receivers} for x in inputs] if receivers != "logits" else []
    with capture(model, wanted or "logits") as step2, intervene(model, frozen):
        logits = M.logits_of(model, target_ids)
    if receivers == "logits":
        return logits

    def put(x: Tensor, point: str) -> Tensor:  # x [B, H or Hkv, T, D]
        layer = int(point.split(".")[1])
        group = H // x.shape[1]
        x = x.clone()
        for rl, rh in receivers:
            if rl == layer:
                x[:, rh // group] = step2[point][:, rh // group]
        return x

    with intervene(model, dict.fromkeys(wanted, put)):
        return M.logits_of(model, target_ids)


def _check(model, receivers, senders, inputs: str, direction: str) -> tuple[int, int, list[Head] | str, list[Head] | None, list[str]]:
    """``(L, H, receivers, senders, inputs)`` validated; senders None = every head below the first receiver's layer."""
    L, H = _shape(model)
    chosen = _receiver_inputs(inputs)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'denoise' (clean into corrupted) or 'noise' (corrupted into clean), got {direction!r}")
    rec = "logits" if receivers == "logits" else parse_heads(receivers, L, H)
    top = L if rec == "logits" else min(r[0] for r in rec)
    send = parse_heads(senders, L, H) if senders is not None else [(i, h) for i in range(top) for h in range(H)]
    late = [f"L{s[0]}H{s[1]}" for s in send if s[0] >= top]
    if late:
        raise ValueError(f"senders {late} are not below every receiver (first receiver layer {top}): a head can only send to later layers")
    return L, H, rec, send, chosen


def _path(
    model, pairs: Pairs, groups: list[list[Head]], rec, chosen, H: int, direction, metric, batch_size, progress
) -> tuple[list[float], float, float]:
    """Mean metric with each group of senders path-patched, and the clean and corrupted means."""
    fn = M.resolve(metric)
    sums = [0.0] * len(groups)
    clean_sum = corrupted_sum = 0.0
    batches = list(pairs.batches(batch_size))
    for b, (clean, corrupted, answer, wrong) in enumerate(batches):
        with capture(model, "layers.*.attn.z") as clean_z:
            clean_sum += float(fn(M.logits_of(model, clean), answer, wrong).sum())
        with capture(model, "layers.*.attn.z") as corrupted_z:
            corrupted_sum += float(fn(M.logits_of(model, corrupted), answer, wrong).sum())
        source, target, target_ids = (clean_z, corrupted_z, corrupted) if direction == "denoise" else (corrupted_z, clean_z, clean)
        by_layer = {int(p.split(".")[1]): z for p, z in target.items()}  # layer -> [B, T, H, D]
        source_by_layer = {int(p.split(".")[1]): z for p, z in source.items()}
        for k, group in enumerate(groups):
            logits = _patched_run(model, target_ids, source_by_layer, by_layer, group, rec, chosen, H)
            sums[k] += float(fn(logits, answer, wrong).sum())
            if progress:
                progress(
                    "path patching " + ",".join(f"L{sl}H{sh}" for sl, sh in group), b * len(groups) + k + 1, len(batches) * len(groups)
                )
    n = len(pairs)
    return [v / n for v in sums], clean_sum / n, corrupted_sum / n


@torch.no_grad()
def path_patching_sweep(
    model: nn.Module,
    pairs: Pairs,
    receivers: Sequence[str | Head] | str,
    *,
    senders: Sequence[str | Head] | None = None,
    inputs: str = "qkv",
    direction: str = "denoise",
    metric: str | M.Metric = "logit_diff",
    batch_size: int = 8,
    progress: Progress | None = None,
) -> PatchResult:
    """Path-patch each sender head alone into ``receivers`` (module docstring); by default every head below the first receiver's layer.

    Args:
        receivers: heads (``["L9H6", (10, 0)]``) whose ``inputs`` are patched, or ``"logits"``.
        senders: the heads to try one at a time.
        inputs: which receiver inputs: any of ``"q"``, ``"k"``, ``"v"``.

    Returns:
        A :class:`~attnlab.circuits.patching.PatchResult` with one row per sender (point
        ``layers.{i}.attn.z``, position −1) and the ``[layers, H]`` grid of the sender layers.

    Raises:
        ValueError: an unknown head; a sender not below every receiver; bad ``inputs`` or ``direction``.
    """
    _, H, rec, send, chosen = _check(model, receivers, senders, inputs, direction)
    means, clean_m, corrupted_m = _path(model, pairs, [[s] for s in send], rec, chosen, H, direction, metric, batch_size, progress)
    rows = [
        {"point": f"layers.{sl}.attn.z", "layer": sl, "head": sh, "position": -1, "metric": v}
        | {"score": M.normalised(v, clean=clean_m, corrupted=corrupted_m)}
        for (sl, sh), v in zip(send, means, strict=True)
    ]
    table = pd.DataFrame(rows, columns=["point", "layer", "head", "position", "metric", "score"])
    grid, grid_rows = _grid(table, "head")
    return PatchResult(table, grid, grid_rows, clean_m, corrupted_m)


@torch.no_grad()
def path_patching(
    model: nn.Module,
    pairs: Pairs,
    senders: Sequence[str | Head],
    receivers: Sequence[str | Head] | str,
    *,
    inputs: str = "qkv",
    direction: str = "denoise",
    metric: str | M.Metric = "logit_diff",
    batch_size: int = 8,
) -> dict[str, float]:
    """Path-patch all ``senders`` together into ``receivers``: ``{"metric", "score", "clean", "corrupted"}`` (means over pairs).

    Arguments as :func:`path_patching_sweep`.
    """
    _, H, rec, send, chosen = _check(model, receivers, senders, inputs, direction)
    (value,), clean_m, corrupted_m = _path(model, pairs, [send], rec, chosen, H, direction, metric, batch_size, None)
    return {"metric": value, "score": M.normalised(value, clean=clean_m, corrupted=corrupted_m), "clean": clean_m, "corrupted": corrupted_m}
