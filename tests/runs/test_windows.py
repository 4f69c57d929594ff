"""How sequences start (attnlab.data.tokens): every window and prompt starts as the tokenizer starts one.

The rolling windows are checked against their definition (every token scored once, each with
the context the scheme promises), the evaluations against a recording of every sequence a model
was fed, on tokenizers that add BOS, add nothing, or add [CLS] … [SEP].
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnlab.data import tokens as T
from tests.conftest import char_tokenizer, tiny_causal_lm


def test_start_and_end_tokens_are_what_the_tokenizer_adds():
    assert T.start_tokens(char_tokenizer("bos")) == [1] and T.end_tokens(char_tokenizer("bos")) == []
    assert T.start_tokens(char_tokenizer("none")) == [] and T.end_tokens(char_tokenizer("none")) == []
    bert = char_tokenizer("bert")
    assert T.start_tokens(bert) == [1] and T.end_tokens(bert) == [2]
    assert T.sequence(bert, T.encode(bert, "ab")).tolist() == [bert("ab")["input_ids"]]
    assert T.prompt(bert, [5, 6]).tolist() == [[1, 5, 6]]  # a prompt is continued: no end token


def test_ids_that_already_start_with_bos_get_no_second_copy():
    tok = char_tokenizer("bos")
    assert T.prompt(tok, [1, 5, 6]).tolist() == [[1, 5, 6]]
    assert T.prompt(tok, [5, 6]).tolist() == [[1, 5, 6]]


def test_text_windows_are_whole_sequences_of_the_window_length():
    tok = char_tokenizer("bert")
    ws = T.text_windows(tok, "abcdefghij" * 3, 3, 8)
    assert all(w.shape == (1, 8) and w[0, 0] == 1 and w[0, -1] == 2 for w in ws)
    assert torch.cat([w[0, 1:-1] for w in ws]).tolist() == T.encode(tok, "abcdefghij" * 3)[:18]  # consecutive
    with pytest.raises(ValueError, match="fewer than windows"):
        T.text_windows(tok, "abc", 3, 8)


@given(
    n=st.integers(1, 120),
    window=st.integers(2, 24),
    stride_frac=st.floats(0.01, 1.0),
    start=st.sampled_from([[], [0], [0, 99]]),
    prefix=st.booleans(),
)
def test_rolling_windows_score_every_token_once_with_the_promised_context(n, window, stride_frac, start, prefix):
    room = window - len(start)
    if room < 1:
        return
    stride = max(1, round(stride_frac * room))
    ids = list(range(1000, 1000 + n))
    prefix_token = 7 if prefix and not start else None
    ws = T.rolling_windows(ids, start, window=window, stride=stride, prefix_token=prefix_token)
    head = start or ([7] if prefix_token is not None else [])
    scored = [t for w in ws for t in w.targets.tolist()]
    assert scored == ids[0 if head else 1 :]  # every token once, in order
    for k, w in enumerate(ws):
        x = w.input_ids[0].tolist()
        assert len(x) <= window and x[: len(head if k == 0 else start)] == (head if k == 0 else start)
        for j, target in enumerate(w.targets.tolist()):
            pos = w.logits_from + j  # the logits here predict target: the input there is its predecessor
            before = ids.index(target) - 1
            assert x[pos] == (ids[before] if before >= 0 else head[-1])
            body = x[len(head if k == 0 else start) : pos + 1]
            assert body == ids[before - len(body) + 1 : before + 1] if body else True  # contiguous context
            if k > 0:  # later windows: the last target sees room tokens, each earlier one a token less
                last = len(w.targets) - 1
                assert len(body) == min(before + 1, room - (last - j))
                assert len(body) >= min(before + 1, room - stride + 1)


def test_rolling_windows_with_stride_one_give_each_token_the_last_room_tokens():
    ws = T.rolling_windows(list(range(10, 20)), [1], window=4, stride=1)
    assert [(w.input_ids.tolist()[0], w.targets.tolist()) for w in ws][:3] == [
        ([1, 10, 11, 12], [10, 11, 12, 13]),
        ([1, 11, 12, 13], [14]),
        ([1, 12, 13, 14], [15]),
    ]


def test_rolling_windows_refuse_what_cannot_be_scored():
    with pytest.raises(ValueError, match="stride must be"):
        T.rolling_windows([1, 2, 3], [], window=4, stride=5)
    with pytest.raises(ValueError, match="prefix_token stands in"):
        T.rolling_windows([1, 2, 3], [9], window=4, prefix_token=0)
    with pytest.raises(ValueError, match="no room"):
        T.rolling_windows([1, 2, 3], [9, 9], window=2)


def _nll_reference(model, ids, start, window):
    """Per-token NLL with stride 1, from its definition: token j sees start + the room tokens before it."""
    room = window - len(start)
    out = []
    for j in range(0 if start else 1, len(ids)):
        ctx = torch.tensor([start + ids[max(0, j - room) : j]])
        logits = model(input_ids=ctx).logits[0, -1]
        out.append(float(torch.nn.functional.cross_entropy(logits[None].float(), torch.tensor([ids[j]]))))
    return out


@pytest.mark.parametrize("start", ["bos", "none"])
def test_perplexity_equals_its_definition_token_by_token(start):
    from attnlab.runs.evaluate import perplexity

    model, tok = tiny_causal_lm("llama"), char_tokenizer(start)
    text = "the quick brown fox jumps over the lazy dog. " * 2
    s = perplexity(model, tok, text=text, tokens=None, window=12, stride=1)
    with torch.no_grad():
        ref = _nll_reference(model, T.encode(tok, text), T.start_tokens(tok), 12)
    assert len(s.detail["token_nll"]) == len(ref) == sum(s.weights)
    assert max(abs(a - b) for a, b in zip(s.detail["token_nll"], ref)) < 1e-4
    pooled = math.exp(sum(ref) / len(ref))
    assert math.isclose(math.exp(sum(s.detail["token_nll"]) / len(ref)), pooled, rel_tol=1e-5)


class _Fed:
    """Records the input_ids of every forward pass that is not a one-token decode step."""

    def __init__(self, model):
        self.inputs: list[list[int]] = []
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1:
            self.inputs.append(ids[0].tolist())


def _every_run(model, tok):
    """Each run that feeds text windows or prompts to a model, small."""
    from attnlab.edits.drop_attention import DropAttention
    from attnlab.edits.head_mask import HeadMask
    from attnlab.edits.sink_redistribute import SinkRedistribute
    from attnlab.runs.calibrate import calibrate
    from attnlab.runs.evaluate import logit_difference, needle, passage_match, perplexity

    perplexity(model, tok, tokens=300, window=64, stride=32)
    logit_difference(model, tok, n=2)
    needle(model, tok, lengths=[800], depths=[0.5])
    passage_match(model, tok, n=3)
    calibrate(DropAttention(top=1), model, tok, windows=2, window=64)
    calibrate(HeadMask(heads="L0H0", mode="mean"), model, tok, max_tokens=64)
    calibrate(SinkRedistribute(layers=[0], heads="L0H0"), model, tok, windows=1, window=64, candidates=["L0H0"])


@pytest.mark.parametrize("start", ["bos", "none"])
def test_every_evaluation_window_starts_as_the_tokenizer_starts_a_sequence(start):
    from attnlab.models import hf

    model, tok = tiny_causal_lm("llama", vocab_size=64), char_tokenizer(start)
    hf.instrument(model)
    fed = _Fed(model)
    _every_run(model, tok)
    assert len(fed.inputs) > 20
    bos = tok.bos_token_id
    for ids in fed.inputs:
        if start == "bos":
            assert ids[0] == bos and bos not in ids[1:], ids[:8]
        else:
            assert bos not in ids, ids[:8]  # nothing added: the tokenizer adds no start token


def test_lm_eval_prefix_scores_the_first_token_from_the_declared_bos():
    from attnlab.runs.evaluate import perplexity

    model, tok = tiny_causal_lm("llama"), char_tokenizer("none")  # declares <s> (id 1) but does not add it
    fed = _Fed(model)
    text = "the quick brown fox jumps over the lazy dog"
    s = perplexity(model, tok, text=text, tokens=None, window=16, stride=16, prefix_token="lm-eval")
    assert sum(s.weights) == len(T.encode(tok, text)) and s.detail["prefix_token"] == 1
    assert fed.inputs[0][0] == 1 and all(ids[0] != 1 for ids in fed.inputs[1:])  # only the first window
    assert sum(perplexity(model, tok, text=text, tokens=None, window=16, stride=16).weights) == sum(s.weights) - 1
    with pytest.raises(ValueError, match="prefix_token is a token id, 'lm-eval' or None"):
        perplexity(model, tok, text=text, tokens=None, window=16, prefix_token="bos")
