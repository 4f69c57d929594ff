"""Edits: training-free changes of attention at sites. Verbs: ``mask_heads``, ``drop_attention``...

Each edit is one file: a :class:`SiteEdit` subclass registered by name, applied with
``attnlab.attach(edits=[...])`` (restored on exit) or ``attnlab edit --edit name:key=value``.
Stages run logits → probs → output; edits of one stage act in the order given.
"""

from attnlab.edits._base import SiteEdit, as_list, get, names, parse, parse_heads, register, registry

__all__ = ["SiteEdit", "as_list", "get", "names", "parse", "parse_heads", "register", "registry"]
