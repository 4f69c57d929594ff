import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

settings.register_profile(
    "default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], derandomize=True
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M, loaded once per test session (converted and cached on first use)."""
    from attnlab.models.hf import load

    return load("smollm2-135m")


@pytest.fixture(scope="session")
def minilm():
    """The embedded all-MiniLM-L6-v2 encoder, loaded once per test session."""
    from attnlab.models.hf import load

    return load("minilm-l6")


@pytest.fixture
def one_thread():
    """One torch thread: tiny models and training loops run fastest, and steadiest on a shared machine, on one thread
    (on 32-wide layers synchronising threads costs more than it gains: 10× on 2 busy cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_causal_lm(family: str = "llama", **overrides):
    """A tiny randomly initialised Hugging Face model of a family, eager attention, eval mode."""
    import transformers

    common = {"vocab_size": 101, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    configs = {
        "llama": lambda: transformers.LlamaConfig(**common, num_key_value_heads=2),
        "qwen2": lambda: transformers.Qwen2Config(**common, num_key_value_heads=2),
        "mistral": lambda: transformers.MistralConfig(**common, num_key_value_heads=2, sliding_window=5),
        "gemma": lambda: transformers.GemmaConfig(**common, num_key_value_heads=1, head_dim=8),
        "gemma2": lambda: transformers.Gemma2Config(
            **common, num_key_value_heads=2, head_dim=8, sliding_window=5, attn_logit_softcapping=5.0
        ),
        "gemma3": lambda: transformers.Gemma3TextConfig(
            **{**common, "num_hidden_layers": 3}, num_key_value_heads=2, head_dim=8, sliding_window=5
        ),
        "gpt2": lambda: transformers.GPT2Config(vocab_size=101, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0),
        "bert": lambda: transformers.BertConfig(**common),
    }
    cfg = configs[family]()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    cls = transformers.AutoModel if family == "bert" else transformers.AutoModelForCausalLM
    return cls.from_config(cfg, attn_implementation="eager").eval()


CHARS = "abcdefghijklmnopqrstuvwxyz .,;:'!?"


def char_tokenizer(start: str = "bos"):
    """A character tokenizer (upper case and newlines are ``<unk>``) that starts sequences as ``start`` says.

    ``"bos"``: ``<s> text`` (as Llama-2, Gemma); ``"none"``: ``text`` (as GPT-2, SmolLM2);
    ``"bert"``: ``[CLS] text [SEP]``.
    """
    import transformers
    from tokenizers import Tokenizer, models, processors

    specials = {"none": ["<unk>", "<s>"], "bos": ["<unk>", "<s>"], "bert": ["<unk>", "[CLS]", "[SEP]"]}[start]
    vocab = {t: i for i, t in enumerate(specials)} | {c: i + len(specials) for i, c in enumerate(CHARS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    if start == "bos":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    if start == "bert":
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
        return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", cls_token="[CLS]", sep_token="[SEP]")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")
