"""Shared pieces of attnlab's benchmark scripts: timing, peak memory, result tables.

Timings are medians of repeated runs after a warm-up; compare ratios measured in one run (the
machines are shared and noisy), never absolute seconds across runs. Peak memory is the rise of
the process's resident set (Linux VmHWM, reset before each measurement) over its size before.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def _status(field: str) -> int:
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


def median_time(fn: Callable[[], object], *, repeats: int = 3, warmup: int = 1, budget_s: float = 60.0) -> float:
    """Median wall time of ``fn`` in seconds (fewer repeats if one run exceeds ``budget_s / repeats``)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if sum(times) > budget_s:
            break
    return statistics.median(times)


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
    return {"platform": platform.platform(), "processor": platform.processor(), "torch_threads": torch.get_num_threads()}


def fmt_seconds(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def fmt_bytes(x: int | None) -> str:
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
        "versions": versions(),
        "machine": machine(),
        "settings": settings,
        "notes": notes,
    }
    jpath = RESULTS / f"{name}.json"
    jpath.write_text(json.dumps({**meta, "rows": rows}, indent=1, default=str) + "\n")
    lines = [f"# {name}", "", f"{meta['created']} · " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), ""]
    lines += ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for r in table:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k, _ in columns) + " |")
    lines += [""] + [f"- {n}" for n in notes]
    mpath = RESULTS / f"{name}.md"
    mpath.write_text("\n".join(lines) + "\n")
    return mpath, jpath


# --- shared by the mechanism benchmarks (bench/mechanisms.py, bench/vision.py) ----------------

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


def claimed_exponent(time: str) -> float:
    """The power of T in a registry time string's first clause ("O(T·sqrt(T))" -> 1.5, "O(k·T²/S²)" -> 2).

    A string naming several cases ("O(T·sqrt(T)) balanced clusters, O(T²) worst") claims its first.
    """
    time = time.split(",")[0]
    if "T³" in time:
        return 3.0
    if "T²" in time or "T·T" in time:
        return 2.0
    if "sqrt(T)" in time:
        return 1.5
    return 1.0 if re.search(r"\bT\b", time) else 0.0


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
