"""Probes: observers of attention at sites. Nouns: ``Entropy()``, ``Sink()``, ``Patterns()``.

Each probe is one file; ``attnlab scan --probes`` finds them by name (:func:`get`, :func:`names`).
"""

from attnlab.probes._base import Findings, SiteProbe, get, names, registry
from attnlab.probes.column_mass import ColumnMass
from attnlab.probes.entropy import Entropy
from attnlab.probes.extreme import Extreme
from attnlab.probes.layer_importance import LayerImportance
from attnlab.probes.patterns import Patterns
from attnlab.probes.retrieval import Retrieval
from attnlab.probes.sink import Sink
from attnlab.probes.visual_sensitivity import VisualSensitivity
from attnlab.probes.word_patch import WordToPatch

__all__ = [
    "ColumnMass",
    "Entropy",
    "Extreme",
    "Findings",
    "LayerImportance",
    "Patterns",
    "Retrieval",
    "Sink",
    "SiteProbe",
    "VisualSensitivity",
    "WordToPatch",
    "get",
    "names",
    "registry",
]
