"""``sweep()``: train every mechanism on one task with several seeds, fairly, and tabulate mean ± 95% CI.

Fairness: every (mechanism, seed) run gets the same task, the same data and the same budget.

- Data: run ``seed`` draws the training batch of step ``s`` from ``generator(seed, "train", s)``
  and its test set from ``generator(seed, "test", j)``, so for one seed every mechanism sees the
  very same batches in the same order and is scored on the same test set.
- Budget: identical ``steps``, ``batch_size``, ``lr``, warmup, weight decay, clipping and
  evaluation schedule; the same model width, depth and heads. Mechanisms differ in parameter
  count, which the table reports.
- Initialisation: ``torch.manual_seed(seed)`` before the model is built; the embeddings are drawn
  first, so with one seed every mechanism starts from the same embedding table.

Runs are independent, so they go to a local process pool (spawn), Ray, or run one after another;
every executor gives the same numbers for the same seeds.
"""

from __future__ import annotations

import importlib
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import torch

from attnlab import tasks
from attnlab.models.tiny import TinyTransformer, check_mechanism
from attnlab.results import versions
from attnlab.tasks import Task
from attnlab.train.data import cores, generator
from attnlab.train.loop import train
from attnlab.train.result import SweepResult

__all__ = ["EXECUTORS", "RunSpec", "build_model", "make_task", "run_one", "sweep"]

EXECUTORS = ("process", "ray", "serial")
_TRAIN_OPTIONS = ("steps", "batch_size", "lr", "warmup", "weight_decay", "eval_every", "eval_batches", "target", "grad_clip", "device")


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep, plain data so that it travels to another process or a Ray worker."""

    task: str | type
    task_options: dict
    mechanism: str
    seed: int
    model_options: dict
    train_options: dict
    threads: int | None = None
    task_module: str | None = None


def make_task(spec_task: str | type, options: dict, module: str | None = None) -> Task:
    """The task of a run: a Task class called with ``options``, or a registered name (after importing ``module``)."""
    if isinstance(spec_task, type):
        return spec_task(**options)
    if module and module != "__main__":
        importlib.import_module(module)  # a task registered outside attnlab.tasks registers itself on import
    return tasks.get(spec_task, **options)


def build_model(task: Task, mechanism: str, model_options: dict | None = None) -> TinyTransformer:
    """A :class:`TinyTransformer` sized for ``task``, from a sample batch: its vocabulary or input width, length and outputs.

    Token inputs get ``vocab_size`` embeddings; float inputs ``[B, T, d]`` a linear input layer of
    width ``d``. Token targets get ``vocab_size`` logits; float targets ``[B]`` or ``[B, T]`` one
    output, ``[B, T, K]`` ``K`` outputs. A task may set ``causal = False`` to ask for an encoder.
    ``model_options`` override all of these.
    """
    b = task.batch(1, "train", generator(0, "shape", 0))
    continuous = b.inputs.dtype.is_floating_point
    outputs = (b.targets.shape[-1] if b.targets.dim() == 3 else 1) if b.targets.dtype.is_floating_point else task.vocab_size
    opts = {
        "max_len": task.seq_len,
        "causal": getattr(task, "causal", True),
        "input_dim": b.inputs.shape[-1] if continuous else None,
        **(model_options or {}),
    }
    return TinyTransformer(outputs, mechanism=mechanism, **opts)


def run_one(spec: RunSpec) -> dict:
    """Build the task and model of ``spec``, train it, and return the run as plain data."""
    task = make_task(spec.task, spec.task_options, spec.task_module)
    torch.manual_seed(spec.seed)
    model = build_model(task, spec.mechanism, spec.model_options)
    result = train(task, model, seed=spec.seed, progress=False, threads=spec.threads, **spec.train_options)
    return {"mechanism": spec.mechanism, "seed": spec.seed, **result.to_dict()}


def _seeds(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be a count >= 1 or a list of seeds, got seeds={seeds}")
        return list(range(seeds))
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out) or min(out) < 0:
        raise ValueError(f"seeds must be distinct ints >= 0, got seeds={list(seeds)}")
    return out


def sweep(
    task: str | type[Task],
    task_options: dict | None = None,
    mechanisms: Sequence[str] = ("mha",),
    seeds: int | Sequence[int] = 3,
    model_options: dict | None = None,
    train_options: dict | None = None,
    executor: str = "process",
    workers: int | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SweepResult:
    """Train each mechanism with each seed on ``task`` and tabulate the final test metric, mean ± 95% CI.

    Args:
        task: a registered task name (``"mqar"``), or a :class:`~attnlab.tasks.Task` class.
        task_options: the task's options (``{"pairs": 8}``).
        mechanisms: mechanism names (:func:`attnlab.models.tiny.sequence_mechanisms`).
        seeds: a number of seeds (``0 .. n-1``) or the seeds themselves.
        model_options: :class:`TinyTransformer` options (``dim``, ``heads``, ``layers``, ``mlp``, ...).
        train_options: :func:`attnlab.train.train` options (``steps``, ``batch_size``, ``lr``, ``target``, ...).
        executor: ``"process"`` (a local spawn pool), ``"ray"`` (needs ``pip install ray``), or ``"serial"``.
        workers: parallel runs (default: one per core, at most one per run).
        threads: torch threads per run (default: ``cores // workers``; serially, every core
            unless ``OMP_NUM_THREADS`` is set). Float sums depend on the thread count in the last
            bits, so equal ``threads`` give bit-identical runs under every executor.
        progress: called with ``(runs done, runs)`` as runs finish.

    Example:
        >>> result = sweep("mqar", {"pairs": 4}, ["mha", "linear"], seeds=3, train_options={"steps": 500})  # doctest: +SKIP
        >>> print(result.table())                                                                      # doctest: +SKIP
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}: choose from {', '.join(EXECUTORS)}")
    task_options, model_options, train_options = dict(task_options or {}), dict(model_options or {}), dict(train_options or {})
    bad = [k for k in train_options if k not in _TRAIN_OPTIONS]
    if bad:
        raise TypeError(
            f"train_options has {', '.join(map(repr, bad))}: the options are {', '.join(_TRAIN_OPTIONS)} (seeds come from seeds=)"
        )
    mechanisms = list(mechanisms)
    if not mechanisms or len(set(mechanisms)) != len(mechanisms):
        raise ValueError(f"mechanisms must be distinct names, at least one, got {mechanisms}")
    seeds = _seeds(seeds)
    sample = make_task(task, task_options)  # unknown tasks and options fail here, before any run starts
    causal = model_options.get("causal", getattr(sample, "causal", True))
    for m in mechanisms:  # and so do mechanisms that cannot be used
        check_mechanism(
            m, causal=causal, positions=model_options.get("positions", "learned"), options=model_options.get("mechanism_options")
        )
    module = None if isinstance(task, type) else type(sample).__module__
    n = len(mechanisms) * len(seeds)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive int or None, got workers={workers!r}")
    workers = 1 if executor == "serial" else min(workers or cores(), n)
    if threads is None and executor == "process":
        threads = max(1, cores() // workers)
    specs = [RunSpec(task, task_options, m, s, model_options, train_options, threads, module) for m in mechanisms for s in seeds]
    t0 = time.perf_counter()
    runs = _EXECUTE[executor](specs, workers, progress or (lambda done, total: None))
    settings = {
        "task": task if isinstance(task, str) else f"{task.__module__}.{task.__qualname__}",
        "task_options": task_options,
        "task_settings": runs[0]["settings"]["task"],
        "mechanisms": mechanisms,
        "seeds": seeds,
        "model_options": model_options,
        "train_options": train_options,
        "train": {k: v for k, v in runs[0]["settings"].items() if k not in ("task", "model", "seed")},
        "executor": executor,
        "workers": workers,
        "threads_per_run": threads,
    }
    meta = {"settings": settings, "versions": versions(), "wall_s": round(time.perf_counter() - t0, 2)}
    return SweepResult.from_runs(runs, meta)


def _serial(specs, workers, progress):
    out = []
    for i, spec in enumerate(specs):
        out.append(run_one(spec))
        progress(i + 1, len(specs))
    return out


def _process(specs, workers, progress):
    ctx = multiprocessing.get_context("spawn")
    out: list[dict | None] = [None] * len(specs)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(run_one, spec): i for i, spec in enumerate(specs)}
        for done, f in enumerate(as_completed(futures), 1):
            out[futures[f]] = f.result()
            progress(done, len(specs))
    return out


def _ray(specs, workers, progress):
    try:
        import ray
    except ImportError as e:
        raise ImportError("the ray executor needs Ray: pip install ray (or use the process executor)") from e
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)  # RAY_ADDRESS in the environment joins a cluster
    remote = ray.remote(num_cpus=specs[0].threads or 1)(run_one)  # Ray sets OMP_NUM_THREADS to num_cpus
    pending = {remote.remote(spec): i for i, spec in enumerate(specs)}
    out: list[dict | None] = [None] * len(specs)
    done = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            out[pending.pop(ref)] = ray.get(ref)
            done += 1
            progress(done, len(specs))
    return out


_EXECUTE = {"serial": _serial, "process": _process, "ray": _ray}
