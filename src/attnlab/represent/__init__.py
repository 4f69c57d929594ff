"""Representations across layers and models: linear probes, CKA, unit matching, token-group alignment.

Per-layer linear probes with a control task (paper 13), linear CKA and unit correlation from
streamed sums (:class:`CrossStats`), Hungarian matching, sparse (L1) prediction and spectral groups
of units (66), token-group and consecutive-layer cosine (35). Activations come from the hook graph
(:func:`attnlab.capture`), one batch at a time: every layer of a batch is folded into running sums
before the next batch runs.

Shapes: ``B`` examples in a batch, ``T`` tokens, ``C`` width, ``N`` rows (tokens or examples),
``L`` layers (``L + 1`` streams: the embeddings and each layer's output).
"""

from attnlab.represent.align import align_layers, check_spans, cosine
from attnlab.represent.datasets import BUILTIN, Dataset, builtin, tokenize_pairs
from attnlab.represent.datasets import load as load_dataset
from attnlab.represent.probe import probe_layers
from attnlab.represent.run import METHODS, cka_grid, run_represent
from attnlab.represent.similarity import CrossStats, linear_cka, pair_groups
from attnlab.represent.stream import layer_points, pool, states
from attnlab.represent.units import Match, match_units, permutation_null, sparse_prediction, spectral_groups

__all__ = [
    "BUILTIN",
    "METHODS",
    "CrossStats",
    "Dataset",
    "Match",
    "align_layers",
    "builtin",
    "check_spans",
    "cka_grid",
    "cosine",
    "layer_points",
    "linear_cka",
    "load_dataset",
    "match_units",
    "pair_groups",
    "permutation_null",
    "pool",
    "probe_layers",
    "run_represent",
    "sparse_prediction",
    "spectral_groups",
    "states",
    "tokenize_pairs",
]
