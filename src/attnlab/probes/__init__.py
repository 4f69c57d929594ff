"""Probes: observers of attention at sites. Nouns: ``Entropy()``, ``ColumnMass()``."""

from attnlab.probes.column_mass import ColumnMass
from attnlab.probes.entropy import Entropy

__all__ = ["ColumnMass", "Entropy"]
