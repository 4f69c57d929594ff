"""The one ``key=value`` syntax of attnlab's command line and specs.

- :func:`parse_options`: ``"key=value,key=value"`` -> ``{key: value}`` (``--task-option``,
  ``--mechanism-option``).
- :func:`parse_spec`: ``"name"`` or ``"name:key=value,..."`` -> ``(name, options)`` (edit specs
  such as ``drop_attention:top=4``).
- :func:`parse_value`: one value, typed: ``true``/``false``, ``none``/``null``, an int, a float;
  ``a+b+c`` is a list and ``a-b`` an inclusive range of ints (``layers=10-12+20`` is
  ``[10, 11, 12, 20]``); anything else stays a string (``mode=zero``, ``heads=L18H6``).

:func:`format_options` and :func:`format_spec` write them back, so a parsed spec can be saved and
read again. Every malformed input raises ``ValueError`` saying what was wrong and what is right.

    >>> parse_spec("head_mask:layers=1-3+7,mode=zero")
    ('head_mask', {'layers': [1, 2, 3, 7], 'mode': 'zero'})
    >>> parse_options("pairs=8,lr=3e-4,causal=false")
    {'pairs': 8, 'lr': 0.0003, 'causal': False}
"""

from __future__ import annotations

import math
import re

__all__ = ["format_options", "format_spec", "format_value", "parse_options", "parse_spec", "parse_value"]

MAX_RANGE = 100_000  # longest a-b range: a typo such as 0-99999999 fails instead of filling memory
_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_RANGE = re.compile(r"(\d+)-(\d+)")
_WORDS = {"true": True, "false": False, "none": None, "null": None}
_OPTIONS_FORM = "key=value,key=value"
_SPEC_FORM = "name or name:key=value,key=value"


def _fail(what: str, text: str, problem: str, form: str, example: str):
    raise ValueError(f"malformed {what} {text!r}: {problem}: {what} takes {form} (e.g. {example})")


def _scalar(text: str):
    low = text.lower()
    if low in _WORDS:
        return _WORDS[low]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_value(text: str):
    """One option value, typed (see the module docstring): ``"3"`` -> 3, ``"3+5-7"`` -> ``[3, 5, 6, 7]``.

    Raises:
        ValueError: an empty value or list item, or a range ``a-b`` with ``a > b`` or more than
            :data:`MAX_RANGE` items.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_value takes a string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise ValueError("an option value is empty: write key=value with a value (e.g. top=4)")
    scalar = _scalar(text)
    if not isinstance(scalar, str):  # a number such as 1e+5 is a number, not a list
        return scalar
    if "+" not in text and not _RANGE.fullmatch(text):
        return scalar
    out = []
    for item in (x.strip() for x in text.split("+")):
        if not item:
            raise ValueError(f"{text!r} has an empty list item: join items with single '+' (e.g. layers=3+4+5)")
        m = _RANGE.fullmatch(item)
        if m:
            a, b = int(m[1]), int(m[2])
            if a > b or b - a >= MAX_RANGE:
                raise ValueError(f"{item!r} is not a range: write a-b with a <= b and at most {MAX_RANGE} items (e.g. layers=10-20)")
            out.extend(range(a, b + 1))
        else:
            out.append(_scalar(item))
    return out


def parse_options(text: str, *, what: str = "options", example: str = "top=4,mode=zero") -> dict:
    """``{key: value}`` from ``"key=value,key=value"``; values as :func:`parse_value` reads them.

    Args:
        text: the options; blank parts (``"a=1,"``) are ignored, so ``""`` gives ``{}``.
        what: what the text is, for errors (``"--task-option"``).
        example: a valid example, for errors.

    Raises:
        ValueError: a part without ``=``, a key that is not a name, an empty or malformed value,
            or a key given twice.
    """
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string, got {type(text).__name__}")
    return _options(text, text, what, _OPTIONS_FORM, example)


def _options(text: str, whole: str, what: str, form: str, example: str) -> dict:
    out: dict = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = (x.strip() for x in part.partition("="))
        if not sep:
            _fail(what, whole, f"{part.strip()!r} is not key=value", form, example)
        if not key or not value:
            _fail(what, whole, f"{part.strip()!r} needs a key and a value", form, example)
        if not key.isidentifier():
            _fail(what, whole, f"the key {key!r} is not a name (letters, digits, _)", form, example)
        if "=" in value:
            _fail(what, whole, f"the value {value!r} holds '='; separate options with ','", form, example)
        if key in out:
            _fail(what, whole, f"{key!r} is given twice", form, example)
        try:
            out[key] = parse_value(value)
        except ValueError as e:
            _fail(what, whole, f"{key}: {e}", form, example)
    return out


def parse_spec(text: str, *, what: str = "spec", example: str = "drop_attention:top=4") -> tuple[str, dict]:
    """``(name, options)`` from ``"name"`` or ``"name:key=value,..."``.

    ``name`` is lower-case letters, digits and ``_`` (a registered name); the options are read as
    :func:`parse_options` reads them.

    Raises:
        ValueError: a malformed name or malformed options.
    """
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string, got {type(text).__name__}")
    name, _, opts = text.strip().partition(":")
    if not _NAME.fullmatch(name):
        _fail(what, text, f"{name!r} is not a name (lower-case letters, digits, _)", _SPEC_FORM, example)
    return name, _options(opts, text, what, _SPEC_FORM, example)


def format_value(value) -> str:
    """The text :func:`parse_value` reads back as ``value`` (a bool, None, int, finite float, str or list of them)."""
    if isinstance(value, (list, tuple, range)):
        items = [format_value(x) for x in value]
        if not items or any(isinstance(x, (list, tuple, range)) for x in value):
            raise ValueError(f"a list option must hold one or more scalars, got {value!r}")
        if len(items) == 1 or any("+" in x or _RANGE.fullmatch(x) for x in items):
            raise ValueError(f"{value!r} cannot be written as a+b+...: it has one item, or an item with '+' or '-'")
        return "+".join(items)
    if value is None or isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} cannot be written as an option value: use a finite float")
        return repr(value)
    if isinstance(value, str):
        if not value or value != value.strip() or any(c in value for c in ",=") or parse_value(value) != value:
            raise ValueError(
                f"the string {value!r} would not read back as itself: it is empty or blank-padded, holds , or =, or reads as another type"
            )
        return value
    raise ValueError(f"an option value must be a bool, None, int, float, str or list, got {type(value).__name__}")


def format_options(options: dict) -> str:
    """``"key=value,key=value"`` that :func:`parse_options` reads back as ``options``."""
    for key in options:
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"an option key must be a name (letters, digits, _), got {key!r}")
    return ",".join(f"{k}={format_value(v)}" for k, v in options.items())


def format_spec(name: str, options: dict) -> str:
    """``"name"`` or ``"name:key=value,..."`` that :func:`parse_spec` reads back as ``(name, options)``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"a spec name is lower-case letters, digits and _, got {name!r}")
    return f"{name}:{format_options(options)}" if options else name
