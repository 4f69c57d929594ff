"""Shared pieces of attnlab's benchmark scripts: timing, peak memory, result tables.

Timings are the fastest of repeated runs after a warm-up; compare ratios measured in one run
(the machines are shared and noisy), never absolute seconds across runs. Peak memory is the rise of
the process's resident set (Linux VmHWM, reset before each measurement) over its size before.

The second half is the harness of the two mechanism benchmarks, ``bench/mechanisms.py``
(sizes are tokens T, :data:`TOKENS`) and ``bench/vision.py`` (sizes are the side of a square
grid, T = side², :data:`SIDE`): a :class:`Case` per row group; :func:`run_cases` measures
each case's sizes in turn, predicting every size's cost from the one before (the first from a
probe at a quarter of its tokens) and skipping those over ``MAX_SECONDS`` or ``MAX_BYTES``;
the ratios the checks read are then timed again in turn (:func:`in_turn`);
:func:`scaling_checks` and :func:`peer_checks` fill the check column; :func:`report` prints
and writes the table.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from rich.console import Console

RESULTS = Path(__file__).parent / "results"


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) * 1024


def peak_memory(fn: Callable[[], object]) -> int | None:
    """Bytes the resident set grows by, at its peak, while ``fn`` runs (None where unsupported).

    Freed heap memory is returned to the system first (``malloc_trim``), so that memory ``fn``
    allocates shows up in the resident set instead of being recycled unseen.
    """
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = _status("VmRSS")
    except OSError:
        return None
    fn()
    return max(0, _status("VmHWM") - before)


MMAP_THRESHOLD = 32 * 2**20  # glibc's largest: allocations up to this come from the heap, and are reused
TRIM_THRESHOLD = 2**30  # free heap memory kept, not returned to the system after each call


def steady_allocator() -> dict[str, int]:
    """Fix glibc malloc's mmap and trim thresholds for the rest of the process; what was set (empty where it could not be).

    By default glibc serves a large allocation with a fresh mmap (a page fault per 4 KiB on first
    touch) until a freed mmap raises the threshold to its size, so whether a layer's 8 MiB tensors
    cost those faults on every call depended on what ran before it. The same 128×128 layer, timed
    in turn with its 64×64 row, took 48-51 ms or 58-60 ms from one measurement to the next; with
    fixed thresholds (what ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set), 48-51 ms.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, MMAP_THRESHOLD) and libc.mallopt(-1, TRIM_THRESHOLD)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        return {}
    return {"malloc_mmap_threshold": MMAP_THRESHOLD, "malloc_trim_threshold": TRIM_THRESHOLD} if ok else {}


ALLOCATOR_NOTE = (
    f"glibc malloc's thresholds are fixed for the run (mmap {MMAP_THRESHOLD // 2**20} MiB, trim {TRIM_THRESHOLD // 2**30} GiB: settings malloc_*). "
    "With its adaptive default, a large tensor was fresh, page-faulted memory in some measurements and reused memory in others."
)

MIN_TOTAL_S = 0.5  # runs are repeated until they add up to at least this ...
MAX_REPEATS = 400  # ... or this many


def best_time(
    fn: Callable[[], object],
    *,
    repeats: int = 3,
    warmup: int = 1,
    budget_s: float = 60.0,
    min_total_s: float = MIN_TOTAL_S,
    max_repeats: int = MAX_REPEATS,
) -> float:
    """Wall time of ``fn``'s fastest run, in seconds.

    At least ``repeats`` runs, and more (up to ``max_repeats``) until they add up to
    ``min_total_s``; fewer when they pass ``budget_s``. The fastest rather than the median, as
    ``timeit`` advises: on this shared machine the slower runs are other work and page faults
    (one layer's 60 runs: fastest 57.7 ms, median 62.8, 90th percentile 71.4), and medians of
    the same layer moved by up to 15% between bench runs, enough to flip a peer comparison.
    """
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < max(repeats, 1) or (sum(times) < min_total_s and len(times) < max_repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if sum(times) > budget_s:
            break
    return min(times)


def versions() -> dict[str, str]:
    """Versions of everything that shapes the numbers."""
    import attnlab

    out = {"attnlab": attnlab.__version__, "torch": torch.__version__, "python": platform.python_version()}
    peers = (
        ("natten", "natten"),
        ("local_attention", "local-attention"),
        ("routing_transformer", "routing-transformer"),
        ("x_transformers", "x-transformers"),
        ("transformers", "transformers"),
    )
    for module, dist in peers:
        if module in sys.modules:
            out[dist] = metadata.version(dist)
    return out


def machine() -> dict[str, object]:
    """The platform, processor and torch's thread count."""
    return {"platform": platform.platform(), "processor": platform.processor(), "torch_threads": torch.get_num_threads()}


def fmt_seconds(x: float | None) -> str:
    """Seconds for reading: "12.3 ms" below a second, "1.23 s" above, "—" for None."""
    if x is None:
        return "—"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def fmt_bytes(x: int | None) -> str:
    """Bytes for reading: "123 MiB" below a GiB, "1.23 GiB" above, "—" for None."""
    if x is None:
        return "—"
    return f"{x / 2**20:.0f} MiB" if x < 2**30 else f"{x / 2**30:.2f} GiB"


def write(
    name: str, rows: list[dict], table: list[dict], columns: list[tuple[str, str]], *, settings: dict, notes: list[str]
) -> tuple[Path, Path]:
    """Write ``results/{name}.json`` (``rows``: every field, with provenance) and ``results/{name}.md``.

    The markdown table shows ``table`` (rows formatted for reading) with ``columns`` as
    ``(key, header)`` pairs.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "schema": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]),  # as typed, from the directory it ran in
        "versions": versions(),
        "machine": machine(),
        "settings": settings,
        "notes": notes,
    }
    jpath = RESULTS / f"{name}.json"
    jpath.write_text(json.dumps({**meta, "rows": rows}, indent=1, default=str) + "\n")
    lines = [f"# {name}", "", f"{meta['created']} · " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), ""]
    lines += [f"Made by `{meta['command']}`.", ""]
    lines += ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for r in table:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k, _ in columns) + " |")
    lines += [""] + [f"- {n}" for n in notes]
    mpath = RESULTS / f"{name}.md"
    mpath.write_text("\n".join(lines) + "\n")
    return mpath, jpath


def print_table(console, title: str, rows: list[dict], columns: list[tuple[str, str]], pretty) -> None:
    """Print ``rows`` (formatted by ``pretty``) as a rich table with ``(key, header)`` columns."""
    from rich.table import Table

    table = Table(title=title)
    for _, header in columns:
        table.add_column(header)
    for row in rows:
        p = pretty(row)
        table.add_row(*(str(p.get(k, "")) for k, _ in columns))
    console.print(table)


# --- the mechanism benchmarks (bench/mechanisms.py, bench/vision.py) -------------------------
#
# Both measure rows of `Case`s, one row per size, on a size axis: tokens T for the sequence
# mechanisms, the side of a square grid (T = side²) for the vision ones.

MAX_SECONDS = 60.0  # per call: forward+backward, or forward where there is no backward
MAX_BYTES = 6 * 2**30  # predicted peak memory plus the inputs
SLACK = 1.15  # a claimed T^p may grow by 4^p · 1.15 when T grows 4×
TIE = 1.05  # ours/peer up to 5% over 1 is reported as a tie (timing noise), not as met
TURN_ROUNDS = 7  # the two rows of a ratio are timed in this many alternating rounds ...
TURN_ROUND_S = 0.1  # ... each run repeated until it adds up to this in a round
MEMORY_BOUND = 2.0  # a forward within this many times a bare copy of its inputs is bound by memory traffic, not work

TURN_NOTE = (
    "Checks compare times taken in turn: after a case's rows, the two rows of each ratio a check reads (a peer's and ours at one size; "
    f"a scaling claim's two largest sizes) are timed again in {TURN_ROUNDS} rounds that alternate between them (each side's runs adding up to "
    f"{TURN_ROUND_S} s per round); a check reads the median over the rounds of the ratio of the two sides' fastest runs in a round. "
    "The table's own times were taken up to minutes apart."
)

MEMORY_NOTE = (
    "With a scaling claim's two sizes, a bare copy of their input tensors is timed in the same rounds. A forward that takes at most "
    f"{MEMORY_BOUND:g}× that copy does little besides moving memory, and grows as memory traffic does on this machine (more than 4× with 4× "
    f"the tokens where the smaller size's tensors fit a core's L2 and the larger's do not): it is held to the copy's growth × {SLACK}, "
    "and the check says so; its forward+backward is held to the usual target. The JSON keeps copy_ratio and fwd_over_copy for every claim."
)

SKIP_NOTE = (
    "A size is skipped when its call (forward+backward, or forward where there is no backward) is predicted"
    f" (from the size before: time as T^max(2, p), memory as T^max(1, p) × {SLACK}) to take more than {MAX_SECONDS:.0f} s or {fmt_bytes(MAX_BYTES)}."
)

MECHANISM_COLUMNS = [
    ("mechanism", "mechanism"),
    ("paper", "paper"),
    ("tokens", "tokens"),
    ("fwd", "forward"),
    ("fwd_mem", "fwd peak mem"),
    ("fwd_bwd", "fwd+bwd"),
    ("fwd_bwd_mem", "fwd+bwd peak mem"),
    ("check", "check"),
    ("note", "note"),
]


@dataclass(frozen=True)
class Axis:
    """What a benchmark's sizes count, and how they are written: tokens, or the side of a square grid."""

    field: str  # the rows' key for a size: "tokens" or "side"
    tokens: Callable[[int], int]  # size -> T
    quarter: Callable[[int], int]  # size -> the size with a quarter of its tokens (the first size's probe)
    cell: Callable[[int], str]  # a size in the table: "2048", "64×64"
    text: Callable[[int], str]  # a size in prose: "T=2048", "64×64"
    ratio: Callable[[int], str]  # a size in a ratio of times: t(8192)/t(2048), t(128²)/t(64²)


TOKENS = Axis("tokens", tokens=lambda T: T, quarter=lambda T: T // 4, cell=str, text=lambda T: f"T={T}", ratio=str)
SIDE = Axis(
    "side",
    tokens=lambda side: side * side,
    quarter=lambda side: side // 2,
    cell=lambda side: f"{side}×{side}",
    text=lambda side: f"{side}×{side}",
    ratio=lambda side: f"{side}²",
)


@dataclass(kw_only=True)
class Case:
    """One row group of the table: a module built for each size, its inputs and what it is checked against."""

    label: str
    paper: str  # the registry's paper number(s), or "peer"
    build: Callable[[int], nn.Module] | None = None  # size -> module; None only where ``skip`` says why
    inputs: Callable[[int, torch.Generator], tuple] | None = None  # size -> the module's arguments; None as ``build``
    sizes: tuple[int, ...] = ()  # its own sizes; empty: the benchmark's
    exponent: float = 2.0  # power of T in the registry's time string (peers: 2)
    log: bool = False  # the time string has a log T factor ("O(T·log T·C)")
    grad_inputs: int = 1  # the leading inputs that get a gradient
    peer_of: str | None = None  # a public implementation: the label of our row it is compared with
    sync: Callable[[nn.Module, nn.Module], None] | None = None  # copy our weights into the peer (ours, peer)
    check_sizes: tuple[int, ...] = ()  # where the pair's outputs are compared; empty: the benchmark's default
    note: str = ""
    skip: str | None = None  # why the case does not run (every size is listed as skipped)


def claimed_exponent(time: str, form: str | None = None) -> float:
    """The power of T in a registry time string's first clause ("O(T·sqrt(T))" -> 1.5, "O(k·T²/S²)" -> 2).

    A string naming several cases ("O(T·sqrt(T)) balanced clusters, O(T²) worst") claims its
    first; ``form`` picks the clause that names it instead ("parallel", "recurrent").
    """
    time = _claimed_clause(time, form)
    if "T³" in time:
        return 3.0
    if "T²" in time or "T·T" in time:
        return 2.0
    if "sqrt(T)" in time:
        return 1.5
    return 1.0 if re.search(r"\bT\b", time) else 0.0


def claims_log(time: str, form: str | None = None) -> bool:
    """Whether the clause :func:`claimed_exponent` reads has a ``log T`` factor ("O(T·log T·C)")."""
    return "log T" in _claimed_clause(time, form)


def _claimed_clause(time: str, form: str | None) -> str:
    """The clause of a registry time string a claim reads: the first, or the one naming ``form``."""
    clauses = time.split(",")
    return clauses[0] if form is None else next(c for c in clauses if form in c)


def target_ratio(exponent: float, log_growth: float = 1.0) -> float | None:
    """Largest allowed t(4T)/t(T) for a sub-quadratic claim (4.6 for linear or better; times
    ``log_growth`` = log 4T / log T for a T·log T claim), None otherwise."""
    return SLACK * 4 ** max(exponent, 1.0) * log_growth if exponent < 2 else None


# --- measuring ------------------------------------------------------------------------------


def total(out) -> torch.Tensor:
    """The sum of every floating-point element of ``out`` (a tensor, or a list or tuple of them)."""
    parts = out if isinstance(out, (list, tuple)) else [out]
    return sum(p.sum() for p in parts if torch.is_floating_point(p))


def nbytes(args) -> int:
    """Bytes held by the tensors in ``args``, in nested lists and tuples too (other values: 0)."""
    size = 0
    for a in args:
        if isinstance(a, (list, tuple)):
            size += nbytes(a)
        elif isinstance(a, torch.Tensor):
            size += a.nbytes
    return size


def forward_backward(module: nn.Module, args: tuple, grad_inputs: int) -> Callable[[], None]:
    """One training step's attention work: forward in train mode, backward of ``total`` into the parameters and the leading inputs."""
    leaves = [a.clone().requires_grad_() for a in args[:grad_inputs]]
    rest = args[grad_inputs:]

    def step():
        """Clear the gradients, run forward and backward."""
        module.zero_grad(set_to_none=True)
        for t in leaves:
            t.grad = None
        total(module(*leaves, *rest)).backward()

    return step


def measure(case: Case, axis: Axis, size: int, reps: int, probe: bool = False) -> dict:
    """Forward (eval, no grad) and forward+backward (train) best time in seconds and peak memory in bytes at ``size``.

    ``probe``: one timed call of each after a warm-up, the base of the first size's prediction.
    A backward that raises is recorded as ``no_backward`` (the error), the forward kept.
    """
    torch.manual_seed(0)
    args = case.inputs(size, torch.Generator().manual_seed(0))
    module = case.build(size)
    repeats = 1 if probe else reps
    row = {axis.field: size, "input_bytes": nbytes(args)}
    module.eval()
    with torch.no_grad():
        row["fwd_s"] = best_time(lambda: module(*args), repeats=repeats, budget_s=MAX_SECONDS)
        row["fwd_bytes"] = peak_memory(lambda: module(*args))
    module.train()
    step = forward_backward(module, args, case.grad_inputs)
    try:
        row["fwd_bwd_s"] = best_time(step, repeats=repeats, budget_s=MAX_SECONDS)
        row["fwd_bwd_bytes"] = peak_memory(step)
    except Exception as e:  # NATTEN on CPU has no backward; for our mechanisms it is a finding
        row["no_backward"] = f"{type(e).__name__}: {e}"
    return row


def too_big(case: Case, axis: Axis, size: int, prev: dict) -> str | None:
    """Why ``size`` would break the limits, predicted from the row ``prev``; None if it fits.

    Time grows as ``T^max(2, p)``; memory as ``T^max(1, p)`` with the claim's slack: a sub-quadratic
    mechanism's claim bounds its memory too, and a broken claim shows in the measured row.
    """
    p = max(2.0, case.exponent)
    grow = axis.tokens(size) / axis.tokens(prev[axis.field])
    call = "fwd+bwd" if "fwd_bwd_s" in prev else "forward"
    seconds = prev.get("fwd_bwd_s", prev["fwd_s"]) * grow**p
    peak = max(prev.get("fwd_bwd_bytes") or 0, prev.get("fwd_bytes") or 0)
    pm = max(1.0, case.exponent)
    predicted = (peak + prev["input_bytes"]) * grow**pm * (SLACK if pm < 2 else 1.0)
    if seconds > MAX_SECONDS:
        return f"predicted {fmt_seconds(seconds)} per {call} call (> {MAX_SECONDS:.0f} s), from {axis.text(prev[axis.field])} as T^{p:g}"
    if predicted > MAX_BYTES:
        return f"predicted {fmt_bytes(predicted)} (> {fmt_bytes(MAX_BYTES)}), from {axis.text(prev[axis.field])} as T^{pm:g}"
    return None


def run_case(case: Case, axis: Axis, sizes: tuple[int, ...], reps: int, console: Console) -> list[dict]:
    """The rows of one case, one per size: measured, or skipped with the reason (sizes above a skipped one too)."""
    rows, prev, reason = [], None, case.skip
    for size in sizes:
        row = {"mechanism": case.label, "paper": case.paper, axis.field: size, "note": case.note}
        if reason is None:
            try:
                prev = prev or measure(case, axis, axis.quarter(size), reps, probe=True)
                reason = too_big(case, axis, size, prev)
                if reason is None:
                    row |= measure(case, axis, size, reps)
                    prev = row
            except Exception as e:  # a broken mechanism is a finding: record it, go on with the others
                reason = f"error: {type(e).__name__}: {e}"
            if reason is not None:
                row["skipped"] = reason
                reason = reason if case.skip else f"{axis.text(size)} was skipped"
        else:
            row["skipped"] = reason
        console.print(
            f"{case.label} {axis.text(size)}: " + (f"skipped: {row['skipped']}" if "skipped" in row else _brief(row)), highlight=False
        )
        rows.append(row)
        gc.collect()
    return rows


def _alternate(fns: list[Callable[[], object]], rounds: int) -> list[list[float]]:
    """Per function of ``fns``, its fastest run in each of ``rounds`` rounds that take them in turn.

    Each round gives each function runs adding up to ``TURN_ROUND_S`` (at least one).
    """
    times: list[list[float]] = [[] for _ in fns]
    for r in range(rounds):
        for i, fn in enumerate(fns):
            times[i].append(best_time(fn, repeats=1, warmup=int(r == 0), budget_s=MAX_SECONDS, min_total_s=TURN_ROUND_S))
    return times


def _tensors(args) -> list[torch.Tensor]:
    """The tensors in ``args``, in nested lists and tuples too."""
    out = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out += _tensors(a)
        elif isinstance(a, torch.Tensor):
            out.append(a)
    return out


def in_turn(runs: list[tuple[Case, int]], *, backward: bool, copies: bool = False, rounds: int = TURN_ROUNDS) -> dict:
    """Each ``(case, size)`` of ``runs`` timed in alternation: forward, then forward+backward if ``backward``.

    The rows of a table are measured seconds to minutes apart, and on a shared machine the load
    changes in between: one peer pair's ratio moved from 1.06 to 1.35 between two bench runs, and
    a 64×64 row's time by 16% between three measurements a minute apart. Timed in turn, round
    after round, the runs of a ratio see the same load. Returns ``fwd_s`` and (with
    ``backward``) ``fwd_bwd_s``: per run (in the order of ``runs``), its fastest time in each
    round; and ``rounds``. With ``copies``, a bare copy of each run's input tensors joins the
    forward rounds: ``copy_s``, per run, its fastest in each round.
    """
    built = []
    for case, size in runs:
        torch.manual_seed(0)
        args = case.inputs(size, torch.Generator().manual_seed(0))
        built.append((case.build(size), args, case.grad_inputs))
    out: dict = {"rounds": rounds}
    for module, _, _ in built:
        module.eval()
    fns = [lambda m=m, a=a: m(*a) for m, a, _ in built]
    if copies:
        fns += [lambda ts=ts: [t.clone() for t in ts] for ts in (_tensors(a) for _, a, _ in built)]
    with torch.no_grad():
        times = _alternate(fns, rounds)
    out["fwd_s"] = times[: len(built)]
    if copies:
        out["copy_s"] = times[len(built) :]
    if backward:
        for module, _, _ in built:
            module.train()
        out["fwd_bwd_s"] = _alternate([forward_backward(m, a, g) for m, a, g in built], rounds)
    return out


def _retime(row: dict, runs: list[tuple[Case, int]], backward: bool, what: str, console: Console, copies: bool = False) -> None:
    """``row["in_turn"]``: :func:`in_turn` of ``runs`` (numerator first), or ``row["in_turn_error"]``; logged as ``what``."""
    try:
        row["in_turn"] = in_turn(runs, backward=backward, copies=copies)
    except Exception as e:  # the rows stand; the check falls back to them
        row["in_turn_error"] = f"{type(e).__name__}: {e}"
        return
    console.print(f"{what}, timed in turn: {_ratio_text(*turn_ratios(row['in_turn']))}", highlight=False)
    gc.collect()


def _retime_pairs(case: Case, case_rows: list[dict], rows: list[dict], by_label: dict[str, Case], axis: Axis, console: Console) -> None:
    """Time the ratios a check reads in turn: a peer's rows with our row of each size (ours first),
    and a sub-quadratic claim's two largest sizes if 4× apart (the larger first), with bare copies
    of their inputs (:func:`memory_bound`)."""
    measured = [r for r in case_rows if "fwd_s" in r]
    if case.peer_of in by_label:
        ours = {r[axis.field]: r for r in rows if r["mechanism"] == case.peer_of and "fwd_s" in r}
        for row in (r for r in measured if r[axis.field] in ours):
            size = row[axis.field]
            backward = "fwd_bwd_s" in row and "fwd_bwd_s" in ours[size]
            what = f"{case.peer_of} ÷ {case.label} at {axis.text(size)}"
            _retime(row, [(by_label[case.peer_of], size), (case, size)], backward, what, console)
    elif (pair := scaling_pair(case, measured, axis)) is not None:
        small, big = pair
        backward = "fwd_bwd_s" in big and "fwd_bwd_s" in small
        what = f"{case.label} t({axis.ratio(big[axis.field])})/t({axis.ratio(small[axis.field])})"
        _retime(big, [(case, big[axis.field]), (case, small[axis.field])], backward, what, console, copies=True)


def run_notes(allocator: dict) -> list[str]:
    """The notes of every table measured by :func:`run_cases`: what is skipped, how checks are timed,
    the memory bound, and (where :func:`steady_allocator` set them, as ``allocator`` says) the thresholds."""
    return [SKIP_NOTE, TURN_NOTE, MEMORY_NOTE, *([ALLOCATOR_NOTE] if allocator else [])]


def run_settings(allocator: dict, reps: int) -> dict:
    """The settings of every table measured by :func:`run_cases` with ``reps`` repeats: the allocator's
    thresholds (what :func:`steady_allocator` returned) and the harness's timing constants."""
    return allocator | {
        "repeats": reps,
        "min_total_s": MIN_TOTAL_S,
        "max_repeats": MAX_REPEATS,
        "in_turn_rounds": TURN_ROUNDS,
        "memory_bound": MEMORY_BOUND,
    }


def run_cases(cases: list[Case], axis: Axis, sizes: tuple[int, ...], *, quick: bool, reps: int, console: Console) -> list[dict]:
    """The rows of every case at its own sizes, or at ``sizes``; ``quick`` leaves out the largest.

    After a case's rows, the ratios its checks read are timed again, in turn (:func:`in_turn`):
    a peer's against our row (its case comes after ours), a scaling claim's two largest sizes.
    """
    by_label = {c.label: c for c in cases}
    rows = []
    for case in cases:
        own = case.sizes or sizes
        case_rows = run_case(case, axis, own[:-1] if quick else own, reps, console)
        _retime_pairs(case, case_rows, rows, by_label, axis, console)
        rows += case_rows
    return rows


def _brief(row: dict) -> str:
    """One measured row in a line of the progress log."""
    both = f"fwd+bwd {fmt_seconds(row['fwd_bwd_s'])}" if "fwd_bwd_s" in row else "no backward"
    return f"fwd {fmt_seconds(row['fwd_s'])}, {both}, peak {fmt_bytes(row.get('fwd_bwd_bytes', row['fwd_bytes']))}"


# --- checks ---------------------------------------------------------------------------------


def _ratios(num: dict, den: dict) -> tuple[float, float | None]:
    """Forward and forward+backward time of row ``num`` over row ``den`` (the second None without both backwards)."""
    both = num["fwd_bwd_s"] / den["fwd_bwd_s"] if "fwd_bwd_s" in num and "fwd_bwd_s" in den else None
    return num["fwd_s"] / den["fwd_s"], both


def turn_ratios(t: dict) -> tuple[float, float | None]:
    """The first run's time over the second's in an :func:`in_turn` result, forward and forward+backward
    (None without): the median over the rounds of the ratio within a round.

    Within a round the two times are seconds apart; a ratio of each side's fastest over all
    rounds would pair runs from different rounds (a 2048-token row's fastest moved from 26 to
    36 ms between consecutive measurements).
    """

    return _median_ratio(*t["fwd_s"]), _median_ratio(*t["fwd_bwd_s"]) if "fwd_bwd_s" in t else None


def _median_ratio(num: list[float], den: list[float]) -> float:
    """The median over rounds of ``num``'s time over ``den``'s in the same round."""
    return statistics.median(a / b for a, b in zip(num, den))


def memory_bound(row: dict) -> tuple[float, float] | None:
    """How a bare copy of the inputs grew between a scaling check's two sizes, and how many times that
    copy the larger size's forward takes: medians of in-turn rounds (None where not timed).

    On a machine whose cache holds the smaller size's tensors but not the larger's, every pass
    over memory grows more than 4× with 4× the tokens (here a 64×64×128 float32 copy fits the
    2 MiB L2 of a core and a 128×128 one does not: 7.7×). A forward within ``MEMORY_BOUND``
    copies of its inputs does little besides moving them, and grows as they do.
    """
    t = row.get("in_turn", {})
    if "copy_s" not in t:
        return None
    (big, _), (copy_big, copy_small) = t["fwd_s"], t["copy_s"]
    return _median_ratio(copy_big, copy_small), _median_ratio(big, copy_big)


def _checked_ratios(num: dict, den: dict, timed: dict) -> tuple[float, float | None]:
    """Row ``num``'s time over row ``den``'s, forward and forward+backward: from the :func:`in_turn`
    timing that row ``timed`` holds where there is one, else from the two rows."""
    return turn_ratios(timed["in_turn"]) if "in_turn" in timed else _ratios(num, den)


def turn_text(row: dict) -> str:
    """ " (timed in turn)" where ``row`` holds an :func:`in_turn` timing, else ""."""
    return " (timed in turn)" if "in_turn" in row else ""


def pair_ratios(row: dict, ours: dict) -> tuple[float, float | None]:
    """Our time over the peer ``row``'s, forward and forward+backward: timed in turn where they
    were (:func:`in_turn`), else from the two rows."""
    return _checked_ratios(ours, row, row)


def _ratio_text(fwd: float, both: float | None) -> str:
    """ "fwd 1.07, fwd+bwd 1.07", or "fwd 1.07" without a backward."""
    return f"fwd {fwd:.2f}" + ("" if both is None else f", fwd+bwd {both:.2f}")


def scaling_pair(case: Case, measured: list[dict], axis: Axis) -> tuple[dict, dict] | None:
    """The rows a scaling check compares: of ``case``'s ``measured`` rows, the two largest if 4× apart in
    tokens and the case claims less than T² (peers claim nothing); else None."""
    if target_ratio(case.exponent) is None or case.peer_of or len(measured) < 2:
        return None
    small, big = measured[-2:]
    return (small, big) if axis.tokens(big[axis.field]) == 4 * axis.tokens(small[axis.field]) else None


def scaling_checks(cases: list[Case], rows: list[dict], axis: Axis) -> list[str]:
    """t(4T)/t(T) between the two largest measured sizes of every sub-quadratic claim; sets each row's ``check``."""
    notes = []
    for case in cases:
        if target_ratio(case.exponent) is None or case.peer_of:
            continue
        pair = scaling_pair(case, [r for r in rows if r["mechanism"] == case.label and "fwd_s" in r], axis)
        if pair is None:
            notes.append(f"Scaling of {case.label}: not checked (fewer than two measured sizes 4× apart).")
            continue
        small, big = pair
        t_small, t_big = axis.tokens(small[axis.field]), axis.tokens(big[axis.field])
        target = target_ratio(case.exponent, math.log(t_big) / math.log(t_small) if case.log else 1.0)
        fwd, both = _checked_ratios(big, small, big)
        worst = max(fwd, both or 0)
        verdict = "met" if worst <= target else f"tie, within {TIE - 1:.0%}" if worst <= TIE * target else "NOT met"
        if (memory := memory_bound(big)) is not None:
            grew, copies = memory
            big["copy_ratio"], big["fwd_over_copy"] = round(grew, 3), round(copies, 3)
            if fwd > target and (both or 0) <= target and copies <= MEMORY_BOUND and fwd <= SLACK * grew:
                verdict = f"met at the memory bound: the forward takes {copies:.1f}× a bare copy of its inputs, which grew {grew:.1f}×"
        sizes = f"t({axis.ratio(big[axis.field])})/t({axis.ratio(small[axis.field])})" + turn_text(big)
        text = f"{sizes} {_ratio_text(fwd, both)} (target ≤ {target:.1f}: {verdict})"
        big["check"] = text
        big["ratio_fwd"], big["ratio_fwd_bwd"], big["ratio_target"] = (
            round(fwd, 3),
            None if both is None else round(both, 3),
            round(target, 2),
        )
        claim = f"time exponent {case.exponent:g}" + (", times log T" if case.log else "")
        notes.append(f"Scaling of {case.label} (claims {claim}): {text}.")
    return notes


def ratio_check(case: Case, row: dict, ours: dict) -> str:
    """The peer ``row``'s check: ours ÷ peer time ≤ 1 (up to ``TIE``: a tie), timed in alternation where they were
    (:func:`pair_ratios`); sets its ``ours_over_peer_*``."""
    fwd, both = pair_ratios(row, ours)
    row["ours_over_peer_fwd"], row["ours_over_peer_fwd_bwd"] = round(fwd, 3), None if both is None else round(both, 3)
    worst = max(fwd, both or 0)
    verdict = "met" if worst <= 1 else f"tie, within {TIE - 1:.0%}" if worst <= TIE else "NOT met"
    return f"ours ({case.peer_of}) ÷ this{turn_text(row)}: {_ratio_text(fwd, both)} (target ≤ 1: {verdict})"


def peer_checks(cases: list[Case], rows: list[dict], axis: Axis, check: Callable[[Case, dict, dict], str] = ratio_check) -> list[str]:
    """``check(peer case, peer row, our row)`` at every size both measured; sets each peer row's ``check``."""
    by = {(r["mechanism"], r[axis.field]): r for r in rows}
    notes = []
    for case in (c for c in cases if c.peer_of):
        for row in (r for r in rows if r["mechanism"] == case.label):
            ours = by.get((case.peer_of, row[axis.field]))
            if "fwd_s" not in row or not ours or "fwd_s" not in ours:
                continue
            row["check"] = check(case, row, ours)
            notes.append(f"{case.peer_of} vs {case.label} at {axis.text(row[axis.field])}: {row['check']}.")
    return notes


# --- output ---------------------------------------------------------------------------------


def pretty(row: dict, axis: Axis) -> dict:
    """A row formatted for the table (``MECHANISM_COLUMNS``): times, sizes, the reason it was skipped."""
    out = {k: row.get(k, "") for k in ("mechanism", "paper", "check", "note")}
    out["tokens"] = axis.cell(row[axis.field])
    if "skipped" in row:
        out["note"] = f"skipped: {row['skipped']}" + (f"; {row['note']}" if row["note"] else "")
        return out
    out["fwd"], out["fwd_mem"] = fmt_seconds(row["fwd_s"]), fmt_bytes(row["fwd_bytes"])
    if "no_backward" in row:
        out["fwd_bwd"] = "no backward"
        first_sentence = row["no_backward"].split(". ")[0]  # the whole message is in the json
        out["note"] = f"{first_sentence}; {row['note']}" if row["note"] else first_sentence
    else:
        out["fwd_bwd"], out["fwd_bwd_mem"] = fmt_seconds(row["fwd_bwd_s"]), fmt_bytes(row["fwd_bwd_bytes"])
    return out


def report(console: Console, name: str, title: str, rows: list[dict], axis: Axis, *, settings: dict, notes: list[str]) -> None:
    """Print the table and the notes, and write them to ``results/{name}.{md,json}``."""
    print_table(console, title, rows, MECHANISM_COLUMNS, lambda row: pretty(row, axis))
    for n in notes:
        console.print(n, highlight=False)
    paths = write(name, rows, [pretty(r, axis) for r in rows], MECHANISM_COLUMNS, settings=settings, notes=notes)
    console.print(f"wrote {paths[0]} and {paths[1]}")
