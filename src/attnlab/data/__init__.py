"""Public-domain texts shipped with attnlab (sources in ``SOURCES.md`` beside this file), and users' text files.

- :func:`sample_text`: Shakespeare's *The Tempest*, the default text of ``attnlab scan``.
- :func:`haystack`: the Sonnets followed by *The Rape of Lucrece*, the haystack of the
  needle-in-a-haystack retrieval probe.
- :func:`read_utf8`: a user's text or JSONL file, with a ValueError saying how to fix it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["haystack", "read_utf8", "sample_text", "text"]

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


def read_utf8(path: str | Path) -> str:
    """The text of a user's file; a missing file or one that is not UTF-8 is a ValueError naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist or is not a file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}): convert it, e.g. iconv -t UTF-8"
        ) from e
