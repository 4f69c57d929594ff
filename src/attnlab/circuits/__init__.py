"""Circuits: which heads, positions, OV components and neurons carry a model's answer.

Activation, path and attribution patching and direct logit attribution (papers 5, 57); QK/OV
composition (45); neuron paths by integrated gradients (69); NormGrad saliency (10); head
importance and attention offsets (52).

A "run" package like :mod:`attnlab.runs`: its functions run models. Activations are read and
written through the hook graph (:func:`attnlab.capture`, :func:`attnlab.intervene`; docs: "Hook
points"), MLP neurons through a pre-hook on the down projection
(:func:`attnlab.circuits.neurons.replace_neurons`).

Shapes: ``B`` pairs in a batch, ``T`` tokens, ``C`` model width, ``H`` query heads, ``Hkv``
key/value heads, ``D`` head dim, ``I`` MLP width, ``V`` vocabulary, ``L`` layers.
"""

from attnlab.circuits.attribution import agreement, attribution_patching
from attnlab.circuits.composition import component_scores, composition_scores, folded_weights, ov_component_edit, ov_svd
from attnlab.circuits.dla import DLAResult, direct_logit_attribution
from attnlab.circuits.heads import AttentionOffset, gradient_importance, pruning_importance
from attnlab.circuits.metrics import answer_prob, logit_diff, normalised
from attnlab.circuits.neurons import NeuronPath, ablate_neurons, layer_ig, neuron_path, path_ig, replace_neurons, target_prob
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
from attnlab.circuits.patching import PatchResult, activation_patching, patch, patch_heads
from attnlab.circuits.path import path_patching, path_patching_sweep
from attnlab.circuits.saliency import normgrad
from attnlab.circuits.weights import HeadWeights, head_weights

__all__ = [
    "AttentionOffset",
    "DLAResult",
    "HeadWeights",
    "NeuronPath",
    "Pairs",
    "PatchResult",
    "ablate_neurons",
    "activation_patching",
    "agreement",
    "answer_prob",
    "attribution_patching",
    "colored_objects_pairs",
    "component_scores",
    "composition_scores",
    "direct_logit_attribution",
    "folded_weights",
    "from_ids",
    "from_records",
    "gradient_importance",
    "head_weights",
    "induction_pairs",
    "ioi_pairs",
    "layer_ig",
    "load_pairs",
    "logit_diff",
    "multiple_choice_pairs",
    "neuron_path",
    "normalised",
    "normgrad",
    "ov_component_edit",
    "ov_svd",
    "patch",
    "patch_heads",
    "path_ig",
    "path_patching",
    "path_patching_sweep",
    "pruning_importance",
    "replace_neurons",
    "target_prob",
]
