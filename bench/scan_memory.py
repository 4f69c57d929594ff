"""Peak memory and wall time of looking at SmolLM2's attention at long context.

For L = 2k, 4k, 8k, 16k, 32k tokens of the shipped texts, four ways to run SmolLM2-135M once:

  (a) plain: a transformers forward with sdpa attention (the floor: no attention is kept);
  (b) attnlab scan: ``attnlab.scan`` with the sink, entropy and patterns probes (blocked backend;
      probes read attention one chunk of rows at a time);
  (c) eager: transformers with eager attention and ``output_attentions=True``;
  (d) TransformerLens: ``run_with_cache`` on a TransformerBridge around the same weights.

Each run is a fresh subprocess; its peak RSS (VmHWM) and the forward's wall time are recorded.
A run predicted to exceed this machine's memory is skipped with the estimate; a run that dies is
recorded with how. SmolLM2 was trained on 8,192 positions: beyond that (16k, 32k) the numbers are
a memory/speed measurement only, run with ``allow_extrapolation=True``, which the results record.

Usage:
    python bench/scan_memory.py                 # everything: bench/results/scan_memory.{md,json}
    python bench/scan_memory.py --lengths 2048,4096 --methods plain,scan
    python bench/scan_memory.py --lengths 16384 --methods scan --update   # re-measure one row, keep the others

Every row records when it was measured and when its run started (``measured``, ``run``, UTC);
``--update`` replaces only the rows it measures in the existing results and keeps the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

from harness import RESULTS, fmt_bytes, fmt_seconds, write

METHODS = ("plain", "scan", "eager", "transformerlens")
MEMORY_BYTES = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
TRAINED = 8192
LAYERS, HEADS = 30, 9


def _child(method: str, L: int) -> dict:
    """Run one method at one length in this process; return its measurements."""
    import re

    import torch

    from attnlab.data import text
    from attnlab.models.hf import load

    def status(field):
        with open("/proc/self/status") as f:
            return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) * 1024

    model, tok = load("smollm2-135m")
    corpus = "\n\n".join(text(n) for n in ("tempest", "sonnets", "lucrece")) * 2
    ids = tok(corpus, return_tensors="pt")["input_ids"][:, :L]
    assert ids.shape[1] == L, f"corpus has only {ids.shape[1]} tokens"
    with torch.no_grad():
        model(input_ids=ids[:, :32])  # warm up kernels and allocations
    run = None
    if method == "plain":
        model.set_attn_implementation("sdpa")

        def run():
            model(input_ids=ids)

    elif method == "scan":
        import attnlab

        def run():
            attnlab.scan(
                model,
                tok,
                [tok.decode(ids[0])],
                probes=["sink", "entropy", "patterns"],
                repeated=False,
                max_len=L + 64,
                truncate=True,
                allow_extrapolation=L + 64 > TRAINED,
                backend="blocked",
            )

    elif method == "eager":
        model.set_attn_implementation("eager")

        def run():
            model(input_ids=ids, output_attentions=True)

    elif method == "transformerlens":
        from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

        bridge = build_bridge_from_module(model, "LlamaForCausalLM", hf_config=model.config, tokenizer=tok)

        def run():
            bridge.run_with_cache(ids)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak to the current resident set
    before = status("VmRSS")
    t0 = time.perf_counter()
    with torch.no_grad():
        run()
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 2), "peak_rss": status("VmHWM"), "rss_before": before}


def _estimate(method: str, L: int) -> int | None:
    """Bytes a method needs beyond the model, where attention maps dominate (None: small)."""
    if method in ("eager", "transformerlens"):
        maps = 4 * LAYERS * HEADS * L * L  # every layer's [H, L, L] float32 pattern is kept
        return int(
            maps * (1.05 if method == "eager" else 2.4)
        )  # measured at 2k: eager keeps little else, TransformerLens caches scores and more
    return None


def measure(method: str, L: int, timeout: int) -> dict:
    """One method at one length in a fresh subprocess: wall time and peak RSS, or why not."""
    row = {"method": method, "L": L, "extrapolated": L > TRAINED, "run": RUN, "measured": _now()}
    need = _estimate(method, L)
    if need and need > 0.85 * MEMORY_BYTES:
        row["skipped"] = f"needs ~{need / 2**30:.0f} GiB for the kept attention maps; this machine has {MEMORY_BYTES / 2**30:.0f} GiB"
        return row
    cmd = [sys.executable, __file__, "--child", method, str(L)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    except subprocess.TimeoutExpired:
        row["failed"] = f"no result within {timeout} s"
        return row
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1][:160]
        row["failed"] = "killed (out of memory)" if p.returncode in (-9, 137) else f"exit {p.returncode}: {tail}"
        return row
    row.update(json.loads(p.stdout.strip().splitlines()[-1]))
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="2048,4096,8192,16384,32768")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    ap.add_argument("--update", action="store_true", help="keep the existing results' other rows; replace only those measured now")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]))))
        return
    lengths = [int(x) for x in args.lengths.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}: choose from {', '.join(METHODS)}")
    rows = []
    for L in lengths:
        for m in methods:
            print(f"L={L} {m} ...", flush=True)
            rows.append(measure(m, L, args.timeout))
            r = rows[-1]
            print(
                "   ", r.get("skipped") or r.get("failed") or f"{fmt_seconds(r['wall_s'])}, peak RSS {fmt_bytes(r['peak_rss'])}", flush=True
            )
    if args.update:
        rows = _merge(RESULTS / "scan_memory.json", rows)
        lengths = sorted({r["L"] for r in rows})
        methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    notes = _notes(rows)
    runs: dict[str, list[str]] = {}
    for r in rows:
        runs.setdefault(r["run"], []).append(f"{r['L']} {r['method']}")
    if len(runs) > 1:
        parts = [f"{run} ({', '.join(which) if len(which) <= 4 else f'{len(which)} rows'})" for run, which in sorted(runs.items())]
        notes.append("Rows come from separate runs, by time (UTC): " + "; ".join(parts) + ". Compare wall times within one run only.")
    table = [
        {
            "L": r["L"],
            "method": r["method"],
            "wall": fmt_seconds(r.get("wall_s")) if "wall_s" in r else "",
            "peak": fmt_bytes(r.get("peak_rss")) if "peak_rss" in r else "",
            "note": r.get("skipped")
            or r.get("failed")
            or ("beyond the 8,192 trained positions (allow_extrapolation)" if r["extrapolated"] else ""),
        }
        for r in rows
    ]
    cols = [("L", "tokens"), ("method", "method"), ("wall", "wall time"), ("peak", "peak RSS"), ("note", "note")]
    paths = write(
        "scan_memory",
        rows,
        table,
        cols,
        settings={
            "model": "smollm2-135m",
            "lengths": lengths,
            "methods": methods,
            "scan_probes": ["sink", "entropy", "patterns"],
            "backend": "blocked",
            "machine_memory_bytes": MEMORY_BYTES,
            "updated": [[L, m] for L in map(int, args.lengths.split(",")) for m in args.methods.split(",") if m] if args.update else None,
        },
        notes=notes,
    )
    for n in notes:
        print(n)
    print(f"wrote {paths[0]} and {paths[1]}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


RUN = _now()  # when this invocation started: the rows it measures carry it


def _merge(path, fresh: list[dict]) -> list[dict]:
    """The rows of the results at ``path`` with ``fresh`` in place of those of the same length and method."""
    if not path.exists():
        raise SystemExit(f"--update needs existing results at {path}: run without --update first")
    old = json.loads(path.read_text())
    new = {(r["L"], r["method"]): r for r in fresh}
    # rows from before rows recorded their run: their own time of measurement, else when the results were written
    rows = [new.pop((r["L"], r["method"]), None) or _dated(r, old["created"]) for r in old["rows"]]
    rows += new.values()
    return sorted(rows, key=lambda r: (r["L"], METHODS.index(r["method"])))


def _dated(row: dict, created: str) -> dict:
    measured = row.get("measured", created)
    return {"run": measured, "measured": measured, **row}


def _notes(rows):
    by = {(r["method"], r["L"]): r for r in rows}
    notes = [
        "(a) plain = sdpa forward; (b) scan = attnlab.scan with sink, entropy, patterns; (c) eager with output_attentions; (d) TransformerLens run_with_cache."
    ]
    a, b = by.get(("plain", 4096)), by.get(("scan", 4096))
    if a and b and "wall_s" in a and "wall_s" in b:
        mem, wall = b["peak_rss"] / a["peak_rss"], b["wall_s"] / a["wall_s"]
        notes.append(
            f"Targets at 4k: scan peak RSS ≤ 1.3× plain: {mem:.2f}× ({'met' if mem <= 1.3 else 'NOT met'}); scan wall time ≤ 2× plain: {wall:.2f}× ({'met' if wall <= 2 else 'NOT met'})."
        )
    b32 = by.get(("scan", 32768))
    if b32:
        notes.append(
            f"Target: scan completes at 32k: {'met' if 'wall_s' in b32 else 'NOT met'}"
            + (
                f" ({fmt_seconds(b32['wall_s'])}, peak RSS {fmt_bytes(b32['peak_rss'])})."
                if "wall_s" in b32
                else f" ({b32.get('skipped') or b32.get('failed')})."
            )
        )
    return notes


if __name__ == "__main__":
    main()
