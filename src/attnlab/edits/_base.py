"""Shared pieces of edits: site/layer/head selection, a registry, and the ``name:key=value`` spec syntax."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Sequence

from torch import Tensor

from attnlab.core.site import Edit, Site, site_matcher
from attnlab.heads import parse_heads  # noqa: F401  (edits take heads= as attnlab.edits.parse_heads reads them)
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
        edit = self.name or type(self).__name__
        self.layers = None if layers is None else sorted(set(integers(layers, "layers", edit)))
        self.heads = None if heads is None else sorted(set(integers(heads, "heads", edit)))
        self.site_selection = sites  # as given, for messages
        self._match = site_matcher(sites)

    def acts_at(self, site: Site) -> bool:
        return self._match(site) and (self.layers is None or site.layer in self.layers)

    def at(self, site: Site) -> Callable | None:
        return self.function(site) if self.acts_at(site) else None

    def function(self, site: Site) -> Callable:
        raise NotImplementedError

    def validate(self, sites: Sequence[Site]) -> None:
        """Raise ``ValueError`` if the edit names layers or heads the model does not have, or selects no site.

        An edit whose site selection (``sites=``) matches none of the model's sites, or whose
        layers and site selection have no site in common, would act nowhere: that is an error.
        An explicitly empty choice (``heads=[]``, ``layers=[]``, ``top=0``) is a deliberate no-op
        and passes.
        """
        n_layers = len(sites)
        for layer in self.layers or []:
            if not 0 <= layer < n_layers:
                raise ValueError(f"{self.name}: layer {layer} is out of range: the model has layers 0..{n_layers - 1}")
        heads = sites[0].num_heads if sites else None
        for h in self.heads or []:
            if heads is not None and not 0 <= h < heads:
                raise ValueError(f"{self.name}: head {h} is out of range: the model has heads 0..{heads - 1}")
        check_selects_a_site(self, sites, self.layers)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={self.layers}, heads={self.heads})"


def _site_names(sites: Sequence[Site]) -> str:
    names = [s.name for s in sites]
    return ", ".join(names) if len(names) <= 4 else f"{names[0]}, {names[1]}, ..., {names[-1]}"


def check_selects_a_site(edit: SiteEdit, sites: Sequence[Site], layers: Sequence[int] | None) -> None:
    """Raise ``ValueError`` when ``edit``'s site selection matches no site of ``sites``, or none of ``layers``.

    ``layers`` None: any layer; ``[]``: an explicit no-op, not checked.
    """
    if not sites or layers == []:
        return
    matched = [s for s in sites if edit._match(s)]
    given = getattr(edit, "site_selection", None)
    if not matched:
        raise ValueError(
            f"{edit.name}: sites={given!r} matches none of the model's {len(sites)} sites ({_site_names(sites)}): "
            "give a site name or glob such as sites=layers.1*.attn, or leave sites out for every site"
        )
    if layers is not None and not any(s.layer in layers for s in matched):
        raise ValueError(
            f"{edit.name}: layers={list(layers)} and sites={given!r} select no site in common "
            f"(the sites are in layers {sorted({s.layer for s in matched})}): the edit would act nowhere; change layers= or sites="
        )


def integers(values, name: str, edit: str = "") -> list[int]:
    """``values`` (one int or a list of them) as a list of Python ints; anything else raises ``TypeError``.

    numpy and torch integer scalars are accepted; bools, floats (``1.5``, ``inf``) and strings are refused.
    """
    out = []
    for x in as_list(values) or []:
        if not isinstance(x, numbers.Integral) and not isinstance(x, bool):
            try:
                x = operator.index(x)  # a numpy or torch integer scalar
            except TypeError:
                x = None
        if x is None or isinstance(x, bool) or not isinstance(x, numbers.Integral):
            raise TypeError(f"{edit + ': ' if edit else ''}{name} must be integers (e.g. {name}=3+4 or {name}=0-5), got {name}={values!r}")
        out.append(int(x))
    return out


def number(
    x, name: str, edit: str, *, low: float | None = None, high: float | None = None, low_open: bool = False, hint: str = ""
) -> float:
    """``x`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``), or a ``TypeError``/``ValueError`` naming it.

    Example:
        >>> number(2, "factor", "head_scale")
        2.0
    """
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{edit}: {name} must be a number, got {name}={x!r}{hint}")
    v = float(x)
    too_low = low is not None and (v <= low if low_open else v < low)
    if not math.isfinite(v) or too_low or (high is not None and v > high):
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"<= {high:g}")
        raise ValueError(f"{edit}: {name} must be a finite number{' ' + ' and '.join(bounds) if bounds else ''}, got {name}={x!r}{hint}")
    return v


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


def text_windows(tokenizer, text: str, windows: int, window: int, *, extra: int = 0, what: str = "the calibration text") -> list[Tensor]:
    """``windows`` consecutive windows ``[1, window + extra]`` of a shipped text or of ``text``, each a whole sequence.

    ``text`` is a shipped text's name (``lucrece``, ``sonnets``, ``tempest``) or raw text. Each
    window starts (and ends) as the tokenizer makes a sequence (:func:`attnlab.data.tokens.text_windows`:
    BOS first when it adds one); ``extra = 1`` makes each one position longer, for a perplexity
    window's last target.
    """
    from attnlab.data import TEXTS, tokens
    from attnlab.data import text as shipped

    return tokens.text_windows(tokenizer, shipped(text) if text in TEXTS else text, windows, window + extra, what=what)
