"""Peak memory and wall time of CKA between every pair of SmolLM2's layers: streamed against capture-everything.

SmolLM2-135M's 31 streams (the embeddings and 30 layer outputs) over ``--sequences`` windows of
``--length`` tokens spread evenly over the shipped texts (81,026 tokens: windows overlap beyond that), CKA of all 31 × 31 pairs (per token), two ways, each in a
fresh subprocess:

  (a) streamed: :func:`attnlab.represent.run.cka_grid` (what ``attnlab represent --method cka``
      runs): :class:`~attnlab.represent.CrossStats` fed one batch at a time through
      ``attnlab.capture``, 496 running ``576 × 576`` cross-products, no state kept; the sums are
      float32 here (``--sums``) and split into passes over the data that each fit ``--memory`` MiB;
  (b) naive: what users write today: every batch's states (the same hook points, captured with
      ``attnlab.capture``; ``output_hidden_states`` would give the final norm's output as its last
      entry) kept in a dict of lists, concatenated to ``[N, 576]`` per layer, centred (float32, the
      mean taken in float64), then the batch CKA formula ``‖XᵀY‖² / (‖XᵀX‖ ‖YᵀY‖)`` on every pair
      (each layer's ``‖XᵀX‖`` once). Kept in float64 it would need 26 GiB at the issue's size.

Each row records the peak RSS (VmHWM) and the wall time of the whole run (model loaded and run
once first, outside the timing and under the baseline RSS), and the largest difference between the two CKA grids. The streamed run's
memory is ``O(pairs × C² / passes)`` whatever ``N``; the naive one's ``O(L × N × C)``.

Usage:
    python bench/represent.py                                 # 8 × 512 tokens: bench/results/represent.{md,json}
    python bench/represent.py --sequences 256 --length 512    # the issue's size (about an hour on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from harness import fmt_bytes, fmt_seconds, write

METHODS = ("streamed", "naive")
# glibc's adaptive mmap threshold left each freed 1.2 MB batch tensor in the heap, where the naive
# run's 300 MB concatenations could not reuse it: 24 GiB and the OOM killer at 256 × 512 tokens.
# Fixed for both children: blocks of 1 MiB and more are mapped and go back to the system when freed.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(2**20), "MALLOC_TRIM_THRESHOLD_": str(2**27)}
STREAMS, WIDTH = 31, 576


def _windows(tok, n: int, length: int):
    import torch

    from attnlab.data import text

    corpus = "\n\n".join(text(t) for t in ("tempest", "sonnets", "lucrece"))
    ids = tok(corpus, return_tensors="pt")["input_ids"][0]
    if ids.numel() < length:
        raise ValueError(f"the shipped texts hold {ids.numel()} tokens, fewer than --length {length}")
    # windows spread over the whole text: they overlap when n × length is more than it holds (81,026 tokens)
    starts = [round(i * (ids.numel() - length) / max(n - 1, 1)) for i in range(n)]
    return [ids[s : s + length] for s in starts], torch


def _child(method: str, n: int, length: int, batch: int, memory: int, sums: str, threads: int) -> dict:
    import re

    from attnlab.models.hf import load
    from attnlab.represent.run import cka_grid

    def status(field):
        with open("/proc/self/status") as f:
            return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) * 1024

    model, tok = load("smollm2-135m")
    seqs, torch = _windows(tok, n, length)
    torch.set_num_threads(threads)
    with torch.inference_mode():
        model(input_ids=seqs[0][None])  # warm-up: the weights are memory-mapped until a forward pass touches them
    before = status("VmRSS")
    start = time.perf_counter()
    extra = {}
    if method == "streamed":
        dtype = getattr(torch, sums)
        grid, extra = cka_grid([model], [s.tolist() for s in seqs], batch_size=batch, max_bytes=memory * 2**20, dtype=dtype)
    else:
        import attnlab
        from attnlab.represent import layer_points

        points = layer_points(model)
        kept: dict[int, list] = {i: [] for i in range(STREAMS)}
        with torch.inference_mode():
            for k in range(0, n, batch):
                with attnlab.capture(model, points) as cache:
                    model(input_ids=torch.stack(seqs[k : k + batch]))
                for i, p in enumerate(points):
                    kept[i].append(cache[p].reshape(-1, WIDTH))
        acts = {}
        for i in range(STREAMS):
            x = torch.cat(kept.pop(i))  # [N, C]
            acts[i] = x.sub_(x.double().mean(0).float())
        norms = [torch.linalg.matrix_norm(x.T @ x) for x in acts.values()]
        half = {
            (i, j): float(torch.linalg.matrix_norm(acts[i].T @ acts[j]) ** 2 / (norms[i] * norms[j]))
            for i in range(STREAMS)
            for j in range(i, STREAMS)
        }
        grid = [[half[min(i, j), max(i, j)] for j in range(STREAMS)] for i in range(STREAMS)]
    wall = time.perf_counter() - start
    return {"wall_s": round(wall, 2), "peak_rss": status("VmHWM"), "rss_before": before, "grid": grid, **extra}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=8)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--memory", type=int, default=384, help="MiB for the streamed run's sums (more pairs run in further passes)")
    p.add_argument("--sums", choices=("float32", "float64"), default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", choices=METHODS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(_child(a.child, a.sequences, a.length, a.batch, a.memory, a.sums, a.threads)))
        return
    rows = {}
    for method in METHODS:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            method,
            "--sequences",
            str(a.sequences),
            "--length",
            str(a.length),
            "--batch",
            str(a.batch),
            "--memory",
            str(a.memory),
            "--sums",
            a.sums,
            "--threads",
            str(a.threads),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, **MALLOC})
        if done.returncode != 0:
            raise SystemExit(f"{method} failed:\n{done.stderr[-2000:]}")
        rows[method] = json.loads(done.stdout.strip().splitlines()[-1])
        print(method, fmt_seconds(rows[method]["wall_s"]), fmt_bytes(rows[method]["peak_rss"]), flush=True)
    gs, gn = rows["streamed"].pop("grid"), rows["naive"].pop("grid")
    diff = max(abs(x - y) for rs, rn in zip(gs, gn, strict=True) for x, y in zip(rs, rn, strict=True))
    tokens = a.sequences * a.length
    out = [{"method": m, "tokens": tokens, **r, "added_rss": r["peak_rss"] - r["rss_before"]} for m, r in rows.items()]
    added = out[0]["added_rss"] / out[1]["added_rss"]
    peak = out[0]["peak_rss"] / out[1]["peak_rss"]
    passes = rows["streamed"].get("passes")
    notes = [
        f"{a.sequences} sequences × {a.length} tokens = {tokens} tokens, batch {a.batch}, {a.threads} torch threads, CPU, "
        f"glibc malloc mmap threshold 1 MiB in both runs; "
        f"streamed sums in {a.sums}, at most {a.memory} MiB: {passes} passes over the data; "
        f"largest |CKA streamed − CKA naive| over the 31 × 31 grid: {diff:.2e}",
        f"peak RSS, streamed ÷ naive: {peak:.3f}; memory added over the loaded model: {added:.3f} (target ≤ 0.1)",
        f"wall time, streamed ÷ naive: {out[0]['wall_s'] / out[1]['wall_s']:.2f}",
    ]
    table = [
        {"method": r["method"], "tokens": r["tokens"], "wall": fmt_seconds(r["wall_s"]), "peak": fmt_bytes(r["peak_rss"]),
         "added": fmt_bytes(r["added_rss"])}
        for r in out
    ]  # fmt: skip
    columns = [
        ("method", "method"),
        ("tokens", "tokens"),
        ("wall", "wall time"),
        ("peak", "peak RSS"),
        ("added", "RSS added over the model"),
    ]
    settings = {
        "sequences": a.sequences, "length": a.length, "batch": a.batch, "memory_mib": a.memory, "sums": a.sums, "threads": a.threads,
        "passes": passes, "max_abs_diff": diff, "peak_ratio": peak, "added_ratio": added,
    }  # fmt: skip
    for path in write("represent", out, table, columns, settings=settings, notes=notes):
        print("wrote", path)
    for n in notes:
        print("-", n)


if __name__ == "__main__":
    main()
