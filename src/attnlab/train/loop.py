"""``train(task, model)``: a small CPU-friendly trainer with curves, early stop and checkpoints.

AdamW (weight decay on matrices only) with linear warmup and cosine decay to a tenth of the
peak rate, gradient clipping, cross-entropy (or MSE for float targets) plus any auxiliary loss a
mechanism leaves in ``module.aux_loss`` (MoH's load balance). The test metric is evaluated every
``eval_every`` steps on a fixed test set; training stops early when it reaches ``target``.

Two options change the loop without copying it: ``lr_scale`` gives groups of parameters (by a
glob over their names) their own multiple of the scheduled rate, and ``callback`` sees every
optimizer step (a :class:`Step`: the step, loss, rates, model, optimizer and batch).
"""

from __future__ import annotations

import fnmatch
import inspect
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.tasks import IGNORE, Task
from attnlab.train import checkpoint as ckpt
from attnlab.train.data import generator, loss, predictions, to_device, torch_threads

__all__ = ["Step", "TrainResult", "lr_at", "train"]

MIN_LR_RATIO = 0.1  # cosine decay ends at a tenth of the peak rate (nanoGPT's choice)


@dataclass
class TrainResult:
    """Curves and figures of one training run, JSON-ready (:meth:`to_dict`).

    Attributes:
        steps: the steps at which the model was evaluated.
        train_loss: mean training loss over the steps since the previous evaluation.
        test_loss: loss on the test set at each evaluation.
        test_metric: the task's metric on the test set at each evaluation (higher is better).
        final_metric: the last evaluation's metric.
        steps_to_target: first evaluated step whose metric reached ``target`` (None if never).
        steps_done: optimizer steps taken (fewer than asked after an early stop).
        wall_s: wall time of the run in seconds, evaluations included (summed over resumes).
        steps_per_s: training steps per second, evaluations excluded.
        settings: everything that determined the run (task, model, optimizer, seed, data).
        resumed_from: the checkpoint step this call started from (None for a fresh run).
    """

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_metric: list[float] = field(default_factory=list)
    final_metric: float = float("nan")
    steps_to_target: int | None = None
    steps_done: int = 0
    wall_s: float = 0.0
    steps_per_s: float = float("nan")
    settings: dict = field(default_factory=dict)
    resumed_from: int | None = None

    def record(self, step: int, train_loss: float, test_loss: float, test_metric: float, *, target: float | None) -> None:
        """Add an evaluation at ``step``; the first one whose metric reaches ``target`` sets :attr:`steps_to_target`."""
        self.steps.append(step)
        self.train_loss.append(train_loss)
        self.test_loss.append(test_loss)
        self.test_metric.append(test_metric)
        self.steps_done, self.final_metric = step, test_metric
        if target is not None and self.steps_to_target is None and test_metric >= target:
            self.steps_to_target = step

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainResult:
        return cls(**data)


@dataclass(frozen=True)
class Step:
    """What ``train(callback=...)`` is given after every optimizer step.

    Attributes:
        step: optimizer steps done so far (1 after the first).
        loss: this step's training loss (the task loss, before auxiliary losses).
        lr: the scheduled rate of this step (a group's rate is ``lr`` times its ``lr_scale``).
        model: the model, in train mode, just updated.
        optimizer: the AdamW optimizer (``param_groups[i]["lr_scale"]`` is each group's multiple).
        batch: this step's training batch.
    """

    step: int
    loss: float
    lr: float
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batch: object


def lr_at(step: int, *, lr: float, warmup: int, steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine decay to ``MIN_LR_RATIO · lr``.

    Example:
        >>> [round(lr_at(s, lr=1.0, warmup=2, steps=6), 3) for s in range(6)]
        [0.5, 1.0, 1.0, 0.868, 0.55, 0.232]
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def _check_number(name: str, x, what: str, *, positive: bool) -> None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or (x <= 0 if positive else x < 0):
        raise ValueError(f"{name} must be {what}, got {name}={x!r}")


def _diverged(what: str, value, step: int, steps: int, lr_now: float, lr: float) -> str:
    return (
        f"the {what} is {value} at step {step} of {steps} (learning rate {lr_now:.3g} of peak lr={lr:g}): training diverged; "
        "lower lr, keep grad_clip on, or check the task's inputs (the last checkpoint, if any, holds the last finite state)"
    )


def _check_lr_scale(model: nn.Module, lr_scale) -> dict[str, float]:
    """``lr_scale`` as a dict of globs to positive multipliers, each glob matching a trained parameter."""
    if lr_scale is None:
        return {}
    if not isinstance(lr_scale, Mapping) or not all(isinstance(k, str) for k in lr_scale):
        raise ValueError(f"lr_scale must map parameter-name globs to multipliers (e.g. {{'*.q_proj.*': 10}}), got lr_scale={lr_scale!r}")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for pattern, scale in lr_scale.items():
        _check_number(f"lr_scale[{pattern!r}]", scale, "a positive finite multiplier of lr", positive=True)
        if not fnmatch.filter(names, pattern):
            raise ValueError(
                f"lr_scale pattern {pattern!r} matches no trained parameter: the names look like {', '.join(names[:4])}, … "
                "(fnmatch globs: '*' matches dots too, e.g. '*.q_proj.*')"
            )
    return {k: float(v) for k, v in lr_scale.items()}


def _optimizer(model: nn.Module, lr: float, weight_decay: float, lr_scale: dict[str, float]) -> torch.optim.AdamW:
    """AdamW with a group per (lr multiple, decay or not): the first glob of ``lr_scale`` a name matches sets its multiple."""
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = next((v for k, v in lr_scale.items() if fnmatch.fnmatchcase(name, k)), 1.0)
            groups.setdefault((scale, p.dim() >= 2), []).append(p)  # decay matrices and embeddings; not biases, norms, gains
    return torch.optim.AdamW(
        [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale} for (scale, decay), ps in groups.items()],
        lr=lr,
        betas=(0.9, 0.95),
    )


def _aux_loss(modules: list[nn.Module]) -> Tensor | float:
    return sum((m.aux_loss for m in modules if isinstance(m.aux_loss, Tensor) and m.aux_loss.requires_grad), 0.0)


def _train_loss(model: nn.Module, b) -> Tensor:
    """The task loss; a model that can (``TinyTransformer``) computes logits only where token targets are."""
    if b.targets.dtype.is_floating_point or "where" not in inspect.signature(model.forward).parameters:
        return loss(model(b.inputs), b)
    where = b.targets != IGNORE  # [B, T]
    return F.cross_entropy(model(b.inputs, where=where).float(), b.targets[where])  # [N, V] against [N]


@torch.no_grad()
def _evaluate(model: nn.Module, task: Task, batches: list) -> tuple[float, float]:
    """Mean test loss and metric over the fixed test batches (NaN metrics of batches without targets are skipped)."""
    was_training = model.training
    model.eval()
    losses, metrics = [], []
    for b in batches:
        out = model(b.inputs)
        losses.append(float(loss(out, b)))
        metrics.append(float(task.metric(predictions(out, b), b)))
    model.train(was_training)
    finite = [m for m in metrics if not math.isnan(m)]
    return sum(losses) / len(losses), (sum(finite) / len(finite) if finite else float("nan"))


def _task_settings(task: Task) -> dict:
    opts = {k: v for k, v in sorted(vars(task).items()) if not k.startswith("_") and isinstance(v, (bool, int, float, str, type(None)))}
    return {"name": getattr(task, "name", type(task).__name__), "vocab_size": task.vocab_size, "seq_len": task.seq_len, **opts}


def _model_settings(model: nn.Module) -> dict:
    out = {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters())}
    for k in ("mechanism", "mechanism_options", "dim", "heads", "causal", "positions", "max_len", "input_dim"):
        if hasattr(model, k):
            out[k] = getattr(model, k)
    out["layers"] = len(model.layers) if isinstance(getattr(model, "layers", None), nn.ModuleList) else None
    return out


def train(
    task: Task,
    model: nn.Module,
    *,
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 1e-3,
    warmup: int | None = None,
    weight_decay: float = 0.1,
    seed: int = 0,
    eval_every: int = 100,
    eval_batches: int = 4,
    target: float | None = None,
    checkpoint: str | None = None,
    progress: bool = True,
    grad_clip: float | None = 1.0,
    device: str | torch.device | None = None,
    threads: int | None = None,
    lr_scale: Mapping[str, float] | None = None,
    callback: Callable[[Step], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``task`` and return its curves.

    Args:
        task: a :class:`attnlab.tasks.Task`.
        model: maps ``batch.inputs`` to ``[B, T, V]`` outputs (a :class:`~attnlab.models.tiny.TinyTransformer`).
        steps: optimizer steps (the schedule's length, even when stopped early).
        batch_size: sequences per step (and per test batch).
        lr: peak learning rate.
        warmup: linear warmup steps (default: a tenth of ``steps``).
        weight_decay: AdamW weight decay on matrices and embeddings.
        seed: seeds the data streams and torch's RNG; the model's initialisation is the caller's.
        eval_every: evaluate (and checkpoint) every this many steps, and at the end.
        eval_batches: test batches per evaluation (the same ones every time).
        target: stop at the first evaluation whose test metric is at least this.
        checkpoint: a file to save to at every evaluation; if it exists, the run resumes from it.
        progress: show a progress bar (rich).
        grad_clip: clip the gradient norm to this (None: no clipping).
        device: where to train (default: where the model is).
        threads: torch CPU threads during training (default: every core unless ``OMP_NUM_THREADS`` is set).
        lr_scale: per-parameter-group rates: ``{glob: multiple}`` over ``model.named_parameters()``
            names (fnmatch; the first glob a name matches wins, others get 1). Each group follows
            the schedule at ``multiple · lr``, e.g. ``{"*.q_proj.*": 10, "*.k_proj.*": 10}``.
        callback: called after every optimizer step with a :class:`Step`; its return value is
            ignored (to log, measure or edit the model as it trains).

    Example:
        >>> result = train(task, model, steps=300, target=0.99)           # doctest: +SKIP
        >>> result.final_metric, result.steps_to_target, result.steps_per_s  # doctest: +SKIP
    """
    for name, n in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every), ("eval_batches", eval_batches)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive int, got {name}={n!r}")
    warmup = steps // 10 if warmup is None else warmup
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got warmup={warmup!r}")
    _check_number("lr", lr, "a positive finite learning rate (e.g. lr=1e-3)", positive=True)
    _check_number("weight_decay", weight_decay, "a finite number >= 0 (e.g. weight_decay=0.1)", positive=False)
    if grad_clip is not None:
        _check_number(
            "grad_clip", grad_clip, "a positive finite gradient norm, or None for no clipping (e.g. grad_clip=1.0)", positive=True
        )
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target)):
        raise ValueError(f"target must be a finite metric value or None, got target={target!r}")
    generator(seed, "train", 0)  # validates the seed
    lr_scale = _check_lr_scale(model, lr_scale)
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be a function of one Step, or None, got callback={callback!r}")
    settings = {
        "task": _task_settings(task),
        "model": _model_settings(model),
        **{"steps": steps, "batch_size": batch_size, "lr": lr, "warmup": warmup, "weight_decay": weight_decay, "seed": seed},
        **{"eval_every": eval_every, "eval_batches": eval_batches, "target": target, "grad_clip": grad_clip},
        "optimizer": "AdamW(betas=(0.9, 0.95)), linear warmup, cosine decay to 0.1·lr",
        **({"lr_scale": lr_scale} if lr_scale else {}),  # absent when unused: earlier checkpoints still resume
        "data": "batch of step s drawn with generator(seed, 'train', s); test set generator(seed, 'test', 0..eval_batches-1)",
    }
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    t0 = time.perf_counter()
    with torch_threads(threads):
        torch.manual_seed(seed)
        opt = _optimizer(model, lr, weight_decay, lr_scale)
        result = TrainResult(settings=settings)
        start, train_s = 0, 0.0
        if checkpoint is not None and Path(checkpoint).exists():
            start, state = ckpt.load(checkpoint, model=model, optimizer=opt, settings=settings)
            result = TrainResult.from_dict({**state["result"], "settings": settings, "resumed_from": start})
            train_s = state["train_s"]
        earlier_wall = result.wall_s
        tests = [to_device(task.batch(batch_size, "test", generator(seed, "test", j)), device) for j in range(eval_batches)]
        aux = [m for m in model.modules() if hasattr(m, "aux_loss")]
        done = result.steps_to_target is not None or start >= steps
        bar = _Bar(progress, steps, start)
        model.train()
        running, count, tick = 0.0, 0, time.perf_counter()
        step = start
        try:
            while not done:
                b = to_device(task.batch(batch_size, "train", generator(seed, "train", step)), device)
                lr_now = lr_at(step, lr=lr, warmup=warmup, steps=steps)
                for group in opt.param_groups:
                    group["lr"] = lr_now * group["lr_scale"]
                value = _train_loss(model, b)  # the task loss; aux losses are added for the gradient only
                if not math.isfinite(loss_now := value.item()):
                    raise ValueError(_diverged("training loss", loss_now, step + 1, steps, lr_now, lr))
                opt.zero_grad(set_to_none=True)
                (value + _aux_loss(aux)).backward()
                if grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                try:
                    opt.step()
                except RuntimeError as e:  # an update too large for the parameters' dtype
                    if "overflow" not in str(e):
                        raise
                    raise ValueError(_diverged("update", "too large for float", step + 1, steps, lr_now, lr)) from e
                step += 1
                if callback is not None:
                    callback(Step(step, loss_now, lr_now, model, opt, b))
                running, count = running + loss_now, count + 1
                bar.advance(running / count)
                if step % eval_every == 0 or step == steps:
                    train_s += time.perf_counter() - tick
                    test_loss, test_metric = _evaluate(model, task, tests)
                    if not math.isfinite(test_loss):
                        raise ValueError(
                            _diverged("test loss", test_loss, step, steps, lr_at(step - 1, lr=lr, warmup=warmup, steps=steps), lr)
                        )
                    result.record(step, running / count, test_loss, test_metric, target=target)
                    running, count = 0.0, 0
                    done = result.steps_to_target is not None or step >= steps
                    bar.evaluated(result.final_metric)
                    if checkpoint is not None:
                        so_far = {**result.to_dict(), "settings": {}, "wall_s": earlier_wall + time.perf_counter() - t0}
                        state = {"result": so_far, "train_s": train_s}
                        ckpt.save(checkpoint, model=model, optimizer=opt, step=step, state=state, settings=settings)
                    tick = time.perf_counter()
        finally:
            bar.close()
    result.wall_s = round(earlier_wall + time.perf_counter() - t0, 3)
    result.steps_per_s = round(result.steps_done / train_s, 2) if train_s > 0 else float("nan")
    return result


class _Bar:
    """A rich progress bar with the latest loss and test metric (or nothing when ``enabled`` is False)."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.progress = None
        self.metric = float("nan")
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.description}"))
            self.progress = Progress(*columns, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("", total=total, completed=start)

    def advance(self, loss: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, description=f"loss {loss:.3f} · test metric {self.metric:.3f}")

    def evaluated(self, metric: float) -> None:
        self.metric = metric

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
