"""What ``attnlab scan`` runs when not told: names only, no torch, so the CLI's help can quote them.

:mod:`attnlab.runs.scan` fits these to a model (:func:`attnlab.runs.scan.plan_scan`).
"""

__all__ = ["DEFAULT_NEEDLE_LENGTHS", "DEFAULT_PROBES", "SAMPLE_TOKENS"]

DEFAULT_PROBES = ("sink", "entropy", "patterns", "extreme", "layer_importance", "retrieval")
DEFAULT_NEEDLE_LENGTHS = (512, 768)  # needle trial prompts in tokens, those that fit the model
SAMPLE_TOKENS = 1024  # attnlab scan's built-in sample text is cut to this (or the model's positions)
