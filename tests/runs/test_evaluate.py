"""The evaluation run: paired before/after measurements with a confidence interval."""

import torch

from attnlab.core.site import Edit
from attnlab.models import hf
from attnlab.runs.evaluate import MetricResult, compare, ioi_prompts, logit_difference, perplexity


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
    base = perplexity(model, tok, windows=2, window=64)
    assert perplexity(model, tok, windows=2, window=64) == base  # deterministic
    edit = ZeroLayer(0)
    (r,) = compare(model, tok, [edit], ["ppl"], options={"ppl": {"windows": 2, "window": 64}})
    assert r.before == base and all(a > b for a, b in zip(r.after, r.before))  # layer 0 is the most important
    assert edit.prepared == 2  # once per edited forward pass
    diffs = logit_difference(model, tok, n=4)
    assert len(diffs) == 4 and sum(diffs) > 0  # SmolLM2 prefers the indirect object on average
    assert torch.isfinite(torch.tensor(diffs)).all()
