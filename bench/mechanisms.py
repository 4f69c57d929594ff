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
  positions) vs our ``routing`` with the same window and cluster size.

How: medians of repeated runs after a warm-up, peak memory from the resident set's high-water
mark (``bench/harness.py``). Each size's cost is predicted before it runs, from the size
before it (the first from a probe at a quarter of it), scaled as ``T^p`` with ``p`` = max(2,
the power of ``T`` in the registry's time string); a size predicted to take more than 60 s per
forward+backward call or more than 6 GiB is skipped, with the reason in the table. Mechanisms
that need other inputs than ``x [B, T, C]`` get the inputs listed in ``SPECIAL`` (tensor, which
is cubic, runs at T = 128, 256, 512); the table's note column says what they got. ``VARIANTS``
adds rows for other options: the recurrent forms of linear and normalized (the forms whose
registry time is linear) and mha under the sliding window.

Checks (the table's last column, and the notes):

- a mechanism whose registry time string claims less than quadratic time must scale
  ``t(4T) / t(T) ≤ 1.15 · 4^p``: ≤ 4.6 when it claims linear time (no ``T²``, ``T³`` or ``T·T``),
  ≤ 9.2 for combiner's ``O(T·sqrt(T))``; measured between the two largest sizes;
- a peer pair passes when ours is not slower: ``t(ours) / t(peer) ≤ 1`` (up to 1.05 is called a tie: noise).

Usage:
    python bench/mechanisms.py            # T = 512, 2048, 8192: bench/results/mechanisms.{md,json}
    python bench/mechanisms.py --quick    # T = 512, 2048, fewer repeats: mechanisms-quick.{md,json}

Timings of the many small ops of recurrent forms suffer badly when the CPU is shared; on a busy
machine pin one thread (``OMP_NUM_THREADS=1``) and compare only ratios from one run.
"""

from __future__ import annotations

import argparse
import gc
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from rich.console import Console
from torch import nn

from attnlab import mechanisms
from attnlab.core import masks as M
from harness import MECHANISM_COLUMNS, fmt_bytes, fmt_seconds, median_time, peak_memory, print_table, write
from harness import claimed_exponent as harness_exponent

B, DIM, HEADS = 1, 256, 8
SIZES = (512, 2048, 8192)
WINDOW = 256  # the sliding window of the mha / local-attention pair
MAX_SECONDS = 60.0  # per forward+backward call
MAX_BYTES = 6 * 2**30
SLACK = 1.15  # a claimed T^p may grow by 4^p · 1.15 when T grows 4×
TIE = 1.05  # ours/peer up to 5% over 1 is reported as a tie (timing noise), not as met


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
}


@dataclass
class Variant:
    """An extra row: a registered mechanism with other options or inputs, labelled "<name> <what differs>"."""

    label: str
    options: dict
    inputs: Callable[[int, torch.Generator], tuple] = tokens
    form: str | None = None  # which clause of the registry's time string it claims ("recurrent")
    note: str = ""


VARIANTS = {
    "linear": [Variant("linear form=recurrent", {"form": "recurrent"}, form="recurrent", note="claims O(T·D²) recurrent")],
    "normalized": [Variant("normalized form=recurrent", {"form": "recurrent"}, form="recurrent", note="claims O(T·D²) recurrent")],
    "mha": [Variant("mha window 256", {}, tokens_and_window, note="mask = masks.sliding_window(256), as LocalMHA below")],
}


# --- the rows to measure --------------------------------------------------------------------


@dataclass
class Case:
    """One row group of the table: a module built for each size, its inputs and what it is checked against."""

    label: str
    paper: str
    build: Callable[[int], nn.Module]  # tokens -> module
    inputs: Callable[[int, torch.Generator], tuple] = tokens
    sizes: tuple[int, ...] = SIZES
    exponent: float = 2.0  # power of T in the registry's time string (peers: 2)
    peer_of: str | None = None  # a public implementation: the label of our row it is compared with
    note: str = ""
    skip: str | None = None


def claimed_exponent(time: str, form: str | None = None) -> float:
    """The power of T in a registry time string; ``form`` picks one clause of several ("parallel", "recurrent")."""
    if form is not None:
        time = next(part for part in time.split(",") if form in part)
    return harness_exponent(time)


def target_ratio(exponent: float) -> float | None:
    """Largest allowed t(4T)/t(T) for a sub-quadratic claim (4.6 for linear or better), None otherwise."""
    return SLACK * 4 ** max(exponent, 1.0) if exponent < 2 else None


def our_cases() -> list[Case]:
    """Every non-vision mechanism of the registry, with its special inputs and variants."""
    cases = []
    for entry in mechanisms.available():
        if entry.layout.startswith("[B, H, W, C]"):
            continue
        spec = SPECIAL.get(entry.name, Special())

        def build(T, name=entry.name, options=spec.options):
            return mechanisms.get(name, dim=DIM, heads=HEADS, **options(T))

        exponent = claimed_exponent(entry.time)
        cases.append(Case(entry.name, entry.paper, build, spec.inputs, spec.sizes, exponent, note=spec.note))
        for v in VARIANTS.get(entry.name, []):

            def build_variant(T, name=entry.name, options=v.options):
                return mechanisms.get(name, dim=DIM, heads=HEADS, **options)

            exponent = claimed_exponent(entry.time, v.form)
            cases.append(Case(v.label, entry.paper, build_variant, v.inputs, spec.sizes, exponent, note=v.note))
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
        cases.append(Case("x-transformers Attention", "peer", None, peer_of="mha", skip=install))
    else:
        for flash in (False, True):
            cases.append(
                Case(
                    "x-transformers Attention" + (" flash" if flash else ""),
                    "peer",
                    lambda T, flash=flash: Attention(dim=DIM, heads=HEADS, dim_head=DIM // HEADS, flash=flash),
                    peer_of="mha",
                    note="flash=True: torch SDPA" if flash else "default (einsum softmax)",
                )
            )
    try:
        from local_attention import LocalMHA
    except ImportError:
        cases.append(Case("local-attention LocalMHA", "peer", None, peer_of="mha window 256", skip=install))
    else:
        cases.append(
            Case(
                "local-attention LocalMHA",
                "peer",
                lambda T: LocalMHA(
                    dim=DIM,
                    heads=HEADS,
                    dim_head=DIM // HEADS,
                    window_size=WINDOW,
                    causal=True,
                    exact_windowsize=True,
                    use_rotary_pos_emb=False,
                ),
                peer_of="mha window 256",
                note="causal, exact window 256, no rotary",
            )
        )
    try:
        from routing_transformer.routing_transformer import SelfAttention
    except ImportError:
        cases.append(Case("routing-transformer SelfAttention", "peer", None, peer_of="routing", skip=install))
    else:
        cases.append(
            Case(
                "routing-transformer SelfAttention",
                "peer",
                lambda T: OutputOnly(
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
                peer_of="routing",
                note="balanced top-w clusters (O(T·w)); local heads see 1 block of w on each side",
            )
        )
    return cases


def all_cases() -> list[Case]:
    """Our rows, each followed by its peers."""
    peers = peer_cases()
    ordered = []
    for case in our_cases():
        ordered.append(case)
        ordered += [p for p in peers if p.peer_of == case.label]
    return ordered


# --- measuring ------------------------------------------------------------------------------


def forward_backward(module: nn.Module, args: tuple) -> Callable[[], None]:
    """One training step's attention work: forward in train mode, ``sum().backward()`` into the parameters and ``args[0]``."""
    x = args[0].clone().requires_grad_()
    rest = args[1:]

    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x, *rest).sum().backward()

    return step


def measure(case: Case, T: int, reps: int) -> dict:
    """Forward (eval, no grad) and forward+backward (train) median time and peak memory at ``T`` tokens."""
    torch.manual_seed(0)
    args = case.inputs(T, torch.Generator().manual_seed(0))
    module = case.build(T)
    row = {"tokens": T, "input_bytes": sum(a.nbytes for a in args if isinstance(a, torch.Tensor))}
    module.eval()
    with torch.no_grad():
        row["fwd_s"] = median_time(lambda: module(*args), repeats=reps, budget_s=MAX_SECONDS)
        row["fwd_bytes"] = peak_memory(lambda: module(*args))
    module.train()
    step = forward_backward(module, args)
    row["fwd_bwd_s"] = median_time(step, repeats=reps, budget_s=MAX_SECONDS)
    row["fwd_bwd_bytes"] = peak_memory(step)
    return row


def probe(case: Case, T: int) -> dict:
    """One forward+backward after a warm-up, at ``T`` tokens: the base of the first size's prediction."""
    torch.manual_seed(0)
    args = case.inputs(T, torch.Generator().manual_seed(0))
    module = case.build(T).train()
    step = forward_backward(module, args)
    row = {"tokens": T, "input_bytes": sum(a.nbytes for a in args if isinstance(a, torch.Tensor))}
    return row | {"fwd_bwd_s": median_time(step, repeats=1), "fwd_bwd_bytes": peak_memory(step)}


def too_big(case: Case, T: int, prev: dict) -> str | None:
    """Why ``T`` would break the limits, predicted from ``prev`` with ``T^max(2, p)``; None if it fits."""
    factor = (T / prev["tokens"]) ** max(2.0, case.exponent)
    seconds = prev["fwd_bwd_s"] * factor
    nbytes = ((prev["fwd_bwd_bytes"] or 0) + prev["input_bytes"]) * factor
    base = f"from T={prev['tokens']} as T^{max(2.0, case.exponent):g}"
    if seconds > MAX_SECONDS:
        return f"predicted {fmt_seconds(seconds)} per fwd+bwd call (> {MAX_SECONDS:.0f} s), {base}"
    if nbytes > MAX_BYTES:
        return f"predicted {fmt_bytes(nbytes)} (> {fmt_bytes(MAX_BYTES)}), {base}"
    return None


def run_case(case: Case, sizes: tuple[int, ...], reps: int, console: Console) -> list[dict]:
    """The rows of one case, one per size: measured, or skipped with the reason (sizes above a skipped one too)."""
    rows, prev, reason = [], None, case.skip
    for T in sizes:
        row = {"mechanism": case.label, "paper": case.paper, "tokens": T, "note": case.note}
        if reason is None:
            try:
                prev = prev or probe(case, T // 4)
                reason = too_big(case, T, prev)
                if reason is None:
                    row |= measure(case, T, reps)
                    prev = row
            except Exception as e:  # a broken mechanism is a finding: record it, go on with the others
                reason = f"error: {type(e).__name__}: {e}"
            if reason is not None:
                row["skipped"] = reason
                reason = reason if case.skip else f"T={T} was skipped"
        else:
            row["skipped"] = reason
        console.print(f"{case.label} T={T}: " + (f"skipped: {row['skipped']}" if "skipped" in row else _brief(row)), highlight=False)
        rows.append(row)
        gc.collect()
    return rows


def _brief(row: dict) -> str:
    return f"fwd {fmt_seconds(row['fwd_s'])}, fwd+bwd {fmt_seconds(row['fwd_bwd_s'])}, peak {fmt_bytes(row['fwd_bwd_bytes'])}"


# --- checks ---------------------------------------------------------------------------------


def scaling_checks(cases: list[Case], rows: list[dict]) -> list[str]:
    """t(4T)/t(T) between the two largest measured sizes of every sub-quadratic claim; sets each row's ``check``."""
    notes = []
    for case in cases:
        target = target_ratio(case.exponent)
        if target is None or case.peer_of:
            continue
        measured = [r for r in rows if r["mechanism"] == case.label and "fwd_s" in r]
        if len(measured) < 2 or measured[-1]["tokens"] != 4 * measured[-2]["tokens"]:
            notes.append(f"Scaling of {case.label}: not checked (fewer than two measured sizes 4× apart).")
            continue
        small, big = measured[-2:]
        fwd, both = big["fwd_s"] / small["fwd_s"], big["fwd_bwd_s"] / small["fwd_bwd_s"]
        verdict = "met" if max(fwd, both) <= target else "NOT met"
        text = f"t({big['tokens']})/t({small['tokens']}) fwd {fwd:.2f}, fwd+bwd {both:.2f} (target ≤ {target:.1f}: {verdict})"
        big["check"] = text
        big["ratio_fwd"], big["ratio_fwd_bwd"], big["ratio_target"] = round(fwd, 3), round(both, 3), round(target, 2)
        notes.append(f"Scaling of {case.label} (claims time exponent {case.exponent:g}): {text}.")
    return notes


def peer_checks(cases: list[Case], rows: list[dict]) -> list[str]:
    """ours/peer time at every size both measured; sets each peer row's ``check``."""
    by = {(r["mechanism"], r["tokens"]): r for r in rows}
    notes = []
    for case in (c for c in cases if c.peer_of):
        for T in case.sizes:
            peer, ours = by.get((case.label, T)), by.get((case.peer_of, T))
            if not (peer and ours and "fwd_s" in peer and "fwd_s" in ours):
                continue
            fwd, both = ours["fwd_s"] / peer["fwd_s"], ours["fwd_bwd_s"] / peer["fwd_bwd_s"]
            worst = max(fwd, both)
            verdict = "met" if worst <= 1 else f"tie, within {TIE - 1:.0%}" if worst <= TIE else "NOT met"
            peer["check"] = f"ours ({case.peer_of}) ÷ this: fwd {fwd:.2f}, fwd+bwd {both:.2f} (target ≤ 1: {verdict})"
            peer["ours_over_peer_fwd"], peer["ours_over_peer_fwd_bwd"] = round(fwd, 3), round(both, 3)
            notes.append(f"{case.peer_of} vs {case.label} at T={T}: ours/peer fwd {fwd:.2f}, fwd+bwd {both:.2f} ({verdict}).")
    return notes


# --- output ---------------------------------------------------------------------------------


def pretty(row: dict) -> dict:
    out = {k: row.get(k, "") for k in ("mechanism", "paper", "tokens", "check", "note")}
    if "skipped" in row:
        out["note"] = f"skipped: {row['skipped']}" + (f"; {row['note']}" if row["note"] else "")
        return out
    out["fwd"], out["fwd_bwd"] = fmt_seconds(row["fwd_s"]), fmt_seconds(row["fwd_bwd_s"])
    out["fwd_mem"], out["fwd_bwd_mem"] = fmt_bytes(row["fwd_bytes"]), fmt_bytes(row["fwd_bwd_bytes"])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the two smaller sizes of every mechanism, 2 repeats (a few minutes)")
    args = ap.parse_args(argv)
    console = Console(width=200)
    reps = 2 if args.quick else 3
    cases = all_cases()
    rows = []
    for case in cases:
        rows += run_case(case, case.sizes[:-1] if args.quick else case.sizes, reps, console)
    notes = scaling_checks(cases, rows) + peer_checks(cases, rows)
    notes += [
        "Forward: eval mode under torch.no_grad(). Forward+backward: train mode, output.sum().backward() into the parameters and the first input.",
        f"A size is skipped when its forward+backward call is predicted (from the size before, as T^max(2, p)) to take more than {MAX_SECONDS:.0f} s or {fmt_bytes(MAX_BYTES)}.",
        "Vision mechanisms ([B, H, W, C]) are not in this benchmark.",
    ]
    settings = {"B": B, "dim": DIM, "heads": HEADS, "dtype": "float32", "quick": args.quick, "repeats": reps, "window": WINDOW}
    print_table(console, "sequence mechanisms (CPU)", rows, MECHANISM_COLUMNS, pretty)
    for n in notes:
        console.print(n, highlight=False)
    paths = write(
        "mechanisms-quick" if args.quick else "mechanisms",
        rows,
        [pretty(r) for r in rows],
        MECHANISM_COLUMNS,
        settings=settings,
        notes=notes,
    )
    console.print(f"wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
