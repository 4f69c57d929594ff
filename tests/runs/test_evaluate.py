"""The evaluation run: paired before/after measurements with a confidence interval."""

import math

import pytest
import torch

from attnlab.core.site import Edit
from attnlab.models import hf
from attnlab.models.conventions import conventions
from attnlab.runs.edit import choose_evals, run_edit
from attnlab.runs.evaluate import METRICS, MetricResult, compare, ioi_prompts, logit_difference, needle, passage_match, perplexity
from tests.conftest import char_tokenizer, tiny_causal_lm


class ZeroLayer(Edit):
    """A test edit: zero the attention output of one layer; counts the inputs it was prepared on (input_probe calls)."""

    stage = "output"

    def __init__(self, layer):
        self.layer, self.prepared = layer, 0

    def at(self, site):
        return (lambda o: o * 0) if site.layer == self.layer else None

    def input_probe(self, input_ids):
        self.prepared += 1
        return None


def test_paired_difference_and_summary():
    r = MetricResult("ppl", [10.0, 12.0, 14.0], [11.0, 13.0, 16.0], higher_is_better=False)
    d = r.difference
    assert abs(d.mean - 4 / 3) < 1e-12 and d.low < d.mean < d.high
    s = r.summary()
    assert s["before"] == 12.0 and s["after"] == 13.3333 and s["examples"] == 3


def test_ioi_prompts_repeat_the_subject_and_answer_the_other_name():
    for prompt, right, wrong in ioi_prompts(5):
        names = prompt.split(" went")[0].replace("When ", "").split(" and ")
        assert right.strip() in names and wrong.strip() in names and right != wrong
        assert prompt.count(wrong.strip()) == 2 and prompt.count(right.strip()) == 1


def test_an_edit_changes_the_metric_and_no_edit_changes_nothing(smollm2):
    model, tok = smollm2
    hf.instrument(model)
    base = perplexity(model, tok, tokens=128, window=64, stride=64)
    assert perplexity(model, tok, tokens=128, window=64, stride=64).values == base.values  # deterministic
    edit = ZeroLayer(0)
    (r,) = compare(model, tok, [edit], ["ppl"], options={"ppl": {"tokens": 128, "window": 64, "stride": 64}})
    assert r.before == base.values and all(a > b for a, b in zip(r.after, r.before))  # layer 0 is the most important
    assert edit.prepared == 2  # once per edited forward pass
    assert r.weights == [64, 63] and r.summary()["tokens"] == 127  # SmolLM2 adds no BOS: its first token is not scored
    diffs = logit_difference(model, tok, n=4)
    assert len(diffs) == 4 and sum(diffs) > 0  # SmolLM2 prefers the indirect object on average
    assert torch.isfinite(torch.tensor(diffs)).all()


def test_the_pooled_perplexity_weighs_windows_by_their_tokens():
    r = MetricResult("ppl", [10.0, 20.0], [10.0, 40.0], False, weights=[3, 1])
    s = r.summary()
    assert s["tokens"] == 4 and math.isclose(s["pooled_before"], math.exp((3 * math.log(10) + math.log(20)) / 4), rel_tol=1e-4)
    assert s["before"] == 15.0  # the per-window mean is kept beside it


def test_a_base_model_gets_the_few_shot_needle_prompt_and_it_is_recorded():
    from attnlab.runs import needle as N

    model, tok = tiny_causal_lm("llama", vocab_size=64), char_tokenizer("bos")
    hf.instrument(model)
    fed = []
    model.register_forward_pre_hook(
        lambda m, a, kw: fed.append(kw["input_ids"][0].tolist()) if kw["input_ids"].shape[1] > 1 else None, with_kwargs=True
    )
    scores = needle(model, tok, lengths=[800], depths=[0.5])
    assert scores.detail["prompt"] == "few-shot" and len(scores) == 1
    (prompt,) = fed

    def holds(part):  # the prompt holds part's character ids in a row
        ids = tok(part, add_special_tokens=False)["input_ids"]
        return any(prompt[i : i + len(ids)] == ids for i in range(len(prompt)))

    assert prompt[0] == tok.bos_token_id and tok.bos_token_id not in prompt[1:]
    assert holds("he oldest tree in the village is the chestnut that stands behind the mill.")  # the worked example
    assert prompt[-6:] == tok("nswer:", add_special_tokens=False)["input_ids"]  # it ends asking for the answer
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        needle(model, tok, lengths=[800], depths=[0.5], prompt="chat")
    assert N.prompt_style(tok) == "few-shot"


def test_an_instruct_model_gets_its_chat_template(smollm2):
    from attnlab.runs import needle as N

    model, tok = smollm2
    assert N.prompt_style(tok) == "chat"
    assert "<|im_start|>user" in N._prompt(tok, "ctx", "q?", "chat")


def test_encoders_default_to_passage_matching_and_say_what_was_skipped():
    evals, skipped = choose_evals(None, "encoder", "tiny-bert")
    assert evals == ["match"] and [s["what"] for s in skipped] == ["evaluation ppl", "evaluation needle"]
    assert "is an encoder" in skipped[0]["why"]
    assert choose_evals(None, "decoder", "x") == (["ppl", "needle"], [])
    with pytest.raises(ValueError, match=r"the ppl evaluation scores next-token logits.*tiny-bert is an encoder: choose from match"):
        choose_evals(["ppl"], "encoder", "tiny-bert")
    assert all(METRICS[e].kinds for e in METRICS)


def test_edit_on_an_encoder_measures_passage_matching():
    from attnlab.edits import parse

    model, tok = tiny_causal_lm("bert"), char_tokenizer("bert")
    result = run_edit(model, tok, [parse("head_mask:heads=L0H0")], None, specs_text=["head_mask:heads=L0H0"], model_name="tiny-bert")
    (m,) = result.meta["metrics"]
    assert m["metric"] == "match" and m["examples"] == 24
    assert result.examples["match"]["after"] != result.examples["match"]["before"]  # the masked head changed the embeddings
    assert result.meta["skipped"][0]["what"] == "evaluation ppl"
    assert result.meta["model"]["conventions"]["kind"] == "encoder"
    assert result.meta["model"]["conventions"]["start"] == ["[CLS]"] and result.meta["model"]["conventions"]["end"] == ["[SEP]"]


def test_passage_matching_finds_the_sestets_on_a_trained_encoder(minilm):
    model, tok = minilm
    s = passage_match(model, tok)
    assert len(s) == 24 and s.detail["recall_at_1"] > 4 / 24  # chance is 1/24


def test_conventions_read_windows_softcaps_and_start_tokens():
    c = conventions(tiny_causal_lm("gemma2"), char_tokenizer("bos"))
    assert c.kind == "decoder" and c.start == ["<s>"] and c.sliding_window == 5 and c.sliding_layers == 1 and c.softcap == 5.0
    assert "sliding window 5 on 1 of 2 layers" in c.line() and "attention softcap 5" in c.line()
    c = conventions(tiny_causal_lm("llama"), char_tokenizer("none"))
    assert c.start == [] and c.sliding_window is None and c.softcap is None and "sequences start with nothing" in c.line()
    c = conventions(tiny_causal_lm("bert"), char_tokenizer("bert"))
    assert c.kind == "encoder" and c.end == ["[SEP]"]
