"""Benchmark attnlab's sequence mechanisms, and public implementations of the same layers, on CPU.

What (issue 4): every registered mechanism that is not a vision one (its layout does not start
with ``[B, H, W, C]``) at T = 512, 2048 and 8192 tokens (dim 256, 8 heads, float32, batch 1):
forward time and peak memory (eval mode, no grad) and forward+backward time and peak memory
(train mode; ``output.sum().backward()`` into the parameters and the first input). Peers of
the same shape sit under the mechanism they are compared with:

- x-transformers ``Attention`` (its default einsum path, and ``flash=True``: torch's SDPA)
  vs our ``mha``;
- local-attention ``LocalMHA`` (causal, exact window of 256, no rotary) vs our ``mha`` with
  ``masks.sliding_window(256)`` (the query and the 256 keys before it);
- routing-transformer ``SelfAttention`` (4 local and 4 k-means heads, shared QK, no relative
  positions) vs our ``routing`` with the same window and cluster size;
- transformers' ``Mamba2Mixer`` (its pure-PyTorch CPU path: the chunked SSD scan, chunk 64;
  8 heads of 64, state 16, expand 2) vs our ``selective_ssm`` of the same shape.

The sequence mixers beyond attention (issue 22: ``base_conv``, ``based``, ``hyena``,
``linear_rnn``, ``selective_ssm``, ``tensor_fast``) run at T = 2048, 8192 and 32768
(``MIXER_SIZES``); ``--only`` measures a few mechanisms (and their peers) by name, e.g.
``--only base_conv,based,hyena,linear_rnn,selective_ssm,tensor_fast --out mechanisms-mixers``.

How (``bench/harness.py``, shared with ``bench/vision.py``): the fastest of repeated runs
after a warm-up, peak memory from the resident set's high-water mark; the two times of every
ratio a check reads (ours and a peer's, a claim's two largest sizes) are taken again in turn,
in alternating rounds, so that both see the same load; glibc malloc's thresholds are fixed. Each size's cost is predicted
before it runs, from the size before it (the first from a probe at a quarter of it), scaled as
``T^p`` with ``p`` = max(2, the power of ``T`` in the registry's time string) for time and
max(1, that power) × 1.15 for memory (peers: 2); a size predicted
to take more than 60 s per forward+backward call or more than 6 GiB is skipped, with the
reason in the table. A backward that raises is recorded as "no backward" with the error.
Mechanisms that need other inputs than ``x [B, T, C]`` get the inputs listed in ``SPECIAL``
(tensor, which is cubic, runs at T = 128, 256, 512); the table's note column says what they
got. ``VARIANTS`` adds rows for other options: the recurrent forms of linear and normalized
(the forms whose registry time is linear) and mha under the sliding window.

Checks (the table's last column, and the notes):

- a mechanism whose registry time string claims less than quadratic time (``T^p``, p < 2)
  must scale ``t(4T) / t(T) ≤ 1.15 · 4^max(p, 1)``: ≤ 4.6 when it claims linear time or less
  (no ``T²``, ``T³``, ``T·T`` or ``sqrt(T)``), ≤ 9.2 for ``O(T·sqrt(T))``; measured between
  the two largest sizes. A forward that takes at most twice a bare copy of its inputs (timed
  in the same turn) is bound by memory traffic: it is held to how that copy grew, × 1.15,
  instead, and its forward+backward to the target;
- a peer pair passes when ours is not slower: ``t(ours) / t(peer) ≤ 1`` (up to 1.05 is called a tie: noise).

Usage:
    python bench/mechanisms.py            # T = 512, 2048, 8192: bench/results/mechanisms.{md,json}
    python bench/mechanisms.py --quick    # T = 512, 2048, fewer repeats: mechanisms-quick.{md,json}
    python bench/mechanisms.py --only hyena,based --out mechanisms-mixers   # some rows: mechanisms-mixers.{md,json}

Timings of the many small ops of recurrent forms suffer badly when the CPU is shared; on a busy
machine pin one thread (``OMP_NUM_THREADS=1``) and compare only ratios from one run.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from rich.console import Console
from torch import nn

from attnlab import mechanisms
from attnlab.core import masks as M
from harness import (
    TOKENS,
    Case,
    claimed_exponent,
    claims_log,
    peer_checks,
    report,
    run_cases,
    run_notes,
    run_settings,
    scaling_checks,
    steady_allocator,
)

B, DIM, HEADS = 1, 256, 8
SIZES = (512, 2048, 8192)
WINDOW = 256  # the sliding window of the mha / local-attention pair
MIXER_SIZES = (2048, 8192, 32768)  # issue 22's sizes for the sub-quadratic sequence mixers


# --- inputs and options ---------------------------------------------------------------------


def tokens(T: int, g: torch.Generator) -> tuple:
    """The plain input ``x [B, T, C]``."""
    return (torch.randn(B, T, DIM, generator=g),)


def layer_states(T: int, g: torch.Generator) -> tuple:
    """mltp pools the last-token state of every layer: ``hidden [B, L, T, C]`` with its default L = 32."""
    return (torch.randn(B, 32, T, DIM, generator=g),)


def query_and_tokens(T: int, g: torch.Generator) -> tuple:
    """random_features scores one query token against the sequence: ``x0 [B, C]``, ``X [B, T, C]``."""
    return torch.randn(B, DIM, generator=g), torch.randn(B, T, DIM, generator=g)


def tokens_and_probs(T: int, g: torch.Generator) -> tuple:
    """shared applies given attention probabilities: ``x [B, T, C]``, row-stochastic ``probs [B, H, T, T]``."""
    probs = torch.rand(B, HEADS, T, T, generator=g)  # built in place: the input alone is 4·H·T² bytes
    probs /= probs.sum(-1, keepdim=True)
    return torch.randn(B, T, DIM, generator=g), probs


def tokens_image_question(T: int, g: torch.Generator) -> tuple:
    """modality_mutual: the first half of the tokens are image tokens, the next quarter the question."""
    image = torch.arange(T) < T // 2
    question = (torch.arange(T) >= T // 2) & (torch.arange(T) < 3 * T // 4)
    return torch.randn(B, T, DIM, generator=g), image, question


def tokens_and_window(T: int, g: torch.Generator) -> tuple:
    """mha under ``masks.sliding_window(256)``, the layer local-attention's ``LocalMHA`` computes."""
    return torch.randn(B, T, DIM, generator=g), M.sliding_window(WINDOW)


def routing_window(T: int) -> int:
    """Cluster size and local window for the routing pair: the power of two at or above sqrt(T) (32, 64, 128)."""
    return 2 ** math.ceil(math.log2(math.sqrt(T)))


def routing_options(T: int) -> dict:
    """Options of our routing for the routing pair: ``T / w`` clusters and a local window of ``w``."""
    w = routing_window(T)
    return {"clusters": T // w, "window": w}


@dataclass
class Special:
    """How to run a mechanism that does not take the defaults: options (from T), inputs, own sizes, a note."""

    options: Callable[[int], dict] = lambda T: {}
    inputs: Callable[[int, torch.Generator], tuple] = tokens
    sizes: tuple[int, ...] = SIZES
    note: str = ""


SPECIAL = {
    "mltp": Special(inputs=layer_states, note="input: 32 layers' states [1, 32, T, 256] (defaults: layers 32, latents 768)"),
    "random_features": Special(inputs=query_and_tokens, note="inputs: x0 [1, 256] and X [1, T, 256]; M = heads = 8 random features"),
    "shared": Special(inputs=tokens_and_probs, note="inputs: x and given probabilities [1, 8, T, T] (4·8·T² bytes, not in peak memory)"),
    "modality_mutual": Special(inputs=tokens_image_question, note="inputs: x, image = first T/2 tokens, question = next T/4"),
    "summarize": Special(note="returns S = 10 tokens [1, 10, 256]"),
    "tensor": Special(sizes=(128, 256, 512), note="cubic (T² pair keys): run at its own sizes"),
    "routing": Special(
        options=routing_options, note="window and cluster size w = 32, 64, 128 (≥ sqrt T), T/w clusters, as routing-transformer's"
    ),
    "base_conv": Special(sizes=MIXER_SIZES, note="kernel 3"),
    "based": Special(sizes=MIXER_SIZES, note="parallel: the T×T linear part; feature_dim 16, window 64"),
    "hyena": Special(sizes=MIXER_SIZES, note="order 2, FFT over 2T points"),
    "linear_rnn": Special(sizes=MIXER_SIZES, note="chunked scan, chunk 64"),
    "selective_ssm": Special(sizes=MIXER_SIZES, note="chunked SSD, chunk 64; 8 heads of 64, state 16, expand 2"),
    "tensor_fast": Special(sizes=MIXER_SIZES, note="non-causal; feature_dim 8, degree 2 (F = 73)"),
}


@dataclass
class Variant:
    """A row of a registered mechanism: its options (from T) and inputs, labelled "<name>" or "<name> <what differs>"."""

    label: str
    options: Callable[[int], dict]
    inputs: Callable[[int, torch.Generator], tuple] = tokens
    form: str | None = None  # which clause of the registry's time string it claims ("recurrent")
    note: str = ""


RECURRENT = "claims O(T·c·D + T·D²) recurrent"
VARIANTS = {
    "linear": [Variant("linear form=recurrent", lambda T: {"form": "recurrent"}, form="recurrent", note=RECURRENT)],
    "normalized": [Variant("normalized form=recurrent", lambda T: {"form": "recurrent"}, form="recurrent", note=RECURRENT)],
    "mha": [Variant("mha window 256", lambda T: {}, tokens_and_window, note="mask = masks.sliding_window(256), as LocalMHA below")],
    "based": [
        Variant("based form=recurrent", lambda T: {"form": "recurrent"}, form="recurrent", note="claims O(T·c·F + T·F·D + T·w·D) recurrent")
    ],
    "linear_rnn": [Variant("linear_rnn form=recurrent", lambda T: {"form": "recurrent"}, note="token by token")],
}

# --- the rows to measure --------------------------------------------------------------------


def our_cases(only: set[str] | None = None) -> list[Case]:
    """Every non-vision mechanism of the registry (or those named in ``only``), with its special inputs and variants."""
    cases = []
    for entry in mechanisms.available():
        if entry.layout.startswith("[B, H, W, C]") or (only is not None and entry.name not in only):
            continue
        spec = SPECIAL.get(entry.name, Special())
        for v in [Variant(entry.name, spec.options, spec.inputs, note=spec.note), *VARIANTS.get(entry.name, [])]:

            def build(T, name=entry.name, options=v.options):
                return mechanisms.get(name, dim=DIM, heads=HEADS, **options(T))

            cases.append(
                Case(
                    label=v.label,
                    paper=entry.paper,
                    build=build,
                    inputs=v.inputs,
                    sizes=spec.sizes,
                    exponent=claimed_exponent(entry.time, v.form),
                    log=claims_log(entry.time, v.form),
                    note=v.note,
                )
            )
    return cases


class OutputOnly(nn.Module):
    """routing-transformer's SelfAttention returns ``(out, aux_loss)``: keep ``out``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)[0]


def peer_cases() -> list[Case]:
    """The public implementations, each next to our mechanism of the same shape (skipped if not installed)."""
    install = "not installed: pip install -c constraints.txt routing-transformer x-transformers local-attention"
    cases = []
    try:
        from x_transformers import Attention
    except ImportError:
        cases.append(Case(label="x-transformers Attention", paper="peer", peer_of="mha", skip=install))
    else:
        for flash in (False, True):
            cases.append(
                Case(
                    label="x-transformers Attention" + (" flash" if flash else ""),
                    paper="peer",
                    build=lambda T, flash=flash: Attention(dim=DIM, heads=HEADS, dim_head=DIM // HEADS, flash=flash),
                    inputs=tokens,
                    peer_of="mha",
                    note="flash=True: torch SDPA" if flash else "default (einsum softmax)",
                )
            )
    try:
        from local_attention import LocalMHA
    except ImportError:
        cases.append(Case(label="local-attention LocalMHA", paper="peer", peer_of="mha window 256", skip=install))
    else:
        cases.append(
            Case(
                label="local-attention LocalMHA",
                paper="peer",
                build=lambda T: LocalMHA(
                    dim=DIM,
                    heads=HEADS,
                    dim_head=DIM // HEADS,
                    window_size=WINDOW,
                    causal=True,
                    exact_windowsize=True,
                    use_rotary_pos_emb=False,
                ),
                inputs=tokens,
                peer_of="mha window 256",
                note="causal, exact window 256, no rotary",
            )
        )
    try:
        from routing_transformer.routing_transformer import SelfAttention
    except ImportError:
        cases.append(Case(label="routing-transformer SelfAttention", paper="peer", peer_of="routing", skip=install))
    else:
        cases.append(
            Case(
                label="routing-transformer SelfAttention",
                paper="peer",
                build=lambda T: OutputOnly(
                    SelfAttention(
                        dim=DIM,
                        depth=1,
                        max_seq_len=T,
                        heads=HEADS,
                        local_attn_heads=HEADS // 2,
                        window_size=routing_window(T),
                        shared_qk=True,
                        rel_pos_emb=False,
                    )
                ),
                inputs=tokens,
                peer_of="routing",
                note="balanced top-w clusters (O(T·w)); local heads see 1 block of w on each side",
            )
        )
    try:
        from transformers import Mamba2Config
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
    except ImportError:
        cases.append(
            Case(label="transformers Mamba2Mixer", paper="peer", peer_of="selective_ssm", skip="not installed: pip install transformers")
        )
    else:
        config = Mamba2Config(
            hidden_size=DIM, num_heads=HEADS, head_dim=2 * DIM // HEADS, state_size=16, expand=2, n_groups=1, chunk_size=64
        )
        cases.append(
            Case(
                label="transformers Mamba2Mixer",
                paper="peer",
                build=lambda T: Mamba2Mixer(config, layer_idx=0),
                inputs=tokens,
                sizes=MIXER_SIZES,
                exponent=1.0,  # chunked SSD: linear in T, like ours
                peer_of="selective_ssm",
                note="torch_forward (no mamba_ssm kernels on CPU): chunked SSD, chunk 64, gated RMSNorm",
            )
        )
    return cases


def all_cases(only: set[str] | None = None) -> list[Case]:
    """Our rows (those named in ``only``, if given), each followed by its peers."""
    peers = peer_cases()
    ordered = []
    for case in our_cases(only):
        ordered.append(case)
        ordered += [p for p in peers if p.peer_of == case.label]
    return ordered


def main(argv=None):
    """Measure every case, check the claims and the peers, print and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the two smaller sizes of every mechanism, 2 repeats (a few minutes)")
    ap.add_argument("--only", help="comma-separated mechanism names: measure only these (and their peers)")
    ap.add_argument("--out", help="result file stem in bench/results (default: mechanisms, or mechanisms-quick with --quick)")
    args = ap.parse_args(argv)
    only = None if args.only is None else set(args.only.split(","))
    if only is not None and (unknown := only - set(mechanisms.registry.names())):
        ap.error(f"--only names no mechanism {', '.join(sorted(unknown))}: valid names are {', '.join(mechanisms.registry.names())}")
    console = Console(width=200)
    allocator = steady_allocator()
    reps = 2 if args.quick else 3
    cases = all_cases(only)
    rows = run_cases(cases, TOKENS, SIZES, quick=args.quick, reps=reps, console=console)
    notes = scaling_checks(cases, rows, TOKENS) + peer_checks(cases, rows, TOKENS)
    notes += [
        "Forward: eval mode under torch.no_grad(). Forward+backward: train mode, output.sum().backward() into the parameters and the first input.",
        *run_notes(allocator),
        "Vision mechanisms ([B, H, W, C]) are not in this benchmark.",
    ]
    settings = run_settings(allocator, reps) | {
        "B": B,
        "dim": DIM,
        "heads": HEADS,
        "dtype": "float32",
        "quick": args.quick,
        "only": sorted(only) if only else None,
        "window": WINDOW,
    }
    report(
        console,
        args.out or ("mechanisms-quick" if args.quick else "mechanisms"),
        "sequence mechanisms (CPU)",
        rows,
        TOKENS,
        settings=settings,
        notes=notes,
    )


if __name__ == "__main__":
    main()
