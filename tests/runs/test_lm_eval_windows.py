"""attnlab's rolling windows are lm-evaluation-harness's: the same forward inputs, the same scored targets.

lm-eval's ``loglikelihood_rolling`` cuts a token list with ``get_rolling_token_windows`` (context
``window − stride + 1``), makes each pair disjoint (``make_disjoint_window``), and its HFLM feeds
``(context + continuation)[-(max_length + 1):][:-1]`` to the model, scoring the continuation on
the last ``len(continuation)`` logits. :func:`attnlab.data.tokens.rolling_windows` with lm-eval's
prefix token and no start tokens must give exactly those inputs and targets.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnlab.data.tokens import rolling_windows

lm_utils = pytest.importorskip("lm_eval.utils")

PREFIX = 1  # lm-eval's prefix token: BOS, else EOS


def lm_eval_windows(ids: list[int], window: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """``(input, targets)`` per forward pass, as lm-eval's HFLM builds them from its rolling windows."""
    pairs = lm_utils.get_rolling_token_windows(token_list=ids, prefix_token=PREFIX, max_seq_len=window, context_len=window - stride + 1)
    out = []
    for context, continuation in map(lm_utils.make_disjoint_window, pairs):
        inp = (context + continuation)[-(window + 1) :][:-1]  # HFLM._loglikelihood_tokens, causal
        out.append((inp, continuation))
    return out


@given(st.data(), st.integers(1, 300), st.integers(2, 64))
def test_rolling_windows_are_lm_evals(data, n, window):
    stride = data.draw(st.integers(1, window), label="stride")
    ids = list(range(10, 10 + n))  # distinct ids: a window off by one position cannot match by chance
    ours = rolling_windows(ids, [], window=window, stride=stride, prefix_token=PREFIX)
    theirs = lm_eval_windows(ids, window, stride)
    assert len(ours) == len(theirs)
    scored = 0
    for w, (inp, targets) in zip(ours, theirs):
        assert w.input_ids.tolist() == [inp]
        assert w.targets.tolist() == targets
        # lm-eval scores the last len(targets) logits of its input
        assert w.logits_from == len(inp) - len(targets)
        assert w.text_start == scored
        scored += len(targets)
    assert scored == n  # every token scored once, the first one too (after the prefix token)


def test_lm_evals_own_setting_scores_disjoint_windows():
    """lm-eval's ``loglikelihood_rolling`` passes ``context_len=1``: attnlab's ``stride=window``."""
    ids = list(range(10, 10 + 700))
    theirs = lm_eval_windows(ids, 256, 256)
    assert [len(t) for _, t in theirs] == [256, 256, 188]
    ours = rolling_windows(ids, [], window=256, stride=256, prefix_token=PREFIX)
    assert [w.input_ids.tolist() for w in ours] == [[inp] for inp, _ in theirs]
