"""Retrieval probe: the Retrieval Head paper's scoring, step by step, and a real needle trial."""

import torch

from attnlab.core import AttentionChunk, Site
from attnlab.probes import Retrieval
from attnlab.runs.needle import needle_in_a_haystack, rouge1_recall


def _chunk(top: list[int], lk: int) -> AttentionChunk:
    """A decode step's chunk whose head h puts its top-1 attention on key top[h]."""
    p = torch.full((1, len(top), 1, lk), 0.01)
    for h, t in enumerate(top):
        p[0, h, 0, t] = 0.9
    return AttentionChunk(probs=p, visible=torch.ones(1, 1, 1, lk, dtype=torch.bool), q_idx=torch.tensor([lk - 1]), kv_start=0, lk=lk)


def test_scores_count_only_copies_from_the_needle_in_recalled_trials():
    prompt = torch.tensor([5, 6, 7, 8, 9, 10, 11, 12])  # needle is positions 2..5: tokens 7 8 9 10
    probe = Retrieval()
    site = Site("layers.0.attn", layer=0)
    probe.start_trial(prompt, (2, 6))
    # step 1 generates 8: head 0 looks at position 3 (token 8: a copy), head 1 at 6 (outside), head 2 at 2 (token 7: wrong token)
    probe.observe(_chunk([3, 6, 2], 9), site)
    probe.step(8)
    probe.observe(_chunk([4, 4, 4], 10), site)  # step 2 generates 9: all three copy it
    probe.step(9)
    probe.end_trial(True)
    probe.start_trial(prompt, (2, 6))
    probe.observe(_chunk([3, 3, 3], 9), site)
    probe.step(8)
    probe.end_trial(False)  # not recalled: does not count
    r = probe.result()["layers.0.attn"]
    torch.testing.assert_close(r["score"], torch.tensor([2 / 4, 1 / 4, 1 / 4], dtype=torch.float64))
    assert r["trials"] == 1


def test_rouge1_recall_counts_clipped_lowercased_words():
    for stemmer in (True, False):
        assert rouge1_recall("the cat sat", "The cat, the dog.", stemmer=stemmer) == 2 / 3
        assert rouge1_recall("a a b", "a b", stemmer=stemmer) == 2 / 3  # clipped counts
        assert rouge1_recall("", "x", stemmer=stemmer) == 0.0


def test_rouge1_recall_stems_as_the_papers_code():
    # Porter stems by hand: sandwiches -> sandwich, sitting -> sit, parks -> park; "is"/"in" stay (3 letters or fewer)
    needle = "The best thing is to sit in the park and eat a sandwich."  # 13 words
    answer = "Sitting in parks, eating sandwiches is the best thing."  # hits: the best thing is sit in park eat sandwich = 9
    assert rouge1_recall(needle, answer) == 9 / 13
    assert rouge1_recall(needle, answer, stemmer=False) == 5 / 13  # the best thing is in: words as written


def test_needle_trial_on_smollm2_finds_copying_heads(smollm2):
    from attnlab.data import haystack
    from attnlab.models.hf import instrument, sites

    model, tok = smollm2
    instrument(model)
    probe = Retrieval()
    (trial,) = needle_in_a_haystack(model, tok, probe, haystack=haystack(), lengths=[512], depths=[0.5])
    assert trial.recalled, trial.answer
    heads = probe.heads(sites(model))
    assert heads and heads[0]["score"] > 0.1
