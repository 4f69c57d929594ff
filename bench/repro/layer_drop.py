"""Paper 31 (LLM-Drop) on SmolLM2-135M: dropping the attention sublayers the importance probe
ranks most redundant raises perplexity less than dropping random or the least redundant ones.

The ranking (S_l = mean cos(X, X + Attn(LN X))) is computed on Lucrece; perplexity is measured on
The Tempest (held out), 8 windows of 256 tokens, for n = 2, 4, 8 dropped sublayers: the n most
redundant, the n least redundant, and n random ones (5 draws).

Usage: python bench/repro/layer_drop.py   (a few minutes on 2 cores)
"""

from __future__ import annotations

import math

from common import bar_chart, save

from attnlab.edits.drop_attention import DropAttention
from attnlab.models.hf import instrument, load
from attnlab.runs.calibrate import calibrate
from attnlab.runs.evaluate import perplexity
from attnlab.stats import mean_ci

DRAWS = 5


def main():
    model, tok = load("smollm2-135m")
    instrument(model)

    def ppl(edit=None) -> float:
        if edit is None:
            return sum(perplexity(model, tok)) / 8
        try:
            return sum(perplexity(model, tok, [edit])) / 8
        finally:
            edit.close()

    base = ppl()
    ranking = calibrate(DropAttention(top=1), model, tok)
    rows, values, labels = [{"dropped": 0, "choice": "none", "perplexity": round(base, 2)}], [base], ["none"]
    summary = {}
    for n in (2, 4, 8):
        most = ppl(calibrate(DropAttention(top=n), model, tok))
        least = ppl(calibrate(DropAttention(bottom=n), model, tok))
        rand = mean_ci([ppl(calibrate(DropAttention(random=n, seed=s), model, tok)) for s in range(DRAWS)])
        summary[n] = (most, least, rand)
        rows += [
            {"dropped": n, "choice": "most redundant", "perplexity": round(most, 2)},
            {"dropped": n, "choice": f"random ({DRAWS} draws)", "perplexity": f"{rand.mean:.2f} ± {(rand.high - rand.low) / 2:.2f}"},
            {"dropped": n, "choice": "least redundant", "perplexity": round(least, 2)},
        ]
        values += [most, rand.mean, least]
        labels += [f"top-{n}", f"rand-{n}", f"bottom-{n}"]
    supported = all(most < rand.mean and most < least for most, least, rand in summary.values())
    verdict = "; ".join(f"n={n}: most redundant {m:.1f}, random {r.mean:.1f}, least redundant {l:.3g}" for n, (m, l, r) in summary.items())
    save(
        "layer_drop",
        claim="Dropping the n attention sublayers ranked most redundant (n = 2, 4, 8) raises perplexity less than dropping n random or least-redundant ones.",
        paper="31",
        rows=rows,
        verdict=f"baseline perplexity {base:.1f}; {verdict}.",
        supported=supported,
        figure_svg=bar_chart(
            "SmolLM2-135M perplexity (log10) with attention sublayers dropped",
            labels,
            [math.log10(v) for v in values],
            None,
            "log10 perplexity",
        ),
        settings={
            "ranking_text": "lucrece",
            "eval": "tempest, 8 windows x 256 tokens",
            "draws": DRAWS,
            "ranking": getattr(ranking, "ranking", None),
        },
    )


if __name__ == "__main__":
    main()
