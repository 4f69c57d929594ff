"""Public-domain texts shipped with attnlab (sources in ``SOURCES.md`` beside this file).

- :func:`sample_text`: Shakespeare's *The Tempest*, the default text of ``attnlab scan``.
- :func:`haystack`: the Sonnets followed by *The Rape of Lucrece*, the haystack of the
  needle-in-a-haystack retrieval probe.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["haystack", "sample_text", "text"]

TEXTS = ("tempest", "sonnets", "lucrece")


def text(name: str) -> str:
    """One shipped text by name (``tempest``, ``sonnets``, ``lucrece``)."""
    if name not in TEXTS:
        raise ValueError(f"unknown text {name!r}: choose from {', '.join(TEXTS)}")
    return resources.files(__name__).joinpath(f"{name}.txt").read_text(encoding="utf-8")


def sample_text() -> str:
    """*The Tempest* (public domain), the default text of ``attnlab scan``."""
    return text("tempest")


def haystack() -> str:
    """The Sonnets and *The Rape of Lucrece* (public domain): about 50k tokens of verse."""
    return text("sonnets") + "\n\n" + text("lucrece")
