"""A scan's defaults fit the model (issue 24): probes by model kind, lengths within the trained positions, each choice recorded."""

import pytest

from attnlab.runs.scan import capped_length, plan_scan, scan
from tests.conftest import char_tokenizer, tiny_causal_lm

TEXT = "the quick brown fox jumps over the lazy dog, and then it sleeps in the sun. " * 3


def test_an_encoder_skips_retrieval_by_default_and_says_why():
    plan = plan_scan(tiny_causal_lm("bert"), name="tiny-bert")
    assert plan.kind == "encoder" and "retrieval" not in plan.probes and plan.needle_lengths == []
    assert plan.skipped == [
        {"what": "probe retrieval", "why": "it decodes needle answers greedily from next-token logits, and tiny-bert is an encoder"}
    ]


def test_a_scan_of_an_encoder_records_what_it_skipped():
    r = scan(tiny_causal_lm("bert"), char_tokenizer("bert"), [TEXT])
    assert [s["what"] for s in r.meta["skipped"]] == ["probe retrieval"] and "retrieval" not in r.findings
    assert "skipped probe retrieval: it decodes needle answers" in r.html()


def test_retrieval_asked_for_by_name_on_an_encoder_is_refused():
    with pytest.raises(
        ValueError, match=r"the retrieval probe decodes needle answers .* tiny-bert is an encoder: it applies to decoders only; choose from"
    ):
        plan_scan(tiny_causal_lm("bert"), ["sink", "retrieval"], name="tiny-bert")


def test_a_decoder_keeps_every_default_probe_and_skips_nothing():
    plan = plan_scan(tiny_causal_lm("llama"))
    assert plan.probes[-1] == "retrieval" and plan.needle_lengths == [512, 768] and plan.skipped == plan.capped == []


@pytest.mark.parametrize(
    ("positions", "lengths"),
    [(600, [512]), (400, [369])],  # a trial reaches its length + 31 positions
)
def test_default_needle_lengths_are_capped_at_the_trained_positions(positions, lengths):
    plan = plan_scan(tiny_causal_lm("llama", max_position_embeddings=positions), name="tiny")
    assert plan.needle_lengths == lengths
    assert plan.capped == [
        {
            "what": "needle_lengths",
            "default": [512, 768],
            "used": lengths,
            "why": f"a trial reaches its length + 31 positions (the answer), and tiny was trained on {positions}",
        }
    ]


def test_a_model_too_short_for_a_needle_trial_skips_retrieval_or_refuses_it_by_name():
    model = tiny_causal_lm("llama", max_position_embeddings=200)
    plan = plan_scan(model, name="tiny")
    assert "retrieval" not in plan.probes and plan.skipped[0]["what"] == "probe retrieval" and "trained on 200" in plan.skipped[0]["why"]
    with pytest.raises(ValueError, match="needle trials need 256 tokens or more, and tiny was trained on 200 positions"):
        plan_scan(model, ["retrieval"], name="tiny")
    assert plan_scan(model, ["retrieval"], [100]).needle_lengths == [100]  # lengths given are the caller's: never capped


def test_repeated_tokens_are_capped_at_the_trained_positions():
    r = scan(tiny_causal_lm("llama", max_position_embeddings=100), char_tokenizer(), probes=["patterns"])
    assert r.meta["inputs"] == [{"kind": "repeated", "sequences": 4, "tokens": 99}]  # BOS, then 49 tokens twice
    assert [(c["what"], c["default"], c["used"]) for c in r.meta["capped"]] == [("repeated tokens", 64, 49)]


def test_capped_length_records_a_cap_only_when_it_caps():
    model = tiny_causal_lm("llama", max_position_embeddings=512)
    assert capped_length(model, 256, "max_len") == (256, [])
    assert capped_length(model, 1024, "max_len", name="tiny") == (
        512,
        [{"what": "max_len", "default": 1024, "used": 512, "why": "tiny was trained on 512 positions"}],
    )


def test_with_a_text_the_head_detectors_read_the_text_and_the_repeated_tokens_labelled_apart():
    model, tok = tiny_causal_lm("llama"), char_tokenizer()
    both = scan(model, tok, [TEXT], probes=["sink", "patterns"])
    on_text = scan(model, tok, [TEXT], probes=["patterns"], repeated=False).findings["patterns"]
    on_repeated = scan(model, tok, probes=["patterns"]).findings["patterns"]
    assert list(both.findings) == ["sink", "patterns", "patterns_text"]
    assert both.findings["patterns_text"]["heatmaps"] == on_text["heatmaps"]
    assert both.findings["patterns"]["heatmaps"] == on_repeated["heatmaps"]
    assert both.findings["patterns"]["titles"]["induction"] == "induction score (on repeated random tokens)"
    assert both.findings["patterns_text"]["titles"]["induction"] == "induction score (on the text)"
    assert all(n.startswith("On the text: ") for n in both.findings["patterns_text"]["notes"])
    assert [i["kind"] for i in both.meta["inputs"]] == ["text", "repeated"]
