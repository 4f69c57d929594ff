"""What a model declares about its sequences, read once at load and shown in every run's header.

A run is only right on a model if it follows the model's conventions: whether its tokenizer
starts a sequence with BOS, whether it has a chat template (an instruct model), how many
positions it was trained on, whether some layers attend through a sliding window, whether its
attention logits are soft-capped. :func:`conventions` reads them from the model's config and
tokenizer; runs record :meth:`Conventions.as_dict` in their results and the CLI prints
:meth:`Conventions.line` once.

    >>> conventions(model, tok).line()                                   # doctest: +SKIP
    'decoder · sequences start with nothing · chat template · 8192 positions'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from attnlab.data import tokens

__all__ = ["Conventions", "conventions", "model_kind"]


def model_kind(model) -> str:
    """``"decoder"`` for a causal LM (an LM head, and it can generate), else ``"encoder"``."""
    head = getattr(model, "get_output_embeddings", None)
    can_generate = getattr(model, "can_generate", None)
    if not callable(head) or head() is None or (callable(can_generate) and not can_generate()):
        return "encoder"
    return "decoder"


@dataclass(frozen=True)
class Conventions:
    """A model's declared conventions (see the module docstring)."""

    kind: str  # "decoder" or "encoder"
    start: list[str]  # the tokens a sequence starts with, as text ([] for none)
    end: list[str]  # the tokens a sequence ends with
    bos: str | None  # the tokenizer's BOS token (whether or not it adds it)
    eos: str | None
    chat_template: bool
    positions: int | None  # config.max_position_embeddings
    sliding_window: int | None  # the window of the layers that use one
    sliding_layers: int  # how many layers use it
    layers: int
    softcap: float | None  # attention-logit softcapping

    def line(self) -> str:
        """One line for a run's header."""
        start = " ".join(self.start) if self.start else "nothing"
        parts = [self.kind, f"sequences start with {start}" + (f", end with {' '.join(self.end)}" if self.end else "")]
        parts.append("chat template" if self.chat_template else "no chat template")
        parts.append(f"{self.positions} positions" if self.positions else "positions not declared")
        if self.sliding_window:
            parts.append(f"sliding window {self.sliding_window} on {self.sliding_layers} of {self.layers} layers")
        if self.softcap:
            parts.append(f"attention softcap {self.softcap:g}")
        return " · ".join(parts)

    def as_dict(self) -> dict:
        return asdict(self)


def _sliding(config, layers: int) -> tuple[int | None, int]:
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        return None, 0
    if getattr(config, "use_sliding_window", True) is False:  # Qwen2 declares a window it does not use
        return None, 0
    types = getattr(config, "layer_types", None)
    if isinstance(types, (list, tuple)):
        n = sum(t == "sliding_attention" for t in types)
        return (window, n) if n else (None, 0)
    return window, layers


def conventions(model, tokenizer) -> Conventions:
    """Read ``model``'s and ``tokenizer``'s conventions."""
    config = model.config
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    window, sliding = _sliding(config, layers)
    positions = getattr(config, "max_position_embeddings", None)
    softcap = getattr(config, "attn_logit_softcapping", None)
    return Conventions(
        kind=model_kind(model),
        start=tokenizer.convert_ids_to_tokens(tokens.start_tokens(tokenizer)),
        end=tokenizer.convert_ids_to_tokens(tokens.end_tokens(tokenizer)),
        bos=tokenizer.bos_token,
        eos=tokenizer.eos_token,
        chat_template=bool(getattr(tokenizer, "chat_template", None)),
        positions=positions if isinstance(positions, int) and positions > 0 else None,
        sliding_window=window,
        sliding_layers=sliding,
        layers=layers,
        softcap=float(softcap) if isinstance(softcap, (int, float)) and softcap else None,
    )
