"""Nothing silently wrong in runs, edits, training and probes (issue 16): every case a clear error, a warning, or a finite result."""

import json
import math
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnlab import edits
from attnlab.core.site import Site
from attnlab.edits.emphasis import Emphasis
from attnlab.edits.head_scale import HeadScale
from attnlab.edits.sink_redistribute import SinkRedistribute
from attnlab.edits.temperature import Temperature
from attnlab.models import hf
from attnlab.probes import LayerImportance
from attnlab.probes.sink import Sink
from attnlab.results import ScanResult
from attnlab.runs._checks import NonFiniteError
from attnlab.runs.edit import run_edit
from attnlab.runs.evaluate import compare
from attnlab.runs.scan import ShortInputWarning, _attention_maps, scan
from attnlab.train import train
from tests.conftest import tiny_causal_lm
from tests.train.toy import Lag

SITES = [Site(f"layers.{i}.attn", layer=i, num_heads=4, num_kv_heads=2) for i in range(2)]
FEW = {"logit_diff": {"n": 2}}  # two IOI prompts: seconds on a tiny model


@pytest.fixture(scope="module")
def tok(smollm2):
    return smollm2[1]


@pytest.fixture(scope="module")
def tiny(tok):
    """A tiny llama with SmolLM2's vocabulary (so its tokenizer fits) trained on 128 positions."""
    return hf.instrument(tiny_causal_lm("llama", vocab_size=len(tok), max_position_embeddings=128))


# --- 1. an edit that selects nothing is an error ----------------------------------------------------


def test_a_reversed_range_in_a_spec_is_refused():
    with pytest.raises(ValueError, match=r"'5-1' is not a range: write a-b with a <= b"):
        edits.parse("head_mask:layers=5-1,heads=0")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "temperature:tau=2,sites=layers.99.attn",
            r"sites='layers.99.attn' matches none of the model's 2 sites \(layers.0.attn, layers.1.attn\)",
        ),
        ("head_mask:layers=1,heads=0,sites=layers.0.attn", r"layers=\[1\] and sites='layers.0.attn' select no site in common"),
        ("knockout:target=3,source=0,sites=encoder.*", "matches none of the model's 2 sites"),
        ("sink_redistribute:sinks=0,sites=nothing", "matches none of the model's 2 sites"),
        ("drop_attention:layers=0,sites=layers.1.attn", "select no site in common"),
        ("head_mask:layers=5,heads=0", "layer 5 is out of range"),
    ],
)
def test_an_edit_that_would_act_nowhere_is_refused_by_validate(spec, message):
    with pytest.raises(ValueError, match=message):
        edits.parse(spec).validate(SITES)


def test_explicitly_empty_edits_stay_deliberate_no_ops():
    for e in (edits.get("head_mask", heads=[]), edits.get("drop_attention", top=0), edits.get("knockout", target=[], source=[1])):
        e.validate(SITES)  # no error: the user asked for nothing


def test_integer_options_refuse_floats_and_infinities_by_name():
    with pytest.raises(TypeError, match=r"drop_attention: seed must be integers"):
        edits.get("drop_attention", random=1, seed=float("inf"))
    with pytest.raises(TypeError, match=r"sink_redistribute: sinks must be integers"):
        edits.get("sink_redistribute", sinks=[1.5])
    with pytest.raises(TypeError, match=r"knockout: layers must be integers"):
        edits.get("knockout", target=3, source=0, layers=[0.5])


# --- 2. non-finite numbers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: HeadScale(heads=[0], factor=float("inf")), "head_scale: factor must be a finite number, got factor=inf"),
        (lambda: HeadScale(heads=[0], factor=float("nan")), "head_scale: factor must be a finite number"),
        (lambda: Temperature(tau=float("inf")), "tau must be a positive finite number"),
        (lambda: Temperature(tau=0.0), "tau must be a positive finite number"),
        (lambda: Emphasis(positions=[1], alpha=float("inf")), "alpha must be a number >= 0, finite"),
        (lambda: SinkRedistribute(beta=float("nan")), r"beta= must be in \[0, 1\]|beta must be a finite number"),
        (lambda: SinkRedistribute(tau=float("inf")), "tau must be a finite number >= 0"),
        (lambda: edits.parse("head_scale:heads=L0H1,factor=inf"), "factor must be a finite number"),
    ],
)
def test_non_finite_options_are_refused_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_temperature_so_small_that_logits_overflow_stops_the_run_naming_edit_and_metric(tiny, tok):
    assert Temperature(tau=1e-40).tau == 1e-40  # positive and finite: only the run can tell
    with pytest.raises(NonFiniteError, match=r"logit difference after temperature:tau=1e-40 is nan on 20 of 20 prompts: the edit breaks"):
        run_edit(tiny, tok, [edits.parse("temperature:tau=1e-40")], ["logit_diff"], specs_text=["temperature:tau=1e-40"])


def test_compare_names_the_edit_by_its_repr_without_specs_and_counts_the_examples(tiny, tok):
    with pytest.raises(
        NonFiniteError, match=r"logit difference after Temperature\(heads=None, layers=None, tau=1e-40.* is nan on 2 of 2 prompts"
    ):
        compare(tiny, tok, [Temperature(tau=1e-40)], ["logit_diff"], options=FEW)


_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-45, 1e-40, 1e38, 1e300, -1.0, 0.5, 2.0]),
    st.integers(-3, 3),
    st.text(max_size=3),
    st.none(),
    st.booleans(),
)
_EDITS = [
    ("head_scale", lambda v: HeadScale(heads="L0H1+L1H3", factor=v)),
    ("temperature", lambda v: Temperature(tau=v)),
    ("position_alpha", lambda v: Temperature(position_alpha=v)),
    ("emphasis", lambda v: Emphasis(positions=[0, 1], alpha=v, rows="all")),
    ("sink_redistribute", lambda v: SinkRedistribute(beta=v, sinks=[0])),
]


@given(which=st.sampled_from(_EDITS), value=_values)
def test_random_option_values_give_a_clear_error_or_a_finite_result(tiny, tok, which, value):
    name, make = which
    try:
        edit = make(value)
    except (ValueError, TypeError) as e:
        assert name.split("_")[0] in str(e) or "tau" in str(e), e  # the message names the edit or option
        return
    try:
        (r,) = compare(tiny, tok, [edit], ["logit_diff"], options=FEW)
    except NonFiniteError as e:
        assert "logit difference after" in str(e) and "of 2 prompts" in str(e)
        return
    assert all(math.isfinite(x) for x in r.before + r.after)


# --- 2b. training ------------------------------------------------------------------------------------


def _toy_model():
    from attnlab.models.tiny import TinyTransformer

    torch.manual_seed(0)
    return TinyTransformer(8, dim=32, heads=2, layers=1, max_len=16, mechanism="mha")


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), -1.0, 0.0, True, "1e-3"])
def test_a_learning_rate_that_is_not_positive_and_finite_is_refused_up_front(lr):
    with pytest.raises(ValueError, match="lr must be a positive finite learning rate"):
        train(Lag(), _toy_model(), steps=2, lr=lr, progress=False, threads=1)


def test_a_diverging_loss_stops_training_naming_the_step_and_learning_rate(tmp_path):
    ckpt = tmp_path / "run.pt"
    kw = {"grad_clip": None, "warmup": 0, "eval_every": 1, "progress": False, "threads": 1}
    with pytest.raises(ValueError, match=r"loss is (nan|inf) at step \d+ of 6 \(learning rate .* of peak lr=1e\+30\): training diverged"):
        train(Lag(), _toy_model(), steps=6, lr=1e30, checkpoint=str(ckpt), **kw)
    if ckpt.exists():  # the checkpoint holds the last finite state
        state = torch.load(ckpt, weights_only=False)
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    with pytest.raises(ValueError, match=r"the update is too large for float at step 1 of 6 \(learning rate 1e\+38"):
        train(Lag(), _toy_model(), steps=6, lr=1e38, **kw)


# --- 3. run_edit: trained positions and encoders ------------------------------------------------


def test_run_edit_refuses_evaluations_beyond_the_trained_positions_before_any_work(tiny, tok):
    e = edits.parse("head_mask:heads=L0H1")
    with pytest.raises(
        ValueError, match=r"the needle evaluation \(inputs of up to 799 tokens\) exceeds the 128 positions .*--allow-extrapolation"
    ):
        run_edit(tiny, tok, [e], ["needle"])
    with pytest.raises(ValueError, match=r"the ppl evaluation \(inputs of up to 256 tokens\) exceeds the 128 positions"):
        run_edit(tiny, tok, [e], ["ppl"])
    r = run_edit(tiny, tok, [e], ["logit_diff"])  # short prompts are fine
    assert r.meta["settings"]["allow_extrapolation"] is False


def test_calibration_beyond_the_trained_positions_is_refused_too(tiny, tok):
    with pytest.raises(ValueError, match=r"the calibration of .* \(inputs of 256 tokens\) exceeds the 128 positions"):
        run_edit(tiny, tok, [edits.parse("drop_attention:top=1")], ["logit_diff"])


def test_run_edit_refuses_a_decoder_evaluation_on_an_encoder_with_a_message(tok):
    bert = tiny_causal_lm("bert")
    with pytest.raises(
        ValueError,
        match=r"the ppl evaluation scores next-token logits, which needs a decoder, and minilm-l6 is an encoder: choose from match",
    ):
        run_edit(bert, tok, [edits.parse("head_mask:heads=L0H1")], ["ppl"], model_name="minilm-l6")


def test_act_without_heads_on_an_encoder_says_what_would_work(tok):
    bert = tiny_causal_lm("bert")
    with pytest.raises(ValueError, match=r"ACT's default score is perplexity, which needs a decoder.*give the heads"):
        run_edit(bert, tok, [edits.parse("sink_redistribute:method=act")], ["match"], model_name="tiny-bert")


# --- 4. scan arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"texts": ["hello there"], "max_len": 0}, ValueError, "max_len must be a positive number of tokens.*got max_len=0"),
        ({"texts": ["hello"], "needle_depths": [1.5]}, ValueError, r"needle depths are fractions of the context in \[0, 1\].*\[1.5\]"),
        ({"texts": ["hello"], "needle_lengths": [0]}, ValueError, "needle lengths must be positive"),
        ({"texts": "a string"}, TypeError, "texts is a list of strings"),
        ({"texts": ["ok", 3]}, TypeError, "text 2 is a int"),
        (
            {"texts": ["hello"], "probes": ["retrieval"], "needle_lengths": ()},
            ValueError,
            "the retrieval probe runs needle trials, but the grid is empty",
        ),
        ({"repeated": False, "probes": ["sink", "entropy"]}, ValueError, "nothing to scan"),
        ({"repeated": False, "probes": ["sink", "retrieval"]}, ValueError, "the probes sink read text or repeated-token inputs"),
        ({"texts": ["hello"], "probes": ["sinks"]}, ValueError, "unknown probe 'sinks'"),
        (
            {"texts": ["hello"], "probes": ["retrieval"], "needle_lengths": [512]},
            ValueError,
            r"a needle trial \(prompt and answer: up to 543 tokens\) exceeds the 128 positions",
        ),
    ],
)
def test_scan_refuses_bad_arguments_before_any_work(tiny, tok, kw, error, message):
    with pytest.raises(error, match=message):
        scan(tiny, tok, **kw)


def test_a_needle_only_scan_works_and_its_report_renders(tiny, tok, tmp_path):
    r = scan(tiny, tok, probes=["retrieval"], repeated=False, needle_lengths=[120], needle_depths=[0.5], allow_extrapolation=True)
    assert list(r.findings) == ["retrieval"] and [i["kind"] for i in r.meta["inputs"]] == ["needle"]
    path = r.save(tmp_path / "results.json")
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))
    assert r.report(tmp_path / "report.html").read_text().startswith("<!doctype html>")


def test_attention_maps_skip_a_sink_heatmap_with_no_values():
    """The old 'max() arg is an empty sequence': a sink probe that saw no input has empty rows."""
    assert _attention_maps(None, None, [], {"sink": {"heatmaps": {"first_token_mass": [[], []]}}}, SITES) == []


# --- 5. short inputs warn ---------------------------------------------------------------------------


def test_a_scan_of_inputs_too_short_for_a_probe_warns(tiny, tok):
    with pytest.warns(ShortInputWarning, match=r"text 1 \(\d tokens\) is shorter than the 14 tokens the sink probe needs: the first query"):
        scan(tiny, tok, ["hi"], probes=["sink", "layer_importance"], repeated=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShortInputWarning)
        scan(tiny, tok, ["word " * 20], probes=["sink", "entropy", "extreme", "patterns"], repeated=False)  # long enough: silent


# --- 6. findings: NaN only where a value was not measured, written as null with a flag ----------------


def test_a_layer_a_probe_never_saw_is_nan_in_findings_and_null_on_disk(tmp_path):
    li = LayerImportance()
    li.observe_sublayer(0, torch.randn(1, 4, 8), torch.randn(1, 4, 8))
    bars = li.findings(SITES).bars["importance_attention"]
    assert math.isfinite(bars[0]) and math.isnan(bars[1])
    sink = Sink()
    sink._acc["layers.0.attn"] = {"first_mass": torch.ones(4), "alpha0": torch.ones(4), "n": 1}
    rate = sink.findings(SITES).bars["sink_rate"]
    assert rate[0] == 1.0 and math.isnan(rate[1])  # not a made-up 0.0
    meta = {"format": "attnlab.result", "kind": "scan", "schema": 2, "model": {}, "settings": {}}
    r = ScanResult(meta, [], {"layer_importance": {"bars": {"importance_attention": bars}}}, [])
    text = r.save(tmp_path / "r.json").read_text()
    data = json.loads(text)
    assert data["findings"]["layer_importance"]["bars"]["importance_attention"][1] is None
    assert "findings.layer_importance.bars.importance_attention[1]" in data["meta"]["non_finite"]
