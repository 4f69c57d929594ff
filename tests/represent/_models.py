"""Tiny models for the representation tests: a Llama with its residual basis permuted, and a character tokenizer."""

import copy

import torch

from tests.conftest import tiny_causal_lm


class CharTokenizer:
    """One token per character (ids 1..100): the same ids for every model of vocabulary 101; character offsets as a fast tokenizer's."""

    is_fast = True

    def __call__(self, text: str, **kw) -> dict:
        return {"input_ids": [1 + ord(c) % 100 for c in text], "offset_mapping": [(i, i + 1) for i in range(len(text))]}


def residual_permuted(model, perm: torch.Tensor):
    """A copy of a Llama whose residual stream is ``model``'s with its units permuted: state_copy = state[..., perm]."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if name.endswith(
                ("embed_tokens.weight", "q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight")
            ):
                p.copy_(p[:, perm])  # reads the residual: (out, C)
            elif name.endswith("lm_head.weight"):
                p.copy_(p[:, perm])
            elif name.endswith(("o_proj.weight", "down_proj.weight", "norm.weight", "layernorm.weight")):
                p.copy_(p[perm])  # writes the residual (C, in), or a per-unit norm weight (C,)
            else:
                raise AssertionError(f"no permutation rule for {name}")
    return out


def llama(seed: int = 0):
    torch.manual_seed(seed)
    return tiny_causal_lm("llama")
