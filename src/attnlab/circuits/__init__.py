"""Circuits: which heads and positions carry a model's answer (activation, path and attribution patching, direct logit attribution).

A "run" package like :mod:`attnlab.runs`: its functions run models. Activations are read and
written through the hook graph (:func:`attnlab.capture`, :func:`attnlab.intervene`; docs: "Hook points").

Shapes: ``B`` pairs in a batch, ``T`` tokens, ``C`` model width, ``H`` query heads, ``Hkv``
key/value heads, ``D`` head dim, ``V`` vocabulary, ``L`` layers.
"""

from attnlab.circuits.weights import HeadWeights, head_weights

__all__ = ["HeadWeights", "head_weights"]
