"""Named classes of one kind (mechanisms, probes, edits, tasks), found by a short name.

A kind lives in a package with one module per class; the modules are imported on first use, so
adding a file is all it takes to add a mechanism, probe, edit or task.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil

__all__ = ["Registry"]


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

    def register(self, name: str, **attrs):
        """Class decorator: register ``cls`` as ``name`` and set ``cls.name`` and ``attrs`` on it."""

        def deco(cls):
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is registered twice: {self._classes[name].__module__} and {cls.__module__}")
            cls.name = name
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
                raise TypeError(
                    f"{self.kind} {name!r} has no option {', '.join(map(repr, bad))}: its options are {', '.join(valid) or 'none'}"
                )
        return cls(**options)
