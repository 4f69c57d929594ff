"""Softmax attention backends, by name.

- ``reference``: explicit softmax in float32, the ground truth (:mod:`.reference`).
- ``sdpa``: PyTorch's fused kernel (:mod:`.sdpa`).
- ``flex``: FlexAttention, compiled; forward only on CPU, falls back to ``blocked`` there when
  gradients are needed (:mod:`.flex`).
- ``blocked``: attnlab's tiled online-softmax kernel that skips empty tiles (:mod:`.blocked`).

``auto`` is not a backend but a rule, applied by :func:`attnlab.core.attend`.
"""

from __future__ import annotations

import difflib

from attnlab.core.backends.base import Backend, Inputs
from attnlab.core.backends.blocked import Blocked
from attnlab.core.backends.flex import Flex
from attnlab.core.backends.reference import Reference, reference_probs
from attnlab.core.backends.sdpa import Sdpa

__all__ = ["BACKENDS", "Backend", "Blocked", "Flex", "Inputs", "Reference", "Sdpa", "get", "reference_probs"]

BACKENDS: dict[str, Backend] = {b.name: b for b in (Reference(), Sdpa(), Flex(), Blocked())}


def get(name: str | Backend) -> Backend:
    """A backend by name (or the backend itself, e.g. ``Blocked(q_tile=64)``)."""
    if not isinstance(name, str):
        if not callable(name) or not hasattr(name, "name"):
            raise TypeError(f"backend must be a name or a backend object, got {name!r}")
        return name
    if name not in BACKENDS:
        close = difflib.get_close_matches(name, [*BACKENDS, "auto"], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown backend {name!r}{hint}: choose one of {', '.join(['auto', *BACKENDS])}")
    return BACKENDS[name]
