"""The attention site: ``attend``, masks, backends, and the probe and edit protocols.

Shape legend used throughout attnlab: B batch, H query heads, Hkv key/value heads,
Tq/Tk query/key lengths, D head dim, Dv value head dim, C model dim.
"""

from attnlab.core import backends, masks
from attnlab.core.attend import attend, choose_backend
from attnlab.core.context import attach, attached
from attnlab.core.site import AttentionChunk, Edit, Probe, Site, site_matcher
from attnlab.core.spans import Span, Spans

__all__ = [
    "AttentionChunk",
    "Edit",
    "Probe",
    "Site",
    "Span",
    "Spans",
    "attach",
    "attached",
    "attend",
    "backends",
    "choose_backend",
    "masks",
    "site_matcher",
]
