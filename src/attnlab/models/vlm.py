"""Vision-language models (LLaVA-style) in attnlab: the language model's attention, image-token spans.

A LLaVA-style model (transformers' ``LlavaForConditionalGeneration``) encodes the image with a
vision tower, projects the patch features into the language model's embedding space and puts them
in the sequence where the processor expanded the image token. :func:`instrument` routes the
*language model's* attention through :func:`attnlab.attend` (sites ``layers.{i}.attn``, as for a
text-only model) and leaves the vision tower on transformers' eager attention, so an edit given
sequence positions acts only where those positions mean the LM's tokens, and the vision tower's
attention maps stay available (``output_attentions=True``: PAINT's token selection reads them).

:func:`spans` gives the :class:`~attnlab.core.spans.Spans` of an input: ``image``, ``text``,
``token i..j``, ``word:w``.

    >>> model, processor = tiny_llava()                                        # doctest: +SKIP
    >>> enc = processor(images=image, text="<image> the red cat", return_tensors="pt")  # doctest: +SKIP
    >>> s = spans(model, enc["input_ids"], processor)                          # doctest: +SKIP
    >>> s.image, s["word:cat"]                                                 # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnlab.core.spans import Spans
from attnlab.models import hf

__all__ = ["image_token_id", "instrument", "spans", "tiny_llava", "vision_attentions"]

_WORDS = "a an the of on in is what this that photo image picture describe cat dog mat red blue green sky tree sun left right"  # tiny_llava's words


def image_token_id(model: nn.Module) -> int:
    """The image token id of ``model``'s config (``image_token_id``, or LLaVA's older ``image_token_index``)."""
    cfg = getattr(model, "config", None)
    tid = getattr(cfg, "image_token_id", None)
    tid = getattr(cfg, "image_token_index", None) if tid is None else tid
    if tid is None:
        raise ValueError(
            f"{type(model).__name__} has no image token id in its config (image_token_id): it is not a LLaVA-style "
            "vision-language model; for a text-only model use attnlab.models.hf.instrument"
        )
    return int(tid)


def instrument(model: nn.Module, *, backend: str = "auto") -> nn.Module:
    """Route a LLaVA-style model's language-model attention through :func:`attnlab.attend` (in place).

    The language model's layers (``model.language_model.layers``) become sites ``layers.{i}.attn``;
    the vision tower is set to eager attention (its maps come back with ``output_attentions=True``).
    Raises ``ValueError`` for a model with no image token id, no vision tower, or a language model
    of a type attnlab does not route (:data:`attnlab.models.hf.SUPPORTED`).
    """
    image_token_id(model)
    _vision_tower(model)
    lm_type = model.config.get_text_config().model_type
    if lm_type not in hf.SUPPORTED:
        raise ValueError(
            f"{type(model).__name__}'s language model is a {lm_type!r}, which attnlab does not route; supported: {', '.join(hf.SUPPORTED)}"
        )
    return hf.instrument(model, backend=backend)  # it leaves the vision tower on eager attention


def _vision_tower(model: nn.Module) -> nn.Module:
    base = getattr(model, "model", model)
    tower = getattr(base, "vision_tower", None)
    if not isinstance(tower, nn.Module):
        raise ValueError(f"{type(model).__name__} has no vision tower (model.vision_tower): attnlab.models.vlm handles LLaVA-style models")
    return tower


def spans(model: nn.Module, input_ids: Tensor, processor=None) -> Spans:
    """The spans of one input of ``model``: image tokens from its config's image token id, words from ``processor``'s tokenizer."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return Spans(input_ids, image_token_id(model), tokenizer)


def vision_attentions(model: nn.Module, pixel_values: Tensor) -> tuple[Tensor, ...]:
    """The vision tower's attention maps, one ``[B, H, 1 + P, 1 + P]`` per layer (CLS first, then ``P`` patches)."""
    tower = _vision_tower(model)
    with torch.no_grad():
        out = tower(pixel_values.to(next(tower.parameters()).dtype), output_attentions=True)
    if not out.attentions or out.attentions[0] is None:
        raise ValueError("the vision tower returned no attention maps: it must run eager attention (attnlab.models.vlm.instrument sets it)")
    return out.attentions


def tiny_llava(*, seed: int = 0, image_size: int = 32, patch_size: int = 8, layers: int = 4, heads: int = 4):
    """A tiny LLaVA with random weights and its processor, built offline (nothing is downloaded).

    A CLIP vision tower (2 layers, ``(image_size / patch_size)²`` patches: 16 by default), a
    Llama language model (``layers`` layers, ``heads`` heads, 2 key/value heads, width 32) and a
    word-level tokenizer over a small vocabulary (``<image>`` is its image token). For tests and
    examples: the code paths are those of a real LLaVA checkpoint.

    Returns:
        ``(model, processor)``: an eval-mode ``LlavaForConditionalGeneration``, not instrumented,
        and a ``LlavaProcessor`` that expands ``<image>`` into one token per patch.
    """
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", "<image>", *_WORDS.split()])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    vision = tf.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=patch_size
    )
    text = tf.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        vocab_size=len(vocab),
        initializer_range=0.2,  # wider than the default 0.02: attention far from uniform, as in a trained model
    )
    config = tf.LlavaConfig(vision_config=vision, text_config=text, image_token_id=vocab["<image>"])
    with torch.random.fork_rng():  # the caller's random state is left as it was
        torch.manual_seed(seed)
        model = tf.LlavaForConditionalGeneration(config).eval()
    pil = getattr(tf, "CLIPImageProcessorPil", tf.CLIPImageProcessor)  # transformers >= 5.x names the torchvision-free one apart
    images = pil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    processor = tf.LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return model, processor
