"""The scan's attention maps for the report's viewer: chosen heads (--maps) and found ones, only those kept, masks as None."""

import pytest
import torch

from attnlab.data import tokens as T
from attnlab.models import hf
from attnlab.runs import scan as S
from tests.conftest import tiny_causal_lm


@pytest.fixture(scope="module")
def tok(smollm2):
    return smollm2[1]


@pytest.fixture(scope="module")
def tiny(tok):
    """A tiny llama with SmolLM2's vocabulary, and its eager attention as the reference."""
    return tiny_causal_lm("llama", vocab_size=len(tok), max_position_embeddings=128)


def test_chosen_maps_equal_the_eager_attention_and_hide_masked_keys(tiny, tok):
    text = "Full fathom five thy father lies; of his bones are coral made."
    ids, _ = S._map_prompt(tok, [text])
    with torch.no_grad():
        want = tiny(input_ids=ids, output_attentions=True).attentions  # eager attention, before instrumenting
    model = hf.instrument(tiny)
    maps = S._attention_maps(model, tok, [text], {}, hf.sites(model), chosen=[(1, 3), (0, 1)])
    assert [(m["layer"], m["head"], m["why"]) for m in maps] == [(1, 3, "chosen (--maps)"), (0, 1, "chosen (--maps)")]
    for m in maps:
        ref = want[m["layer"]][0, m["head"]]  # [T, T]
        T_ = ref.shape[0]
        assert len(m["tokens"]) == T_ == ids.shape[1] <= S.MAP_TOKENS
        for q in range(T_):
            for k in range(T_):
                got = m["matrix"][q][k]
                if k > q:
                    assert got is None  # causal: masked, not 0
                else:
                    assert got == pytest.approx(float(ref[q, k]), abs=1e-4)
    assert maps[0]["prompt"] == f"the first {ids.shape[1] - len(T.start_tokens(tok))} tokens of the text"


def test_only_the_chosen_heads_are_kept_while_streaming(tiny, tok):
    model = hf.instrument(tiny)
    cap = S._Maps({(1, 2)})
    from attnlab.core import attach

    with torch.no_grad(), attach(probes=[cap]):
        model(input_ids=torch.tensor([[1, 2, 3, 4, 5]]))
    assert list(cap.maps) == [(1, 2)] and cap.maps[(1, 2)].shape == (5, 5)


def test_the_default_prompt_is_the_sample_said_twice_and_found_heads_join_chosen_ones(tiny, tok):
    model = hf.instrument(tiny)
    findings = {"patterns": {"tables": {"top_induction": [{"layer": 1, "head": 3, "score": 0.5}]}}}
    maps = S._attention_maps(model, tok, [], findings, hf.sites(model), chosen=[(1, 3), (0, 0)])
    assert [(m["layer"], m["head"], m["why"]) for m in maps] == [
        (1, 3, "chosen (--maps) and strongest induction head"),
        (0, 0, "chosen (--maps)"),
    ]
    start = len(T.start_tokens(tok))
    toks = maps[0]["tokens"][start:]
    assert len(toks) % 2 == 0 and toks[: len(toks) // 2] == toks[len(toks) // 2 :]  # said twice: induction shows
    assert "said twice" in maps[0]["prompt"]


def test_a_scan_refuses_a_head_the_model_lacks_before_any_work(tiny, tok):
    with pytest.raises(ValueError, match=r"maps asks for layer 5 head 0, and the model has layers 0..1 with 4 heads each"):
        S.scan(hf.instrument(tiny), tok, ["word " * 20], probes=["entropy"], repeated=False, maps=[(5, 0)])
