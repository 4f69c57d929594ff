"""Retrieval heads (paper 33, "Retrieval Head Mechanistically Explains Long-Context Factuality").

Scored exactly as the paper's code does: a needle sentence is hidden at some depth of a long
haystack and the model answers a question about it with greedy decoding. At every decode step
(the prefill is not scored), for every head, if the head's top-1 attention falls inside the
needle span and the token there equals the token being generated, the head's score for the trial
grows by ``1 / |needle|``. A trial counts only if the answer recalls the needle (ROUGE-1 recall of
the needle sentence above 50%; words lower-cased, no stemming). A head's retrieval score is its
mean over the counted trials; retrieval heads score above 0.1.

:func:`needle_in_a_haystack` runs the trials over context lengths × depths on the haystack
shipped with attnlab (:func:`attnlab.data.haystack`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from attnlab.core import attach
from attnlab.core.site import AttentionChunk, Site
from attnlab.probes._base import Findings, SiteProbe, grid, kv_group, register

__all__ = ["NEEDLE", "Retrieval", "Trial", "needle_in_a_haystack", "rouge1_recall"]


@dataclass(frozen=True)
class Needle:
    """A needle sentence and the question that asks for it."""

    sentence: str
    question: str


NEEDLE = Needle(
    sentence="The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.",
    question="What is the best thing to do in San Francisco?",
)


@register("retrieval")
class Retrieval(SiteProbe):
    """Per head: the retrieval score of paper 33, from decode steps of needle trials.

    Paper: 33 (retrieval heads).
    Shapes: per site, ``score`` is ``[H]``: mean over recalled trials.

    Driven by :func:`needle_in_a_haystack`, which sets the needle span and calls :meth:`step`
    after each decode step and :meth:`end_trial` after each trial.

    Args:
        threshold: score above which a head is a retrieval head (0.1).
        sites: which sites to observe.
    """

    def __init__(self, threshold: float = 0.1, sites=None):
        super().__init__(sites)
        self.threshold = threshold
        self.prompt_ids: Tensor | None = None
        self.span = (0, 0)
        self._top: dict[str, Tensor] = {}
        self._trial: dict[str, Tensor] = {}
        self.trials: list[dict] = []

    def start_trial(self, prompt_ids: Tensor, span: tuple[int, int]) -> None:
        """A new trial: the prompt's token ids ``[T]`` and the needle's token span ``[start, end)``."""
        self.prompt_ids, self.span = prompt_ids.cpu(), span
        self._trial.clear()

    def observe(self, chunk: AttentionChunk, site: Site) -> None:
        if not self.wants(site) or self.prompt_ids is None:
            return
        p = chunk.probs[0, :, -1]  # [H, Ts]: the newest query row
        self._top[site.name] = (chunk.kv_start + p.argmax(-1)).cpu()  # [H] top-1 key position

    def step(self, token: int) -> None:
        """After a decode step that generated ``token``: credit heads that copied it from the needle."""
        start, end = self.span
        for name, pos in self._top.items():
            inside = (pos >= start) & (pos < end)
            copied = torch.zeros_like(inside)
            copied[inside] = self.prompt_ids[pos[inside]] == token
            self._trial[name] = self._trial.get(name, torch.zeros(pos.shape, dtype=torch.float64)) + copied.double() / (end - start)
        self._top.clear()

    def end_trial(self, recalled: bool, **info) -> None:
        """Close a trial; its scores count only if the answer ``recalled`` the needle."""
        self.trials.append({**info, "recalled": recalled})
        if recalled:
            for name, score in self._trial.items():
                acc = self._acc.setdefault(name, [0.0, 0])
                acc[0] = acc[0] + score
                acc[1] += 1
        self._trial.clear()

    def result(self) -> dict:
        """Per site: ``score [H]`` (mean over recalled trials) and ``trials`` (how many counted)."""
        return {name: {"score": s / n, "trials": n} for name, (s, n) in self._acc.items()}

    def heads(self, sites: Sequence[Site]) -> list[dict]:
        """Retrieval heads (score above the threshold), best first."""
        r = self.result()
        rows = [
            {"layer": s.layer, "head": h, "kv group": kv_group(s, h), "score": round(float(x), 4)}
            for s in sites
            if s.name in r
            for h, x in enumerate(r[s.name]["score"])
            if x > self.threshold
        ]
        return sorted(rows, key=lambda row: -row["score"])

    def findings(self, sites: list[Site]) -> Findings:
        r = self.result()
        out = Findings(heatmaps={"retrieval score": grid({k: v["score"] for k, v in r.items()}, sites)} if r else {})
        counted = sum(t["recalled"] for t in self.trials)
        out.tables["needle trials"] = [
            {k: v for k, v in t.items() if k != "answer"} | {"answer": t.get("answer", "")[:80]} for t in self.trials
        ]
        heads = self.heads(sites)
        out.tables[f"retrieval heads (score > {self.threshold:g})"] = heads
        out.notes.append(
            f"Needle recalled in {counted} of {len(self.trials)} trials; {len(heads)} retrieval heads (score > {self.threshold})"
            + (f", strongest layer {heads[0]['layer']} head {heads[0]['head']} ({heads[0]['score']:.2f})." if heads else ".")
        )
        return out


@dataclass
class Trial:
    """One needle trial's outcome."""

    length: int
    depth: float
    recalled: bool
    answer: str
    recall: float
    span: tuple[int, int] = field(default=(0, 0))


def rouge1_recall(reference: str, candidate: str) -> float:
    """Unigram recall of ``reference`` in ``candidate`` (lower-cased alphanumeric words, clipped counts)."""
    ref = re.findall(r"[a-z0-9]+", reference.lower())
    cand = re.findall(r"[a-z0-9]+", candidate.lower())
    if not ref:
        return 0.0
    counts: dict[str, int] = {}
    for w in cand:
        counts[w] = counts.get(w, 0) + 1
    hit = 0
    for w in ref:
        if counts.get(w, 0) > 0:
            counts[w] -= 1
            hit += 1
    return hit / len(ref)


def _prompt(tokenizer, context: str, question: str) -> str:
    user = f"{context}\n\nBased on the content of the text above, answer the question in one sentence.\nQuestion: {question}"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    return f"{user}\nAnswer:"


def _needle_span(ids: list[int], needle_ids: list[int]) -> tuple[int, int]:
    """Where the needle's tokens sit in the prompt: the first window sharing ≥90% of its tokens."""
    want = set(needle_ids)
    n = len(needle_ids)
    for i in range(len(ids) - n + 1):
        if len(want & set(ids[i : i + n])) >= 0.9 * len(want):
            return i, i + n
    raise ValueError("the needle's tokens were not found in the prompt: the tokenizer split it differently in context")


def needle_in_a_haystack(
    model,
    tokenizer,
    probe: Retrieval,
    *,
    haystack: str,
    lengths: Sequence[int] = (1024,),
    depths: Sequence[float] = (0.1, 0.5, 0.9),
    needle: Needle = NEEDLE,
    max_new_tokens: int = 32,
    edits: Sequence = (),
    progress: Callable[[str], None] | None = None,
) -> list[Trial]:
    """Run needle trials with greedy decoding, feeding ``probe`` the decode steps.

    Args:
        lengths: prompt lengths in tokens (the haystack is cut so the whole prompt fits).
        depths: where the needle goes, as a fraction of the context (0 = start, 1 = end).
        max_new_tokens: decode budget; decoding stops at a newline or the end-of-sequence token.
        edits: attached to the prefill and every decode step (an edit's ``prepare`` sees the prompt).
        progress: called with a line per trial.
    """
    hay_ids = tokenizer(haystack, add_special_tokens=False)["input_ids"]
    needle_ids = tokenizer(" " + needle.sentence, add_special_tokens=False)["input_ids"]
    overhead = len(tokenizer(_prompt(tokenizer, "", needle.question), add_special_tokens=False)["input_ids"]) + len(needle_ids) + 8
    trials = []
    eos = tokenizer.eos_token_id
    for length in lengths:
        budget = length - overhead
        if budget < 16 or budget > len(hay_ids):
            raise ValueError(f"needle trial length {length} needs between {overhead + 16} and {len(hay_ids) + overhead} tokens of prompt")
        for depth in depths:
            cut = hay_ids[:budget]
            at = int(depth * budget)
            before, after = tokenizer.decode(cut[:at]), tokenizer.decode(cut[at:])
            context = before.rstrip() + " " + needle.sentence + " " + after.lstrip()
            ids = tokenizer(_prompt(tokenizer, context, needle.question), add_special_tokens=False, return_tensors="pt")["input_ids"]
            span = _needle_span(ids[0].tolist(), tokenizer(needle.sentence, add_special_tokens=False)["input_ids"])
            probe.start_trial(ids[0], span)
            for e in edits:
                if hasattr(e, "prepare"):
                    e.prepare(model, ids)
            generated = _greedy(model, ids, probe, max_new_tokens, eos, tokenizer, edits)
            answer = tokenizer.decode(generated, skip_special_tokens=True).strip()
            recall = rouge1_recall(needle.sentence, answer)
            trial = Trial(int(ids.shape[1]), float(depth), recall > 0.5, answer, round(recall, 3), span)
            probe.end_trial(trial.recalled, length=trial.length, depth=depth, recall=trial.recall, answer=answer)
            trials.append(trial)
            if progress:
                progress(f"needle at depth {depth:.0%} of {trial.length} tokens: recall {recall:.0%} — {answer[:60]!r}")
    return trials


@torch.no_grad()
def _greedy(model, ids: Tensor, probe: Retrieval, max_new_tokens: int, eos: int | None, tokenizer, edits: Sequence = ()) -> list[int]:
    """Greedy decoding with a KV cache; the probe sees every decode step after the prefill."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # transformers renamed it
    with attach(edits=list(edits)):
        out = model(input_ids=ids, use_cache=True)
    cache = getattr(out, name)
    token = int(out.logits[0, -1].argmax())
    generated = [token]
    for _ in range(max_new_tokens - 1):
        if token == eos or "\n" in tokenizer.decode([token]):
            break
        with attach(probes=[probe], edits=list(edits)):
            out = model(input_ids=torch.tensor([[token]]), use_cache=True, **{name: cache})
        cache = getattr(out, name)
        token = int(out.logits[0, -1].argmax())
        probe.step(token)
        generated.append(token)
    return generated
