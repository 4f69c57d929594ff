"""All-heads activation patching on SmolLM2-135M: attnlab vs TransformerLens vs nnsight.

The job: 8 IOI prompt pairs (``attnlab.circuits.ioi_pairs``: clean "... Mary and John ... John
gave a drink to" → " Mary", corrupted with the names replaced, same token length). For every
head of every layer (30 × 9 = 270), patch that head's output ``z`` (the per-head attention output
before the output projection, all positions) from the clean run into the corrupted run and read
the metric: the mean over pairs of logit(answer) − logit(wrong) at the last position. Each tool
computes the 30 × 9 grid in its own process, on the same weights (attnlab's loader: the embedded
GGUF dequantised to float32), the same tokens and the same threads:

  - attnlab: ``activation_patching(model, pairs, "layers.*.attn.z", per="head")`` on the
    instrumented model (defaults: each patched pass starts at the patched layer, logits at the
    last position only, 4 heads side by side in one pass);
  - TransformerLens 4: ``TransformerBridge.boot_transformers(..., hf_model=model)`` with
    ``enable_compatibility_mode(no_processing=True)``, ``run_with_cache`` on the clean tokens,
    then its patching utility (``patching.generic_activation_patch`` with
    ``layer_head_vector_patch_setter`` on ``z`` over the chosen heads: what
    ``get_act_patch_attn_head_out_all_pos`` runs over every head);
  - nnsight: ``LanguageModel(model)``; one trace saves every layer's ``o_proj`` input on the
    clean run, then one trace per head sets that head's slice in the corrupted run.

Also timed: attribution patching in attnlab (one forward of each run and one backward) on the same
pairs, and its agreement with activation patching.

Measured per process: wall time of the patching (model loading excluded, the same for all),
peak RSS of the process (``ru_maxrss``, model included, and everything the process did) and the
peak RSS added by the patching: each worker loads the model and runs one warm-up forward on the
clean prompts (so the weights' mmap'd pages are resident); then, where the tool's patching starts
(its imports and set-up done, where its timer starts), it takes the RSS as its baseline, resets
the kernel's high-water mark (``/proc/self/clear_refs``, 5) and reads it (``VmHWM``) right after
the patching: the same for every tool, the model and the tool's imports excluded. attnlab's attribution
patching is measured the same way after it, on its own high-water mark. Results must agree to
1e-4 (max abs difference of the grids).

``--layers 0-1`` patches the heads of those layers only (every tool the same heads): for memory
runs, since TransformerLens's peak comes from ``run_with_cache`` of every activation, which does
not depend on how many heads are patched (its full 270-head run takes ~20 min here).
Targets (issue 18): attnlab ≥ 3× faster and ≤ 1/3 the peak memory of TransformerLens;
attribution patching ≥ 20× faster than activation patching.

Usage:
    python bench/circuits.py            # bench/results/circuits.{md,json}
    python bench/circuits.py --repeats 1 --pairs 4
    python bench/circuits.py --repeats 1 --layers 0-1 --out circuits_memory   # memory: 18 heads, the same 8 pairs
    python bench/circuits.py --reuse /tmp/attnlab-circuits-XXXX --tools attnlab transformer_lens   # summarise the tool results a run left there

Needs the bench extra (transformer-lens, nnsight).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from harness import write

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOOLS = ("attnlab", "transformer_lens", "nnsight")
AGREE = 1e-4


def _rss_mb() -> float:
    """Current resident set size of this process in MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_hwm() -> None:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux ≥ 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _hwm_mb() -> float:
    """Peak RSS since the last :func:`_reset_hwm`, in MB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _start() -> tuple[float, float]:
    """Where a tool's patching starts (its imports and set-up done): the RSS then, with the peak reset to it, and the time."""
    _reset_hwm()
    return _rss_mb(), time.perf_counter()


def _metric(logits, answer, wrong):
    """Mean over pairs of logit(answer) − logit(wrong) at the last position."""
    import torch

    last = logits[:, -1]  # [B, V]
    rows = torch.arange(last.shape[0])
    return (last[rows, answer] - last[rows, wrong]).mean()


def _work_attnlab(model, tok, data, layers):
    import torch

    from attnlab.circuits.attribution import attribution_patching
    from attnlab.circuits.pairs import from_ids
    from attnlab.circuits.patching import activation_patching
    from attnlab.models.hf import instrument

    instrument(model)
    pairs = from_ids(data["clean"], data["corrupted"], data["answer"], data["wrong"])
    points = [f"layers.{i}.attn.z" for i in layers]
    rss, t = _start()
    exact = activation_patching(model, pairs, points, per="head")
    wall, added = time.perf_counter() - t, _hwm_mb() - rss
    rss, t = _start()
    approx = attribution_patching(model, pairs, points, per="head")
    attrib_wall = time.perf_counter() - t
    grid = torch.tensor(_metric_grid(exact.table))  # the mean logit difference, as the peers report it
    extra = {
        "attribution_wall_s": attrib_wall,
        "attribution_grid": _metric_grid(approx.table).tolist(),
        "attribution_added_mb": _hwm_mb() - rss,
    }
    return grid, wall, added, extra


def _metric_grid(table):
    """``[L, H]`` of a patching table's ``metric`` column (the patched mean metric, not the normalised score)."""
    return table.pivot(index="layer", columns="head", values="metric").sort_index().to_numpy()


def _work_transformer_lens(model, tok, data, layers):
    import pandas as pd
    import torch
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers("HuggingFaceTB/SmolLM2-135M-Instruct", hf_model=model, tokenizer=tok)
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    clean, corrupted = torch.tensor(data["clean"]), torch.tensor(data["corrupted"])
    answer, wrong = torch.tensor(data["answer"]), torch.tensor(data["wrong"])
    rss, t = _start()
    with torch.no_grad():
        _, cache = bridge.run_with_cache(clean)
        H = model.config.num_attention_heads
        index = pd.DataFrame({"layer": [i for i in layers for _ in range(H)], "head": [h for _ in layers for h in range(H)]})
        grid = patching.generic_activation_patch(
            bridge, corrupted, cache, lambda logits: _metric(logits, answer, wrong), patching.layer_head_vector_patch_setter, "z",
            index_df=index,
        ).view(len(layers), H)  # fmt: skip
    return grid, time.perf_counter() - t, _hwm_mb() - rss, {}


def _work_nnsight(model, tok, data, layers):
    import torch
    from nnsight import LanguageModel

    lm = LanguageModel(model, tokenizer=tok)
    clean, corrupted = torch.tensor(data["clean"]), torch.tensor(data["corrupted"])
    answer, wrong = torch.tensor(data["answer"]), torch.tensor(data["wrong"])
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    D = model.config.hidden_size // H
    grid = torch.zeros(len(layers), H)
    rss, t = _start()
    with torch.no_grad():
        z = {}  # layer -> [B, T, H*D], filled inside the trace (nnsight runs its body apart from this frame)
        with lm.trace(clean):
            for i in range(L):
                z[i] = lm.model.layers[i].self_attn.o_proj.input.save()
        for row, i in enumerate(layers):
            for h in range(H):
                out = {}
                with lm.trace(corrupted):
                    lm.model.layers[i].self_attn.o_proj.input[:, :, h * D : (h + 1) * D] = z[i][:, :, h * D : (h + 1) * D]
                    out["logits"] = lm.lm_head.output.save()
                grid[row, h] = _metric(out["logits"], answer, wrong)
    return grid, time.perf_counter() - t, _hwm_mb() - rss, {}


def worker(tool: str, data_file: Path, out_file: Path, threads: int, layers: list[int] | None) -> None:
    """Run one tool in this process and write its grid, time and memory to ``out_file``."""
    import torch

    from attnlab.models.hf import load

    torch.set_num_threads(threads)
    data = json.loads(data_file.read_text())
    model, tok = load("smollm2-135m", progress=False)
    loaded = _rss_mb()
    with torch.no_grad():
        model(input_ids=torch.tensor(data["clean"]))  # warm-up: the weights' pages come in on first use
    baseline = _rss_mb()
    load = os.getloadavg()  # the machine's 1, 5, 15 min load average
    grid, wall, added, extra = globals()[f"_work_{tool}"](model, tok, data, layers or list(range(model.config.num_hidden_layers)))
    out_file.write_text(
        json.dumps(
            {
                "tool": tool,
                "load_avg_before_after": [load, os.getloadavg()],
                "wall_s": wall,
                "peak_rss_mb": _peak_mb(),
                "rss_loaded_mb": loaded,
                "rss_warm_mb": baseline,
                "added_rss_mb": added,
                "grid": grid.tolist(),
                **extra,
            }
        )
    )


def _layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def _pairs(n: int) -> dict:
    from attnlab.circuits.pairs import ioi_pairs
    from attnlab.models.hf import load

    _, tok = load("smollm2-135m", progress=False)
    pairs = ioi_pairs(tok, n)
    if len(pairs.lengths()) > 1:
        raise ValueError(f"the {n} IOI pairs have token lengths {pairs.lengths()}; the peers need one: choose another --pairs")
    return {
        "clean": [c.tolist() for c in pairs.clean],
        "corrupted": [c.tolist() for c in pairs.corrupted],
        "answer": pairs.answer.tolist(),
        "wrong": pairs.wrong.tolist(),
        "texts": pairs.records,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2, help="runs per tool, alternating tools; the fastest run counts")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS), help="the tools to run (attnlab, the reference, always)")
    p.add_argument(
        "--reuse", type=Path, help="a run's folder (printed at the start): its pairs, and its tool results instead of running them again"
    )
    p.add_argument("--layers", help="patch the heads of these layers only, 'a-b' (memory runs; default every layer)")
    p.add_argument("--out", default="circuits", help="the results' name under bench/results (default circuits)")
    p.add_argument("--note", action="append", default=[], help="a line for the results' notes (e.g. the machine's load)")
    p.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.result, args.threads, _layers(args.layers))
        return

    import numpy as np

    load_before = os.getloadavg()
    tools = ["attnlab", *(t for t in args.tools if t != "attnlab")]
    tmp = args.reuse or Path(tempfile.mkdtemp(prefix="attnlab-circuits-"))
    print(f"run folder {tmp}", flush=True)
    if args.reuse:
        data = json.loads((tmp / "pairs.json").read_text())
    else:
        data = _pairs(args.pairs)
        (tmp / "pairs.json").write_text(json.dumps(data))
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    for r in range(args.repeats):
        for tool in tools:  # alternate the tools, each in a fresh process
            out = tmp / f"{tool}-{r}.json"
            if not out.exists():
                cmd = [sys.executable, __file__, "--worker", tool, "--data", str(tmp / "pairs.json"), "--result", str(out)]
                subprocess.run([*cmd, "--threads", str(args.threads), *(["--layers", args.layers] if args.layers else [])], check=True)
            runs[tool].append(json.loads(out.read_text()))
            print(f"{tool} run {r + 1}: {runs[tool][-1]['wall_s']:.1f} s, peak RSS {runs[tool][-1]['peak_rss_mb']:.0f} MB", flush=True)

    best = {t: min(rs, key=lambda x: x["wall_s"]) for t, rs in runs.items()}
    ref = np.array(best["attnlab"]["grid"])
    rows = []
    for tool in tools:
        b = best[tool]
        rows.append(
            {
                "tool": tool,
                "patching wall (s)": round(b["wall_s"], 2),
                "× attnlab time": round(b["wall_s"] / best["attnlab"]["wall_s"], 2),
                "process peak RSS (MB)": round(b["peak_rss_mb"]),
                "RSS warm baseline (MB)": round(b["rss_warm_mb"]),
                "peak RSS added by patching (MB)": round(b["added_rss_mb"]),
                "max abs(grid − attnlab)": float(np.abs(np.array(b["grid"]) - ref).max()),
            }
        )
    attrib = best["attnlab"]
    approx = np.array(attrib["attribution_grid"])
    from scipy.stats import pearsonr

    checks = {"agree (max diff ≤ 1e-4)": all(r["max abs(grid − attnlab)"] <= AGREE for r in rows)}
    if "transformer_lens" in best:
        tl = best["transformer_lens"]
        checks["≥ 3× faster than TransformerLens"] = tl["wall_s"] / attrib["wall_s"] >= 3
        checks["≤ 1/3 TransformerLens process peak RSS"] = attrib["peak_rss_mb"] <= tl["peak_rss_mb"] / 3
        checks["≤ 1/3 TransformerLens peak RSS added by patching"] = attrib["added_rss_mb"] <= tl["added_rss_mb"] / 3
    checks["attribution ≥ 20× faster than activation patching"] = attrib["wall_s"] / attrib["attribution_wall_s"] >= 20
    summary = {
        "attribution patching wall (s)": round(attrib["attribution_wall_s"], 3),
        "attribution patching peak RSS added (MB)": round(attrib["attribution_added_mb"]),
        "activation / attribution time": round(attrib["wall_s"] / attrib["attribution_wall_s"], 1),
        f"attribution vs activation (Pearson r over {ref.size} heads)": round(float(pearsonr(approx.ravel(), ref.ravel())[0]), 3),
    }
    columns = [(k, k) for k in rows[0]]
    notes = [f"{k}: {v}" for k, v in {**summary, **checks}.items()] + args.note
    console = Console()
    for r in rows:
        console.print("  ".join(f"{k} {v}" for k, v in r.items()))
    for n in notes:
        console.print(n)
    settings = {
        "pairs": len(data["clean"]),
        "layers patched": args.layers or "all",
        "repeats": args.repeats,
        "threads": args.threads,
        "tools": tools,
        "texts": data["texts"],
    }
    settings["load average (1, 5, 15 min) at the start / at the summary"] = [load_before, os.getloadavg()]
    md, _ = write(args.out, [x for t in tools for x in runs[t]], rows, columns, settings=settings, notes=notes)
    console.print(f"wrote {md}")


if __name__ == "__main__":
    main()
