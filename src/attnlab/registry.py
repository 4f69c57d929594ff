"""Named classes of one kind (mechanisms, probes, edits, tasks, operators), found by a short name.

A kind lives in a package with one module per class; the modules are imported on first use, so
adding a file is all it takes to add a mechanism, probe, edit or task. Every class declares the
PAPERS.md numbers it comes from where it registers (``@register("entropy", paper="73, 68")``).

:func:`names` and :func:`available` list what attnlab offers across kinds (registries, backends
and masks), the lists ``attnlab list`` shows:

    >>> import attnlab
    >>> "entropy" in attnlab.names("probes"), sorted(attnlab.available())[:2]
    (True, ['backends', 'edits'])
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
import re

__all__ = ["KINDS", "Registry", "available", "check_paper", "names"]

KINDS = ("backends", "edits", "masks", "mechanisms", "operators", "probes", "tasks")
_PAPER = re.compile(r"(\d{1,2}(, \d{1,2})*)?")


def check_paper(paper, what: str) -> str:
    """``paper`` if it is PAPERS.md numbers as text (``"42"``, ``"73, 68"``; ``""`` for none), else a ValueError."""
    if not isinstance(paper, str) or not _PAPER.fullmatch(paper):
        raise ValueError(f'{what}: paper must be PAPERS.md numbers joined by \', \' (e.g. paper="73, 68", or ""), got paper={paper!r}')
    return paper


class Registry:
    """Classes registered by name with :meth:`register`, built with :meth:`create`.

    Args:
        kind: what the classes are (``"mechanism"``), for messages.
        package: the package whose modules register them (``"attnlab.mechanisms"``).
    """

    def __init__(self, kind: str, package: str):
        self.kind, self.package = kind, package
        self._classes: dict[str, type] = {}
        self._loaded = False

    def register(self, name: str, *, paper: str, **attrs):
        """Class decorator: register ``cls`` as ``name`` and set ``cls.name``, ``cls.paper`` and ``attrs`` on it.

        ``paper`` is the PAPERS.md numbers the class implements, as text (``"42"``, ``"73, 68"``,
        ``""`` for a baseline); ``attnlab list`` and docs/papers.md read it.
        """
        check_paper(paper, f"{self.kind} {name!r}")

        def deco(cls):
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is registered twice: {self._classes[name].__module__} and {cls.__module__}")
            cls.name, cls.paper = name, paper
            for k, v in attrs.items():
                setattr(cls, k, v)
            self._classes[name] = cls
            return cls

        return deco

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            pkg = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(pkg.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load()
        return sorted(self._classes)

    def lookup(self, name: str) -> type:
        """The class registered as ``name``; an unknown name raises ``ValueError`` with the closest ones."""
        self._load()
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} names are strings, got {name!r}: valid {self.kind}s are {', '.join(sorted(self._classes))}")
        if name not in self._classes:
            close = difflib.get_close_matches(name, list(self._classes), n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}{hint}: valid {self.kind}s are {', '.join(sorted(self._classes))}")
        return self._classes[name]

    def create(self, name: str, *, given: tuple[str, ...] = (), **options):
        """An instance of ``name``; options it does not take raise ``TypeError`` listing the ones it does.

        ``given`` names arguments the caller always passes (e.g. ``dim``, ``heads``), left out of
        the listing.
        """
        cls = self.lookup(name)
        params = inspect.signature(cls).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            bad = [k for k in options if k not in params]
            if bad:
                valid = [p for p in params if p not in given]
                close = [c for b in bad for c in difflib.get_close_matches(b, valid, n=1)]
                hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
                raise TypeError(
                    f"{self.kind} {name!r} has no option {', '.join(map(repr, bad))}{hint}: its options are {', '.join(valid) or 'none'}"
                )
        return cls(**options)


def names(kind: str) -> list[str]:
    """The names of one kind of thing attnlab offers, sorted: ``names("probes")``.

    ``kind`` is one of :data:`KINDS`: ``backends`` (what ``attend(backend=...)`` takes, besides
    ``"auto"``), ``edits``, ``masks`` (the predicates and factories of :mod:`attnlab.core.masks`),
    ``mechanisms``, ``operators``, ``probes`` or ``tasks``.
    """
    if kind == "backends":
        from attnlab.core import backends

        return sorted(backends.BACKENDS)
    if kind == "masks":
        from attnlab.core import masks

        return sorted(n for n in masks.__all__ if isinstance(getattr(masks, n), masks.Mask) or _is_factory(getattr(masks, n)))
    if kind in KINDS:
        return importlib.import_module(f"attnlab.{kind}").registry.names()
    close = difflib.get_close_matches(str(kind), KINDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown kind {kind!r}{hint}: choose one of {', '.join(KINDS)}")


def available() -> dict[str, list[str]]:
    """``{kind: names(kind)}`` for every kind in :data:`KINDS`."""
    return {kind: names(kind) for kind in KINDS}


def _is_factory(obj) -> bool:
    return callable(obj) and not isinstance(obj, type)
