"""Training settings by name: quick defaults, and the papers' settings as presets (``attnlab train --preset``).

timm-style: a preset is a dict of differences from :data:`DEFAULTS` (model and trainer options)
and from the task's own defaults (``task_options``), with the paper it comes from (``paper``, a
PAPERS.md number) and what it is (``about``). :func:`resolve` lays the settings over each other:

    DEFAULTS  <  the preset (or, without one, the task's QUICK differences)  <  options given

Without ``--preset`` a run uses :data:`QUICK`: task sizes (and for the slower tasks fewer steps)
that train in about a minute on 2 CPU cores, so ``attnlab train --task mqar`` finishes while you
watch. A preset gives the paper's sizes instead, the task's own defaults where it names none.
Nothing here imports torch: ``attnlab train --help`` lists the presets at no cost.

    >>> resolve("zoology_mqar", None, {}, {"steps": 100})["task_options"]
    {'vocab_size': 8192, 'seq_len': 128, 'pairs': 16}
"""

from __future__ import annotations

import difflib

__all__ = ["DEFAULTS", "PRESETS", "QUICK", "describe", "resolve"]

DEFAULTS: dict = {
    "steps": 1000,  # optimizer steps
    "batch_size": 32,  # sequences per step
    "lr": 1e-3,  # peak learning rate: AdamW, warmup then cosine
    "warmup": None,  # warmup steps; None: a tenth of steps
    "weight_decay": 0.1,  # AdamW weight decay on matrices
    "eval_every": 100,  # evaluate and checkpoint every this many steps
    "eval_batches": 4,  # test batches per evaluation
    "dim": 64,  # model width
    "heads": 4,  # attention heads
    "layers": 2,  # blocks
    "mlp": True,  # feed-forward layers (False: attention only)
    "positions": "learned",  # learned, none or rope
}
"""The model and trainer options of a run that names none, before presets."""

QUICK: dict[str, dict] = {
    "mqar": {"task_options": {"vocab_size": 64, "seq_len": 32, "pairs": 4}},  # Zoology's vocabulary of 8192 trains 4x slower
    "bigram_backcopy": {"task_options": {"seq_len": 64}, "steps": 300},
    "copy_far": {"task_options": {"seq_len": 64}, "steps": 300},
    "needle": {"task_options": {"seq_len": 64}, "steps": 300},
    "gcog_lite": {"steps": 500},
}
"""Per task, the differences that make a run without ``--preset`` take about a minute on 2 CPU cores."""

PRESETS: dict[str, dict] = {
    "zoology_mqar": {
        "paper": "56",
        "about": "MQAR as Zoology's check: vocabulary 8192, L=128, 16 pairs, 2-layer d=64 (lr 3e-3, batch 64, 1500 steps as bench/repro/mqar.py)",
        "task": "mqar",
        "task_options": {"vocab_size": 8192, "seq_len": 128, "pairs": 16},
        "lr": 3e-3,
        "batch_size": 64,
        "steps": 1500,
    },
    "fit_copy": {
        "paper": "11",
        "about": "FIT's check: copy a token from group 1 to group 8 at L=512",
        "task": "copy_far",
        "task_options": {"seq_len": 512, "groups": 8},
    },
    "active_dormant": {
        "paper": "68",
        "about": "Bigram-Backcopy, sequences of 256, a 1-layer 1-head model (attention + MLP), lr 3e-3",
        "task": "bigram_backcopy",
        "task_options": {"seq_len": 256},
        "layers": 1,
        "heads": 1,
        "lr": 3e-3,
    },
    "icl_transition": {
        "paper": "41",
        "about": "bursty in-context classification (N=8, K=512, L=32, B=4): a 2-layer attention-only 1-head net, lr 1e-3, no weight decay, batch 128",
        "task": "icl_classification",
        "task_options": {},
        "layers": 2,
        "heads": 1,
        "mlp": False,
        "weight_decay": 0.0,
        "batch_size": 128,
    },
    "scan_snap": {
        "paper": "3",
        "about": "Scan and Snap: a 1-layer attention-only 1-head model with no positional encoding (one learning rate for all)",
        "task": "scan_snap",
        "task_options": {},
        "layers": 1,
        "heads": 1,
        "mlp": False,
        "positions": "none",
    },
}
"""The papers' settings by name, as differences from :data:`DEFAULTS` and the task's defaults."""

_ABOUT = ("paper", "about", "task", "task_options")  # what a preset holds besides option differences


def describe() -> str:
    """One line per preset: ``name (paper N, task): about``, for help texts."""
    return "; ".join(f"{name} (paper {p['paper']}, {p['task']}): {p['about']}" for name, p in PRESETS.items())


def resolve(preset: str | None, task, task_options: dict, given: dict) -> dict:
    """The settings of a run: ``{"task", "task_options", **DEFAULTS}`` with the preset (or QUICK) and ``given`` laid over.

    Args:
        preset: a name in :data:`PRESETS`, or None (the task's :data:`QUICK` differences).
        task: the task given (a registered name, or a Task class), or None to take the preset's.
        task_options: task options given; they win over the preset's or QUICK's, key by key.
        given: model and trainer options given (None values count as not given).

    Raises:
        ValueError: an unknown preset (with the closest names), no task at all, a task other
            than the preset's, or an option :data:`DEFAULTS` does not know.
    """
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown training option {unknown[0]!r}: choose from {', '.join(DEFAULTS)}")
    if preset is None:
        if task is None:
            raise ValueError("no task: give --task NAME (attnlab list tasks) or --preset NAME")
        layer = QUICK.get(task, {}) if isinstance(task, str) else {}
    else:
        if preset not in PRESETS:
            close = difflib.get_close_matches(preset, PRESETS, n=3, cutoff=0.4)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ValueError(f"unknown preset {preset!r}: {hint}choose from {', '.join(PRESETS)}")
        layer = PRESETS[preset]
        if task is not None and task != layer["task"]:
            raise ValueError(
                f"--preset {preset} is paper {layer['paper']}'s setting of task {layer['task']}, got --task {task}: "
                f"leave --task out, or give a preset of {task} (or none)"
            )
        task = layer["task"]
    options = {k: v for k, v in layer.items() if k not in _ABOUT}
    return {
        "task": task,
        "task_options": {**layer.get("task_options", {}), **task_options},
        **DEFAULTS,
        **options,
        **{k: v for k, v in given.items() if v is not None},
    }
