"""Shared pieces of edits: site/layer/head selection, a registry, and the ``name:key=value`` spec syntax."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from torch import Tensor

from attnlab.core.site import Edit, Site, site_matcher
from attnlab.registry import Registry
from attnlab.spec import parse_spec, parse_value


class SiteEdit(Edit):
    """An edit that acts at chosen sites, layers and heads.

    Subclasses set ``stage`` (``"logits"``, ``"probs"`` or ``"output"``) and implement
    :meth:`function` (the function for one site). Edits that must see something first declare it
    through the events of :class:`~attnlab.core.Edit` (``input_probe``/``prepared`` for the
    input, ``calibration``/``calibrated`` once per model); runs (:mod:`attnlab.runs`) call them.

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


def register(name: str, *, paper: str):
    """Class decorator: make an edit available as ``name`` in specs (``attnlab edit --edit name:...``).

    ``paper``: the PAPERS.md numbers it comes from, as text (``"47, 12"``).
    """
    return registry.register(name, paper=paper)


def names() -> list[str]:
    """Registered edit names, sorted."""
    return registry.names()


def get(name: str, **options) -> SiteEdit:
    """An edit by name; unknown names raise ``ValueError``, unknown options ``TypeError``, listing the valid ones."""
    return registry.create(name, **options)


def parse(spec: str) -> SiteEdit:
    """An edit from a spec string: ``name`` or ``name:key=value,key=value`` (:mod:`attnlab.spec`).

    Values are read as booleans (``true``/``false``), ``none``, integers, floats or strings; lists
    are joined with ``+`` (``layers=3+4+5``, ``heads=L18H6+L17H3``) and ranges written ``a-b``
    (``layers=10-20``, inclusive). A head is written ``L{layer}H{head}``. Each edit turns the
    strings it receives into what it needs.

    Example:
        >>> parse("head_mask:layers=1+2,mode=zero").layers   # doctest: +SKIP
        [1, 2]
    """
    name, options = parse_spec(spec, what="edit spec", example="drop_attention:top=4")
    return get(name, **options)


_value = parse_value  # the one value syntax (attnlab.spec), under the name edits import


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


def text_windows(tokenizer, text: str, windows: int, window: int, *, extra: int = 0, what: str = "the calibration text") -> list[Tensor]:
    """``windows`` consecutive token windows ``[1, window + extra]`` (starting every ``window`` tokens) of a shipped text or of ``text``.

    ``text`` is a shipped text's name (``lucrece``, ``sonnets``, ``tempest``) or raw text;
    ``extra = 1`` gives each window its next token too (a perplexity window's targets).
    """
    from attnlab.data import TEXTS
    from attnlab.data import text as shipped

    ids = tokenizer(shipped(text) if text in TEXTS else text, return_tensors="pt")["input_ids"][0]
    need = windows * window + extra
    if ids.numel() < need:
        raise ValueError(f"{what} has {ids.numel()} tokens, fewer than windows × window{f' + {extra}' if extra else ''} = {need}")
    return [ids[w * window : (w + 1) * window + extra][None] for w in range(windows)]
