"""Circuits: which heads and positions carry a model's answer (activation, path and attribution patching, direct logit attribution).

A "run" package like :mod:`attnlab.runs`: its functions run models. Activations are read and
written through the hook graph (:func:`attnlab.capture`, :func:`attnlab.intervene`; docs: "Hook points").

Shapes: ``B`` pairs in a batch, ``T`` tokens, ``C`` model width, ``H`` query heads, ``Hkv``
key/value heads, ``D`` head dim, ``V`` vocabulary, ``L`` layers.
"""

from attnlab.circuits.attribution import agreement, attribution_patching
from attnlab.circuits.dla import DLAResult, direct_logit_attribution
from attnlab.circuits.metrics import answer_prob, logit_diff, normalised
from attnlab.circuits.pairs import (
    Pairs,
    colored_objects_pairs,
    from_ids,
    from_records,
    induction_pairs,
    ioi_pairs,
    load_pairs,
    multiple_choice_pairs,
)
from attnlab.circuits.patching import PatchResult, activation_patching, patch
from attnlab.circuits.path import path_patching, path_patching_sweep
from attnlab.circuits.weights import HeadWeights, head_weights

__all__ = [
    "DLAResult",
    "HeadWeights",
    "Pairs",
    "PatchResult",
    "activation_patching",
    "agreement",
    "answer_prob",
    "attribution_patching",
    "colored_objects_pairs",
    "direct_logit_attribution",
    "from_ids",
    "from_records",
    "head_weights",
    "induction_pairs",
    "ioi_pairs",
    "load_pairs",
    "logit_diff",
    "multiple_choice_pairs",
    "normalised",
    "patch",
    "path_patching",
    "path_patching_sweep",
]
