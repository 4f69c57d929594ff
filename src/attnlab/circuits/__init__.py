"""Circuits: what heads, OV components and neurons do for an output (papers 45, 69, 10, 52).

Functions here run models (like :mod:`attnlab.runs`); activations are read and written through
the hook graph (:func:`attnlab.capture`, :func:`attnlab.intervene`; docs: "Hook points"), MLP
neurons through a pre-hook on the down projection (:func:`attnlab.circuits.neurons.replace_neurons`).

Shapes: ``B`` batch, ``T`` tokens, ``C`` model width, ``H`` query heads, ``D`` head dim,
``I`` MLP width, ``V`` vocabulary, ``L`` layers.
"""

from attnlab.circuits.composition import component_scores, composition_scores, folded_weights, ov_component_edit, ov_svd
from attnlab.circuits.heads import AttentionOffset, gradient_importance, pruning_importance
from attnlab.circuits.neurons import NeuronPath, ablate_neurons, layer_ig, neuron_path, path_ig, replace_neurons, target_prob
from attnlab.circuits.saliency import normgrad

__all__ = [
    "AttentionOffset",
    "NeuronPath",
    "ablate_neurons",
    "component_scores",
    "composition_scores",
    "folded_weights",
    "gradient_importance",
    "layer_ig",
    "neuron_path",
    "normgrad",
    "ov_component_edit",
    "ov_svd",
    "path_ig",
    "pruning_importance",
    "replace_neurons",
    "target_prob",
]
