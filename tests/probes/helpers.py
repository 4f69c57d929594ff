"""Shared helpers for probe tests: eager attention matrices of a tiny model, and running probes on it."""

import torch

from attnlab.core import attach
from attnlab.models import hf
from tests.conftest import tiny_causal_lm


def eager_and_instrumented(ids, family="llama", **overrides):
    """A tiny model's eager attention matrices ``[layers][B, H, T, T]`` and the instrumented model."""
    model = tiny_causal_lm(family, **overrides)
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True, output_hidden_states=True)
    return [a.double() for a in out.attentions], out.hidden_states, hf.instrument(model)


def run(model, ids, probes, tokens=None):
    """One forward pass with probes attached, with the scan's begin/end calls around it."""
    for p in probes:
        p.begin(ids, tokens or [str(t) for t in ids[0].tolist()])
    with torch.no_grad(), attach(probes=probes):
        model(input_ids=ids)
    for p in probes:
        p.end()
