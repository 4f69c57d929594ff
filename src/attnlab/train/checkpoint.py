"""Training checkpoints: model, optimizer, step, curves and RNG state in one file, written atomically.

A run resumed from a checkpoint continues exactly as if it had not stopped: batches are seeded by
step (:func:`attnlab.train.data.generator`), the learning rate is a function of the step, and the
optimizer state and torch's RNG state are restored. A checkpoint refuses to resume a run whose
settings differ from the ones that wrote it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from attnlab.results import atomic_path

__all__ = ["FORMAT", "load", "save"]

FORMAT = "attnlab.train.checkpoint/1"


def save(path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, state: dict, settings: dict) -> Path:
    """Write a checkpoint atomically (a crash mid-write leaves the previous one intact)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a directory: give a file name (e.g. {path / 'checkpoint.pt'})")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "format": FORMAT,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "state": state,
        "settings": settings,
    }
    with atomic_path(path) as tmp:  # whole or not at all, with the umask's permissions (not mkstemp's 0600)
        torch.save(data, tmp)
    return path


def load(path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer, settings: dict) -> tuple[int, dict]:
    """Restore model, optimizer and RNG from ``path``; returns ``(step, state)``.

    Raises ``ValueError`` if the file is not a checkpoint, was written with other settings, or
    holds another model.
    """
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a file that is not a checkpoint
        raise ValueError(f"{path} is not an attnlab training checkpoint ({type(e).__name__}): remove it or give another path") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an attnlab training checkpoint of format {FORMAT}")
    saved = data["settings"]
    diff = [
        f"{k}={saved.get(k)!r} (now {settings.get(k)!r})" for k in sorted(set(saved) | set(settings)) if saved.get(k) != settings.get(k)
    ]
    if diff:
        raise ValueError(
            f"checkpoint {path} was written with other settings: {', '.join(diff)}; use the same settings or another checkpoint path"
        )
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as e:
        raise ValueError(f"checkpoint {path} holds another model: {str(e).splitlines()[0]}") from e
    optimizer.load_state_dict(data["optimizer"])
    torch.set_rng_state(data["rng"])
    return int(data["step"]), data["state"]
