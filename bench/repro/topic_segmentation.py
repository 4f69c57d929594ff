"""Paper 60 (topic segmentation): training the siamese pair encoder on three tasks (same topic,
topic class, next sentence) segments held-out documents better than training it on the same-topic
task alone.

Synthetic documents: 20 topics over a 300-word vocabulary, each topic preferring its own 12 words.
A document is 6 segments of 3 to 8 sentences, each segment on a topic different from the previous;
a sentence is 8 words, each drawn from the segment topic's words with probability 0.35 and
uniformly from the vocabulary otherwise; a sentence vector is its normalised bag of words. Training
uses 40 documents (about 200 labelled boundaries), testing 200 documents. Training pairs: each
pair of consecutive sentences (same topic = same segment; topic labels of both; next sentence = 1),
plus, for half of them, ``b`` replaced by a random sentence of another document (next sentence = 0;
same topic from the true topics). Model: attnlab's ``TopicPairEncoder(300, 64, 20)``; "multi-task"
weights the three losses 1/1/1, "single-task" 1/0/0. Adam lr 3e-3, batch 128, 600 steps, 3 seeds.
Segmentation: a boundary between consecutive test sentences where σ(same-topic logit) < 0.5;
measured: boundary F1 and Pk (window = half the mean segment length; lower is better).

Criterion (set before running): multi-task boundary F1 above single-task in every seed.

Usage: python bench/repro/topic_segmentation.py [--quick]   (under a minute on one core)
"""

from __future__ import annotations

import argparse

import torch
from common import bar_chart, fmt, save

from attnlab.operators.topic_pairs import TopicPairEncoder

TOPICS, VOCAB, WORDS, PER, P_TOPIC = 20, 300, 12, 8, 0.35
TRAIN_DOCS, TEST_DOCS, BATCH, LR = 40, 200, 128, 3e-3


def documents(n: int, g: torch.Generator, topic_words: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` documents, each (sentence vectors [S, V], topic per sentence [S])."""
    docs = []
    for _ in range(n):
        topics, prev = [], -1
        for _ in range(6):
            t = int(torch.randint(0, TOPICS - 1, (1,), generator=g))
            t = t + (t >= prev) if prev >= 0 else t  # a topic different from the previous segment's
            topics += [t] * int(torch.randint(3, 9, (1,), generator=g))
            prev = t
        tt = torch.tensor(topics)  # (S,)
        own = topic_words[tt][torch.arange(len(tt))[:, None], torch.randint(0, WORDS, (len(tt), PER), generator=g)]  # (S, 8)
        rand = torch.randint(0, VOCAB, (len(tt), PER), generator=g)
        words = torch.where(torch.rand(len(tt), PER, generator=g) < P_TOPIC, own, rand)  # (S, 8)
        x = torch.zeros(len(tt), VOCAB).scatter_add_(1, words, torch.ones(len(tt), PER)) / PER  # (S, V)
        docs.append((x, tt))
    return docs


def pairs(docs, g: torch.Generator):
    a = torch.cat([x[:-1] for x, _ in docs])
    b = torch.cat([x[1:] for x, _ in docs])
    ta = torch.cat([t[:-1] for _, t in docs])
    tb = torch.cat([t[1:] for _, t in docs])
    allx, allt = torch.cat([x for x, _ in docs]), torch.cat([t for _, t in docs])
    swap = torch.rand(len(a), generator=g) < 0.5
    j = torch.randint(0, len(allx), (len(a),), generator=g)  # a random sentence (another document, almost surely)
    b, tb = torch.where(swap[:, None], allx[j], b), torch.where(swap, allt[j], tb)
    return a, b, ta, tb, (ta == tb).float(), (~swap).float()


def segment_scores(m: TopicPairEncoder, docs) -> tuple[float, float]:
    tp = fp = fn = 0
    pk_err = pk_n = 0
    k = max(1, round(sum(len(t) for _, t in docs) / sum(int((t[1:] != t[:-1]).sum()) + 1 for _, t in docs) / 2))
    with torch.no_grad():
        for x, t in docs:
            pred = torch.sigmoid(m(x[:-1], x[1:]).same_topic) < 0.5  # (S-1,) boundary after sentence i
            true = t[1:] != t[:-1]
            tp += int((pred & true).sum())
            fp += int((pred & ~true).sum())
            fn += int((~pred & true).sum())
            cp, ct = torch.cumsum(pred.int(), 0), torch.cumsum(true.int(), 0)
            for i in range(len(t) - 1 - k):  # Pk: is there a boundary between i and i+k, in prediction vs truth
                pk_err += int((cp[i + k - 1] - (cp[i - 1] if i else 0) > 0) != (ct[i + k - 1] - (ct[i - 1] if i else 0) > 0))
                pk_n += 1
    return 2 * tp / max(1, 2 * tp + fp + fn), pk_err / max(1, pk_n)


def one_seed(seed: int, steps: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    topic_words = torch.rand(TOPICS, VOCAB, generator=g).argsort(-1)[:, :WORDS]  # (K, 12)
    train, test = documents(TRAIN_DOCS, g, topic_words), documents(TEST_DOCS, g, topic_words)
    row = {"seed": seed, "train boundaries": sum(int((t[1:] != t[:-1]).sum()) for _, t in train)}
    for name, w in (("multi-task", (1.0, 1.0, 1.0)), ("single-task", (1.0, 0.0, 0.0))):
        torch.manual_seed(seed)
        m = TopicPairEncoder(VOCAB, 64, TOPICS)
        opt = torch.optim.Adam(m.parameters(), lr=LR)
        gt = torch.Generator().manual_seed(100 + seed)
        for _ in range(steps):
            a, b, ta, tb, same, nxt = pairs(train, gt)
            idx = torch.randint(0, len(a), (BATCH,), generator=gt)
            loss = TopicPairEncoder.loss(m(a[idx], b[idx]), same[idx], ta[idx], tb[idx], nxt[idx], weights=w)
            opt.zero_grad()
            loss.backward()
            opt.step()
        f1, pk = segment_scores(m, test)
        row[f"{name} F1"], row[f"{name} Pk"] = round(f1, 4), round(pk, 4)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, fewer steps (a smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds, steps = ([0], 200) if args.quick else ([0, 1, 2], 600)
    rows = [one_seed(s, steps) for s in seeds]
    wins = sum(r["multi-task F1"] > r["single-task F1"] for r in rows)
    supported = wins == len(rows)
    col = {k: [r[k] for r in rows] for k in ("multi-task F1", "single-task F1", "multi-task Pk", "single-task Pk")}
    verdict = (
        f"multi-task boundary F1 above single-task in {wins}/{len(rows)} seeds: F1 {fmt(col['multi-task F1'])} vs "
        f"{fmt(col['single-task F1'])}; Pk {fmt(col['multi-task Pk'])} vs {fmt(col['single-task Pk'])} (lower is better)"
    )
    keys = list(col)
    save(
        "topic_segmentation",
        claim="A siamese pair encoder trained on same-topic, topic and next-sentence heads together segments documents "
        "better than one trained on the same-topic head alone.",
        paper="60",
        rows=rows,
        verdict=verdict,
        supported=supported,
        figure=bar_chart(
            f"Segmentation of held-out synthetic documents ({len(rows)} seeds)", keys, [sum(col[k]) / len(rows) for k in keys]
        ),
        settings={
            "data": f"{TOPICS} topics × {WORDS} preferred words of {VOCAB}; 6 segments of 3-8 sentences of {PER} words, topic word "
            f"probability {P_TOPIC}; {TRAIN_DOCS} train / {TEST_DOCS} test documents",
            "model": f"TopicPairEncoder({VOCAB}, 64, {TOPICS}); loss weights multi 1/1/1, single 1/0/0",
            "train": {"steps": steps, "batch_size": BATCH, "lr": LR, "optimizer": "Adam", "negatives": "half of b replaced"},
            "seeds": seeds,
        },
    )


if __name__ == "__main__":
    main()
