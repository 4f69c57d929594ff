"""A tiny LLaVA through attnlab: the LM's attention routed, image-token spans, PAINT (paper 4), paper 49 knockouts, F-LMM capture (64)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlab.core import attach
from attnlab.edits.emphasis import Emphasis
from attnlab.edits.knockout import Knockout
from attnlab.edits.sink_redistribute import SinkRedistribute
from attnlab.mechanisms.shared import CaptureProbs
from attnlab.models import hf, vlm
from attnlab.operators.paint_tokens import outlier_ratio, paint_tokens
from attnlab.probes import VisualSensitivity, WordToPatch
from attnlab.runs.edit import prepare, unedited
from attnlab.runs.knockout import scan
from tests.conftest import tiny_causal_lm

PROMPT = "<image> describe the red cat on the mat"


@pytest.fixture(scope="module")
def llava():
    model, processor = vlm.tiny_llava(seed=0)
    vlm.instrument(model)
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype("uint8")
    enc = processor(images=image, text=PROMPT, return_tensors="pt")
    return model, processor, enc, vlm.spans(model, enc["input_ids"], processor)


def _run(model, enc, edits=(), probes=()):
    prepare(model, list(edits), enc["input_ids"], inputs=enc)
    with torch.no_grad(), attach(edits=list(edits), probes=list(probes)):
        return model(**enc).logits


def test_language_model_routed_through_attnlab_matches_eager(llava):
    model, _, enc, _ = llava
    eager, _ = vlm.tiny_llava(seed=0)
    eager.set_attn_implementation("eager")
    hf._CALLED.clear()
    got = _run(model, enc)
    assert hf._CALLED == {f"layers.{i}.attn" for i in range(4)}  # the vision tower stays on eager attention
    with torch.no_grad():
        torch.testing.assert_close(got, eager(**enc).logits, atol=1e-5, rtol=1e-5)


def test_spans_of_a_processed_input(llava):
    model, processor, enc, s = llava
    assert tuple(s.image) == tuple(range(16))  # 32 / 8 = 4 × 4 patches, CLS dropped
    assert len(s.text) == enc["input_ids"].shape[1] - 16
    the = s["word:the"]
    assert processor.tokenizer.decode(enc["input_ids"][0, list(the)]) == "the" and tuple(s["word:the#1"]) > tuple(the)


def test_hf_instrument_alone_leaves_the_vision_tower_alone():
    model, processor = vlm.tiny_llava(seed=0)
    hf.instrument(model)  # what runs.edit.bind does to a model not yet instrumented
    enc = processor(images=np.zeros((32, 32, 3), dtype="uint8"), text=PROMPT, return_tensors="pt")
    hf._CALLED.clear()
    with torch.no_grad():
        model(**enc)
    assert hf._CALLED == {f"layers.{i}.attn" for i in range(4)}


def test_a_model_with_no_image_token_is_refused():
    with pytest.raises(ValueError, match="no image token id in its config"):
        vlm.instrument(tiny_causal_lm("llama"))


def test_a_language_model_attnlab_cannot_route_is_refused():
    model, _ = vlm.tiny_llava(seed=0)
    model.config.get_text_config().model_type = "falcon"
    with pytest.raises(ValueError, match="language model is a 'falcon', which attnlab does not route"):
        vlm.instrument(model)


def test_paint_alpha_zero_is_bit_identical(llava):
    model, _, enc, s = llava
    base = _run(model, enc)
    assert torch.equal(_run(model, enc, [Emphasis(positions=s.image, alpha=0.0, second=s.image[:3], beta=0.0)]), base)


def test_paint_mass_on_selected_image_tokens_rises_with_alpha_and_rows_sum_to_one(llava):
    model, _, enc, s = llava
    top, second = paint_tokens(vlm.vision_attentions(model, enc["pixel_values"]), s.image)
    masses = []
    for alpha in (0.0, 0.3, 0.7, 1.5, 3.0):
        probe, cap = VisualSensitivity(keys=top, sites="layers.1.attn"), CaptureProbs("layers.3.attn")
        _run(model, enc, [Emphasis(positions=top, alpha=alpha, second=second, beta=0.3, layers=[1, 2, 3]), cap], [probe])
        masses.append(probe.result()["layers.1.attn"]["mass"][0])  # [H] at the first edited layer
        torch.testing.assert_close(cap.probs()[0, :, -1].sum(-1), torch.ones(4), atol=1e-5, rtol=0)
    m = torch.stack(masses)  # [alphas, H]
    assert bool((m[1:] > m[:-1]).all()), m


def test_paint_token_sets_follow_the_authors_rule_on_the_encoder_maps(llava):
    model, _, enc, s = llava
    maps = vlm.vision_attentions(model, enc["pixel_values"])  # 2 layers of [1, 2, 17, 17]
    top, second = paint_tokens(maps, s.image)
    first, feature = maps[0][0, :, 0, 1:].sum(0).numpy(), maps[-2][0, :, 0, 1:].sum(0).numpy()  # [16] each
    q1, q3 = np.percentile(feature, [25, 75])
    n_second = int((feature > q3 + 1.5 * (q3 - q1)).sum())
    assert n_second == round(16 * outlier_ratio(torch.from_numpy(feature)))
    assert set(second) == set(np.argsort(-feature)[:n_second].tolist())
    assert set(top) == set(np.argsort(-first)[:4].tolist()) - set(second)
    assert set(top) <= set(s.image) and top.length == s.image.length


def test_a_span_of_another_input_is_refused_by_the_edits(llava):
    model, _, enc, s = llava
    other = {**enc, "input_ids": enc["input_ids"][:, :-2], "attention_mask": enc["attention_mask"][:, :-2]}
    for edit in (Emphasis(positions=s.image), Knockout(target=s.text, source=s.image)):
        with pytest.raises(ValueError, match="comes from a sequence of 23 tokens, the input has 21"):
            _run(model, other, [edit])


def test_knockout_between_groups_cuts_text_rows_off_the_image(llava):
    model, _, enc, s = llava
    probe = VisualSensitivity(keys=s.image, rows=list(s.text))
    _run(model, enc, [Knockout(target=s.text, source=s.image, layers=[1, 2])], [probe])
    r = probe.result()
    assert float(r["layers.0.attn"]["mass"].min()) > 0
    for layer in (1, 2):
        assert float(r[f"layers.{layer}.attn"]["mass"].abs().max()) == 0.0


def test_knockout_scan_of_text_from_image_runs_on_the_image(llava):
    model, _, enc, s = llava
    with torch.no_grad():
        base = float(torch.softmax(model(**enc).logits[0, -1].double(), -1)[5])
    rows = scan(model, enc["input_ids"], 5, target=s.text, source=s.image, window=1, inputs=enc)
    assert [r["layers"] for r in rows] == [[0], [1], [2], [3]]
    assert all(r["base"] == pytest.approx(base, rel=1e-6) for r in rows)
    assert all(r["change"] != 0 for r in rows)  # every layer's text rows read the image in a random model
    with pytest.raises(ValueError, match=r"knockout scan target: .* 23 tokens, the input has 21"):
        scan(model, enc["input_ids"][:, :21], 5, target=s.text, source=s.image, window=1)


@pytest.mark.parametrize("name", ["word:cat", "token 18..21"])
def test_word_to_patch_maps_equal_the_eager_attention_rows(llava, name):
    model, _, enc, s = llava
    word = s[name]
    probe = WordToPatch(word=word, image=s.image)
    _run(model, enc, probes=[probe])
    maps = probe.maps(hf.sites(model), (4, 4))  # [1, L·H, 4, 4]
    eager, _ = vlm.tiny_llava(seed=0)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        att = eager(**enc, output_attentions=True).attentions  # L × [1, H, T, T]
    ref = torch.cat([a[:, :, list(word)][..., list(s.image)].mean(2) for a in att], 1).view(1, 16, 4, 4)
    torch.testing.assert_close(maps, ref, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="grid 3×5 holds 15 patches"):
        probe.maps(hf.sites(model), (3, 5))


def test_var_scales_image_sinks_by_exactly_p_in_the_rows_it_edits(llava):
    model, _, enc, s = llava
    sinks = [s.image[2], s.image[9]]
    base, cap = CaptureProbs("layers.0.attn"), CaptureProbs("layers.0.attn")
    _run(model, enc, [base])
    _run(model, enc, [SinkRedistribute("var", p=0.6, region=s.image, sinks=sinks, layers=[0]), cap])
    p0, p1 = base.probs()[0], cap.probs()[0]  # [H, T, T]
    region, sink = list(s.image), torch.zeros(p0.shape[-1], dtype=torch.bool)
    sink[sinks] = True
    m_r = p0[..., region].sum(-1)  # [H, T]
    edited = (p0[..., sink].sum(-1) / m_r <= 0.5) & (m_r >= 0.2)  # VAR's rows: sink share <= rho, region mass >= 0.2
    assert bool(edited.any()) and not bool(edited.all())
    torch.testing.assert_close(p1[..., sink][edited], 0.6 * p0[..., sink][edited], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p1[~edited], p0[~edited], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p1.sum(-1), torch.ones_like(m_r), atol=1e-5, rtol=0)


def test_unedited_passes_see_the_image_when_given_the_inputs(llava):
    model, _, enc, s = llava
    attached, with_image, text_only = (VisualSensitivity(keys=s.image, rows=list(s.text)) for _ in range(3))
    _run(model, enc, probes=[attached])
    unedited(model, enc["input_ids"], with_image, inputs=enc)
    unedited(model, enc["input_ids"], text_only)  # the image tokens' embeddings stand in for the image
    got, want = with_image.result()["layers.2.attn"]["mass"], attached.result()["layers.2.attn"]["mass"]
    torch.testing.assert_close(got, want)
    assert not torch.allclose(text_only.result()["layers.2.attn"]["mass"], want)


@pytest.mark.slow
def test_the_docs_page_runs_as_written_and_prints_what_it_shows(capsys):
    page = (Path(__file__).resolve().parents[2] / "docs" / "vision-language.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", page, re.S))
    shown = "".join(re.findall(r"```text\n(.*?)```", page, re.S))
    exec(compile(code, "docs/vision-language.md", "exec"), {})
    assert capsys.readouterr().out == shown
