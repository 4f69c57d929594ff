"""Attach probes and edits to every attention call in a block of code.

Modules (attnlab's mechanisms, Hugging Face models running through attnlab) call
:func:`attnlab.core.attend` with their ``site``; they never pass probes or edits themselves.
Users attach them around a forward pass, TransformerLens-style, and they are gone on exit:

    >>> from attnlab.probes import Entropy
    >>> ent = Entropy()
    >>> with attach(probes=[ent]):            # doctest: +SKIP
    ...     model(x)
    >>> ent.result()                            # doctest: +SKIP

Contexts nest (inner ones add to outer ones) and are per thread and per async task
(``contextvars``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from attnlab.core.site import Edit, Probe

__all__ = ["attach", "attached"]

_ATTACHED: ContextVar[tuple[tuple[Probe, ...], tuple[Edit, ...]]] = ContextVar("attnlab_attached", default=((), ()))


@contextmanager
def attach(*, probes: Sequence[Probe] = (), edits: Sequence[Edit] = ()) -> Iterator[None]:
    """Run every ``attend`` call inside the block with these probes and edits as well.

    Edits attached by an outer block act before those of an inner block, and both before the
    edits passed to ``attend`` directly.
    """
    outer_p, outer_e = _ATTACHED.get()
    token = _ATTACHED.set((outer_p + tuple(probes), outer_e + tuple(edits)))
    try:
        yield
    finally:
        _ATTACHED.reset(token)


def attached() -> tuple[tuple[Probe, ...], tuple[Edit, ...]]:
    """The probes and edits attached by the enclosing :func:`attach` blocks."""
    return _ATTACHED.get()
