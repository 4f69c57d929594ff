"""Shared pieces of edits: site/layer/head selection, a registry, and the ``name:key=value`` spec syntax."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from attnlab.core.site import Edit, Site, site_matcher
from attnlab.registry import Registry


class SiteEdit(Edit):
    """An edit that acts at chosen sites, layers and heads.

    Subclasses set ``stage`` (``"logits"``, ``"probs"`` or ``"output"``) and implement
    :meth:`function` (the function for one site). Optional: :meth:`prepare`, called by the
    evaluation harness with the input before each forward pass, for edits that must look at the
    input first (a calibration pass).

    Args:
        layers: layer indices to act on (None: every layer).
        heads: query-head indices to act on (None: every head), where the edit is per head.
        sites: site selection (a name, glob, list or predicate; None: every site).
    """

    stage = "output"
    name = ""

    def __init__(self, layers: Sequence[int] | None = None, heads: Sequence[int] | None = None, sites=None):
        self.layers = None if layers is None else sorted({int(x) for x in layers})
        self.heads = None if heads is None else sorted({int(x) for x in heads})
        self._match = site_matcher(sites)

    def acts_at(self, site: Site) -> bool:
        return self._match(site) and (self.layers is None or site.layer in self.layers)

    def at(self, site: Site) -> Callable | None:
        return self.function(site) if self.acts_at(site) else None

    def function(self, site: Site) -> Callable:
        raise NotImplementedError

    def prepare(self, model, input_ids) -> None:
        """Look at the input before the edited forward pass (default: nothing to do)."""

    def validate(self, sites: Sequence[Site]) -> None:
        """Raise ``ValueError`` if the edit names layers or heads the model does not have."""
        n_layers = len(sites)
        for layer in self.layers or []:
            if not 0 <= layer < n_layers:
                raise ValueError(f"{self.name}: layer {layer} is out of range: the model has layers 0..{n_layers - 1}")
        heads = sites[0].num_heads if sites else None
        for h in self.heads or []:
            if heads is not None and not 0 <= h < heads:
                raise ValueError(f"{self.name}: head {h} is out of range: the model has heads 0..{heads - 1}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={self.layers}, heads={self.heads})"


registry = Registry("edit", "attnlab.edits")


def register(name: str):
    """Class decorator: make an edit available as ``name`` in specs (``attnlab edit --edit name:...``)."""
    return registry.register(name)


def names() -> list[str]:
    """Registered edit names, sorted."""
    return registry.names()


def get(name: str, **options) -> SiteEdit:
    """An edit by name; unknown names raise ``ValueError``, unknown options ``TypeError``, listing the valid ones."""
    return registry.create(name, **options)


_SPEC = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*)(?::(?P<opts>.*))?$")


def parse(spec: str) -> SiteEdit:
    """An edit from a spec string: ``name`` or ``name:key=value,key=value``.

    Values are read as booleans (``true``/``false``), integers, floats or strings; lists are
    joined with ``+`` (``layers=3+4+5``, ``heads=L18H6+L17H3``) and ranges written ``a-b``
    (``layers=10-20``, inclusive). A head is written ``L{layer}H{head}``. Each edit turns the
    strings it receives into what it needs.

    Example:
        >>> parse("head_mask:layers=1+2,mode=zero").layers   # doctest: +SKIP
        [1, 2]
    """
    m = _SPEC.match(spec.strip())
    if not m:
        raise ValueError(f"malformed edit spec {spec!r}: expected name or name:key=value,key=value (e.g. drop_attention:top=4)")
    options = {}
    for part in (m["opts"] or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"malformed edit spec {spec!r}: {part!r} is not key=value")
        k, v = (x.strip() for x in part.split("=", 1))
        if not k or not v:
            raise ValueError(f"malformed edit spec {spec!r}: {part!r} needs a key and a value")
        options[k] = _value(v)
    return get(m["name"], **options)


def _value(v: str):
    if "+" in v:
        return [_value(x) for x in v.split("+")]
    if re.fullmatch(r"\d+-\d+", v):
        a, b = (int(x) for x in v.split("-"))
        return list(range(a, b + 1))
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def as_list(x) -> list | None:
    """A spec value or a Python argument as a list (None stays None)."""
    if x is None:
        return None
    return list(x) if isinstance(x, (list, tuple, range)) else [x]


def parse_heads(x) -> list[tuple[int, int]]:
    """``(layer, head)`` pairs from ``"L18H6"``, ``["L18H6", "L17H3"]`` or ``[(18, 6)]``."""
    out = []
    for item in as_list(x) or []:
        if isinstance(item, tuple) and len(item) == 2:
            out.append((int(item[0]), int(item[1])))
            continue
        m = re.fullmatch(r"L(\d+)H(\d+)", str(item))
        if not m:
            raise ValueError(f"a head is written L{{layer}}H{{head}} (e.g. L18H6) or given as a (layer, head) pair, got {item!r}")
        out.append((int(m[1]), int(m[2])))
    return out
