"""A small transformer built from any registered sequence mechanism, for training on synthetic tasks.

``TinyTransformer`` is a pre-norm decoder (``causal=True``) or encoder (``causal=False``) whose
attention layer in every block is a mechanism from :mod:`attnlab.mechanisms`, chosen by name.
Every block's attention site is renamed ``layers.{i}.attn`` (secondary sites of a mechanism,
such as DCAL's GLCA or FIT's inner layers, ``layers.{i}.attn.<suffix>``), so probes and edits
select sites of a trained tiny model exactly as they do in a Hugging Face model:

    >>> import attnlab
    >>> from attnlab.probes import Entropy
    >>> model = TinyTransformer(11, dim=16, heads=2, layers=2)
    >>> ent = Entropy()
    >>> with attnlab.attach(probes=[ent]):
    ...     logits = model(torch.randint(0, 11, (2, 8)))
    >>> logits.shape, sorted(ent.result())
    (torch.Size([2, 8, 11]), ['layers.0.attn', 'layers.1.attn'])

A mechanism fits when its input layout is ``[B, T, C]`` and its forward needs nothing but ``x``
(:func:`sequence_mechanisms` lists them). A causal decoder passes ``is_causal=True`` to a
mechanism that has the option; mechanisms that are causal by
construction (:data:`CAUSAL_BY_CONSTRUCTION`) need none; bidirectional-only mechanisms are
refused in a decoder, because they would let a position read the tokens it must predict.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
from torch import Tensor, nn

from attnlab import mechanisms
from attnlab.core import hooks
from attnlab.core.site import Site

__all__ = ["CAUSAL_BY_CONSTRUCTION", "TinyTransformer", "check_mechanism", "sequence_mechanisms"]

# mechanisms with no causal option whose docstrings (and tests/models/test_tiny.py) show that
# they are always causal; every other mechanism without the option is bidirectional-only
CAUSAL_BY_CONSTRUCTION = frozenset(
    {"linear", "normalized", "rcmha", "modality_mutual", "linear_rnn", "selective_ssm", "base_conv", "hyena", "based"}
)
_CAUSAL_OPTIONS = ("is_causal",)  # the one name attend and every mechanism use
POSITIONS = ("learned", "none", "rope")


def _params(entry: mechanisms.Entry) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(entry.cls).parameters)


def _fits(entry: mechanisms.Entry) -> bool:
    """A ``[B, T, C] -> [B, T, C]`` mechanism whose forward needs only ``x``."""
    if entry.layout != "[B, T, C]":
        return False
    fwd = list(inspect.signature(entry.cls.forward).parameters.values())[2:]  # after self, x
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in fwd)


def sequence_mechanisms(*, causal: bool | None = None) -> list[str]:
    """Names of the mechanisms a :class:`TinyTransformer` can use (with ``causal``: in that kind of model).

    Example:
        >>> "mha" in sequence_mechanisms(causal=True), "reversed" in sequence_mechanisms(causal=True)
        (True, False)
    """
    out = []
    for e in mechanisms.available():
        if not _fits(e):
            continue
        if causal and not (set(_CAUSAL_OPTIONS) & set(_params(e)) or e.name in CAUSAL_BY_CONSTRUCTION):
            continue
        out.append(e.name)
    return out


def check_mechanism(name: str, *, causal: bool = True, positions: str = "learned", options: dict | None = None) -> dict:
    """The options to build mechanism ``name`` with in a tiny model; raises ``ValueError`` if it cannot be used.

    Adds ``is_causal`` and ``rope`` as the model needs them (``causal`` is the model's own
    option: a decoder or an encoder). Unknown names list the
    valid ones (from :func:`attnlab.mechanisms.get`).
    """
    options = dict(options or {})
    entry = {e.name: e for e in mechanisms.available()}.get(name)
    if entry is None:
        mechanisms.get(name, dim=8, heads=1)  # raises ValueError with the closest valid names
    kind = "causal decoder" if causal else "encoder"
    if not _fits(entry):
        raise ValueError(
            f"mechanism {name!r} ({entry.layout}) does not map x [B, T, C] to [B, T, C] on its own, so it cannot be a "
            f"tiny model's attention layer: choose from {', '.join(sequence_mechanisms(causal=causal))}"
        )
    params = _params(entry)
    flag = next((p for p in _CAUSAL_OPTIONS if p in params), None)
    if flag:
        if flag in options and bool(options[flag]) != causal:
            raise ValueError(f"mechanism option {flag}={options[flag]!r} contradicts the model's causal={causal}: drop the option")
        options[flag] = causal
    elif causal and name not in CAUSAL_BY_CONSTRUCTION:
        raise ValueError(
            f"mechanism {name!r} is bidirectional only (it has no causal option), so a causal decoder cannot use it: "
            f"build an encoder (causal=False), or choose from {', '.join(sequence_mechanisms(causal=True))}"
        )
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got positions={positions!r}")
    if positions == "rope":
        if "rope" not in params:
            with_rope = [n for n in sequence_mechanisms(causal=causal) if "rope" in _params(_entry(n))]
            raise ValueError(f"positions='rope' needs a mechanism with a rope option in a {kind}: choose from {', '.join(with_rope)}")
        options["rope"] = True
    return options


def _entry(name: str) -> mechanisms.Entry:
    return {e.name: e for e in mechanisms.available()}[name]


def _rename_sites(attn: nn.Module, layer: int) -> None:
    """Give the mechanism's sites the addresses ``layers.{layer}.attn`` and ``layers.{layer}.attn.<suffix>``."""
    base = f"layers.{layer}.attn"
    taken = set()
    for path, module in attn.named_modules():
        for attr, site in list(vars(module).items()):
            if not isinstance(site, Site):
                continue
            if path == "" and attr == "site":
                name = base
            else:  # "dcal.glca" -> "glca", "fit.local.0" -> "local.0"
                suffix = site.name.split(".", 1)[1] if "." in site.name else ".".join(p for p in (path, attr) if p)
                name = f"{base}.{suffix}"
                if name in taken:
                    name = f"{base}.{'.'.join(p for p in (path, attr) if p)}"
            taken.add(name)
            module_path = ".".join(p for p in (base, path) if p)
            setattr(module, attr, dataclasses.replace(site, name=name, layer=layer, module_path=module_path))


class Block(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))`` unless attention-only.

    Its activations pass the hook points ``layers.{layer}.resid_pre``, ``attn.out``,
    ``resid_mid``, ``mlp.out`` and ``resid_post`` (:mod:`attnlab.core.hooks`).
    """

    def __init__(self, dim: int, attn: nn.Module, mlp: bool, layer: int = 0):
        super().__init__()
        self.layer = layer
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim) if mlp else None
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)) if mlp else None

    def forward(self, x: Tensor) -> Tensor:
        i = self.layer
        x = hooks.block_in(i, x)  # [B, T, C]
        x_in = x if hooks.keeps_input() else None
        h = x + hooks.sublayer(i, x_in, self.attn(self.norm1(x)))  # [B, T, C]
        if hooks.active():
            h = hooks.emit(f"layers.{i}.resid_mid", h)
        if self.mlp is not None:
            m = self.mlp(self.norm2(h))  # [B, T, C]
            h = h + (hooks.emit(f"layers.{i}.mlp.out", m) if hooks.active() else m)
        return hooks.block_out(i, x_in, h)


class TinyTransformer(nn.Module):
    """A small pre-norm transformer whose attention is any registered sequence mechanism.

    Paper: none (the test bed of issue 6); the mechanisms cite theirs.

    Args:
        vocab_size: token vocabulary, and the width of the output (with ``input_dim``, the number
            of continuous outputs).
        dim: model width ``C``.
        heads: attention heads per layer.
        layers: number of blocks.
        mechanism: a name from :func:`sequence_mechanisms` (``attnlab list mechanisms``).
        mechanism_options: extra options for the mechanism (``{"kv_heads": 2}``).
        mlp: a feed-forward layer in every block; False gives an attention-only model.
        positions: ``"learned"`` absolute embeddings, ``"none"`` (NoPE: a causal model infers
            position from the mask), or ``"rope"`` (passed to mechanisms with a ``rope`` option).
        max_len: longest input, for learned positions (and length checks).
        causal: a decoder (each position sees itself and the past) or an encoder.
        input_dim: read float inputs ``[B, T, input_dim]`` through a linear layer instead of
            token ids.

    Shapes:
        ``tokens [B, T]`` (int) or ``x [B, T, input_dim]`` (float) ``-> [B, T, vocab_size]``.

    Example:
        >>> m = TinyTransformer(10, dim=32, heads=4, layers=2, mechanism="linear", mlp=False)
        >>> m(torch.randint(0, 10, (3, 12))).shape
        torch.Size([3, 12, 10])
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        dim: int = 64,
        heads: int = 4,
        layers: int = 2,
        mechanism: str = "mha",
        mechanism_options: dict | None = None,
        mlp: bool = True,
        positions: str = "learned",
        max_len: int = 512,
        causal: bool = True,
        input_dim: int | None = None,
    ):
        super().__init__()
        for name, n in (("vocab_size", vocab_size), ("dim", dim), ("heads", heads), ("layers", layers), ("max_len", max_len)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name} must be a positive int, got {name}={n!r}")
        if input_dim is not None and (isinstance(input_dim, bool) or not isinstance(input_dim, int) or input_dim < 1):
            raise ValueError(f"input_dim must be a positive int or None, got input_dim={input_dim!r}")
        options = check_mechanism(mechanism, causal=causal, positions=positions, options=mechanism_options)
        self.vocab_size, self.dim, self.heads, self.max_len = vocab_size, dim, heads, max_len
        self.mechanism, self.mechanism_options = mechanism, options
        self.causal, self.positions, self.input_dim = causal, positions, input_dim
        # drawn first, so that with one seed every mechanism starts from the same embeddings
        self.embed = nn.Embedding(vocab_size, dim) if input_dim is None else nn.Linear(input_dim, dim)
        self.pos = nn.Embedding(max_len, dim) if positions == "learned" else None
        self._init(self.embed, self.pos)
        self.layers = nn.ModuleList()
        for i in range(layers):
            attn = mechanisms.get(mechanism, dim=dim, heads=heads, **options)
            _rename_sites(attn, i)
            block = Block(dim, attn, mlp, layer=i)
            self._init(block.mlp)
            self.layers.append(block)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        self._init(self.head)

    @staticmethod
    def _init(*modules: nn.Module | None) -> None:
        """nanoGPT's initialisation for the layers this file owns (mechanisms keep their own)."""
        for root in modules:
            for m in root.modules() if root is not None else ():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def sites(self) -> list[Site]:
        """Every attention site of the model in module order: ``layers.{i}.attn`` and any ``layers.{i}.attn.<suffix>``.

        Mechanisms that are not softmax attention (``linear``, ``normalized``, ``reversed``) have
        no site: probes and edits do not see them.
        """
        return [v for m in self.modules() for v in vars(m).values() if isinstance(v, Site)]

    def hook_points(self) -> list[str]:
        """Every hook point of the model, in the order a forward pass reaches them (docs: "Hook points").

        Attention points (``attn.q`` ... ``attn.z``) exist for each site of a layer's mechanism;
        a mechanism that is not softmax attention has none. ``mlp.out`` exists when the blocks
        have feed-forward layers.
        """
        points = ["embed"]
        for block in self.layers:
            i = block.layer
            sites = [v for m in block.attn.modules() for v in vars(m).values() if isinstance(v, Site)]
            points += [f"layers.{i}.resid_pre"]
            points += [f"{s.name}.{p}" for s in sites for p in ("q", "k", "v", "probs", "z")]
            points += [f"layers.{i}.attn.out", f"layers.{i}.resid_mid"]
            points += [f"layers.{i}.mlp.out"] if block.mlp is not None else []
            points += [f"layers.{i}.resid_post"]
        return [*points, "final_norm", "logits"]

    def forward(self, inputs: Tensor, where: Tensor | None = None) -> Tensor:
        """Logits ``[B, T, V]``; with ``where`` (bool ``[B, T]``) only at those positions, ``[N, V]``.

        ``where`` lets a trainer skip the output layer at positions without a target (MQAR asks
        8 of 128), which is most of the work when the vocabulary is large.
        """
        h = self.hidden(inputs)  # [B, T, C]
        h = self.norm(h if where is None else h[where])  # [B, T, C] or [N, C]
        if hooks.active():
            return hooks.emit("logits", self.head(hooks.emit("final_norm", h)))
        return self.head(h)  # [B, T, V] or [N, V]

    def hidden(self, inputs: Tensor) -> Tensor:
        """The last block's output ``[B, T, C]``, before the final norm and the output layer."""
        if self.input_dim is None:
            if inputs.dim() != 2 or inputs.dtype.is_floating_point or inputs.dtype == torch.bool:
                raise ValueError(f"inputs must be token ids [batch, tokens] (int), got {inputs.dtype} {tuple(inputs.shape)}")
            if inputs.numel() and (int(inputs.min()) < 0 or int(inputs.max()) >= self.vocab_size):
                raise ValueError(f"token ids must be in 0..{self.vocab_size - 1}, got {int(inputs.min())}..{int(inputs.max())}")
        elif inputs.dim() != 3 or inputs.shape[-1] != self.input_dim or not inputs.dtype.is_floating_point:
            raise ValueError(f"inputs must be float [batch, tokens, {self.input_dim}], got {inputs.dtype} {tuple(inputs.shape)}")
        B, T = inputs.shape[:2]
        if T > self.max_len:
            raise ValueError(f"the input has {T} tokens, more than max_len={self.max_len}: build the model with a larger max_len")
        x = self.embed(inputs)  # [B, T, C]
        if self.pos is not None:
            x = x + self.pos(torch.arange(T, device=x.device))  # [B, T, C]
        for block in self.layers:
            x = block(x)  # [B, T, C]
        return x

    def extra_repr(self) -> str:
        return f"mechanism={self.mechanism!r}, causal={self.causal}, positions={self.positions!r}"
