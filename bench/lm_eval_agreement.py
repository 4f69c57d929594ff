"""Checks that attnlab's rolling perplexity equals lm-evaluation-harness's ``loglikelihood_rolling`` (within 1e-3 relative).

On SmolLM2-135M and the whole of *The Tempest*, for each window length W:

  - lm-eval: ``HFLM(pretrained=model, tokenizer=tok, max_length=W, batch_size=1)`` around the
    already-loaded model, ``loglikelihood_rolling`` on one request holding the text; perplexity
    = exp(−loglikelihood / tokens), tokens = the text's tokens without special tokens;
  - attnlab: ``attnlab.runs.evaluate.perplexity(model, tok, tokens=None, window=W, stride=W,
    prefix_token=<lm-eval's prefix token>)``; pooled perplexity = exp(mean of the token-level NLL).

lm-eval's ``loglikelihood_rolling`` always rolls with ``context_len=1``: consecutive windows of W
positions, each scoring W tokens (attnlab's ``stride=W``), the first after lm-eval's prefix token
(``HFLM.prefix_token_id``: BOS when the tokenizer defines one, else EOS). The check: relative
difference |attnlab − lm-eval| / lm-eval ≤ 1e-3 and the same number of scored tokens. The table
also shows attnlab's default convention (``prefix_token=None``: the first token has nothing before
it and is not scored) to show what that one token does to the figure.

Usage:
    python bench/lm_eval_agreement.py                      # W = 256, 512: bench/results/lm_eval_agreement.{md,json}
    python bench/lm_eval_agreement.py --windows 256,512,1024

Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import time
from importlib import metadata

from harness import fmt_seconds, print_table, write

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is embedded; lm-eval must not reach for the hub

TOLERANCE = 1e-3  # relative, on perplexity
MODEL = "smollm2-135m"


def lm_eval_rolling(model, tok, text: str, window: int) -> dict:
    """lm-eval's ``loglikelihood_rolling`` of ``text`` at ``max_length=window``: total loglikelihood, prefix token, wall time."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tok, max_length=window, batch_size=1, device="cpu")
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # a progress bar per window (its inner calls force tqdm on)
        (ll,) = lm.loglikelihood_rolling([request], disable_tqdm=True)
    wall = time.perf_counter() - t0
    tokens = len(tok(text, add_special_tokens=False).input_ids)
    return {
        "loglikelihood": ll,
        "tokens": tokens,
        "windows": math.ceil(tokens / window),
        "ppl": math.exp(-ll / tokens),
        "prefix_token": lm.prefix_token_id,
        "softmax_dtype": str(lm.softmax_dtype),
        "wall_s": round(wall, 2),
    }


def attnlab_rolling(model, tok, text: str, window: int, prefix_token: int | None) -> dict:
    """attnlab's rolling perplexity of ``text`` with ``stride=window``: pooled over every scored token."""
    from attnlab.runs.evaluate import perplexity

    t0 = time.perf_counter()
    s = perplexity(model, tok, text=text, tokens=None, window=window, stride=window, prefix_token=prefix_token)
    wall = time.perf_counter() - t0
    nll = s.detail["token_nll"]  # nats, rounded to 1e-5 each: the pooled figure moves by ≪ 1e-6 relative
    return {
        "loglikelihood": -sum(nll),
        "tokens": len(nll),
        "windows": len(s.values),
        "ppl": math.exp(sum(nll) / len(nll)),
        "wall_s": round(wall, 2),
    }


def measure(model, tok, text: str, window: int) -> dict:
    """One row: lm-eval, attnlab with lm-eval's prefix token, attnlab's default (no prefix), and the check."""
    theirs = lm_eval_rolling(model, tok, text, window)
    ours = attnlab_rolling(model, tok, text, window, theirs["prefix_token"])
    default = attnlab_rolling(model, tok, text, window, None)
    rel = abs(ours["ppl"] - theirs["ppl"]) / theirs["ppl"]
    ok = rel <= TOLERANCE and ours["tokens"] == theirs["tokens"] and ours["windows"] == theirs["windows"]
    return {
        "window": window,
        "stride": window,
        "lm_eval": theirs,
        "attnlab": ours,
        "attnlab_no_prefix": default,
        "rel_diff": rel,
        "ll_diff": ours["loglikelihood"] - theirs["loglikelihood"],
        "check": "met" if ok else "NOT met",
    }


COLUMNS = [
    ("W", "W (window = stride)"),
    ("windows", "windows"),
    ("tokens", "tokens scored"),
    ("lm_eval", "lm-eval ppl"),
    ("attnlab", "attnlab ppl (lm-eval's prefix)"),
    ("rel", "rel. diff"),
    ("check", f"≤ {TOLERANCE:g}"),
    ("default", "attnlab ppl, default (no prefix)"),
    ("default_tokens", "tokens scored (no prefix)"),
    ("wall", "wall: lm-eval / attnlab / attnlab no prefix"),
]


def pretty(r: dict) -> dict:
    """A row formatted for the table."""
    a, b, d = r["attnlab"], r["lm_eval"], r["attnlab_no_prefix"]
    return {
        "W": r["window"],
        "windows": b["windows"] if a["windows"] == b["windows"] else f"{b['windows']} (attnlab {a['windows']})",
        "tokens": b["tokens"] if a["tokens"] == b["tokens"] else f"{b['tokens']} (attnlab {a['tokens']})",
        "lm_eval": f"{b['ppl']:.6f}",
        "attnlab": f"{a['ppl']:.6f}",
        "rel": f"{r['rel_diff']:.1e}",
        "check": r["check"],
        "default": f"{d['ppl']:.6f}",
        "default_tokens": d["tokens"],
        "wall": " / ".join(fmt_seconds(x["wall_s"]) for x in (b, a, d)),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", default="256,512", help="window lengths W, comma-separated")
    args = ap.parse_args(argv)
    windows = [int(x) for x in args.windows.split(",") if x]

    import torch
    from rich.console import Console

    from attnlab.data import sample_text
    from attnlab.data.tokens import start_tokens
    from attnlab.models.hf import load

    console = Console(width=None if sys.stdout.isatty() else 220)  # a log file gets the whole table, not 80 columns of it
    model, tok = load(MODEL)
    text = sample_text()
    rows = []
    for W in windows:
        console.print(f"W={W} ...", highlight=False)
        rows.append(measure(model, tok, text, W))
        r = rows[-1]
        console.print(
            f"    lm-eval {r['lm_eval']['ppl']:.6f}, attnlab {r['attnlab']['ppl']:.6f}: rel. diff {r['rel_diff']:.1e} ({r['check']})",
            highlight=False,
        )
    prefix = rows[0]["lm_eval"]["prefix_token"] if rows else None
    failed = [r["window"] for r in rows if r["check"] != "met"]
    notes = [
        "lm-eval = HFLM.loglikelihood_rolling (context_len=1: consecutive windows of W positions, W tokens scored each) around the same "
        "model object, batch_size=1; its perplexity = exp(−loglikelihood / tokens). attnlab = attnlab.runs.evaluate.perplexity(tokens=None, "
        "window=W, stride=W, prefix_token=lm-eval's prefix token), pooled = exp(mean token NLL).",
        f"lm-eval's prefix token (HFLM.prefix_token_id: BOS if the tokenizer defines one, else EOS): {prefix} = {tok.convert_ids_to_tokens(prefix)!r}; "
        f"the tokenizer itself adds {start_tokens(tok) or 'no'} start tokens, so without a prefix (attnlab's default) the text's first token is "
        "not scored and every window after the first starts one token later.",
        f"Check: |attnlab − lm-eval| / lm-eval ≤ {TOLERANCE:g} with the same tokens and windows scored: "
        + ("met at every W." if not failed else f"NOT met at W = {', '.join(map(str, failed))}."),
        "Wall times: one pass of each over the whole text, in turn, on a shared 2-core machine: compare within a row only.",
    ]
    console.print()
    print_table(console, "attnlab vs lm-evaluation-harness: rolling perplexity of The Tempest", rows, COLUMNS, pretty)
    for n in notes:
        console.print(n, highlight=False)
    paths = write(
        "lm_eval_agreement",
        rows,
        [pretty(r) for r in rows],
        COLUMNS,
        settings={
            "model": MODEL,
            "dtype": str(next(model.parameters()).dtype),
            "attn_implementation": model.config._attn_implementation,
            "text": "tempest (attnlab.data.sample_text(), whole)",
            "text_chars": len(text),
            "windows": windows,
            "tolerance_rel": TOLERANCE,
            "prefix_token": prefix,
            "batch_size": 1,
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
            "lm_eval": metadata.version("lm_eval"),
            "transformers": metadata.version("transformers"),
            "tokenizers": metadata.version("tokenizers"),
        },
        notes=notes,
    )
    console.print(f"wrote {paths[0]} and {paths[1]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
