"""Benchmark attnlab's vision mechanisms, and public implementations of the same layers, on CPU.

What (issue 5, "Mechanisms for images"): every registered mechanism whose layout is
``[B, H, W, C]`` on 32×32, 64×64 and 128×128 token grids (dim 128, 4 heads, float32, batch 1,
channels-last input ``x [B, H, W, C]``): forward time and peak memory (eval mode, no grad) and
forward+backward time and peak memory (train mode; the sum of the outputs' elements is
back-propagated into the parameters and the first input). Peers of the same shape sit under the
mechanism they are compared with:

- NATTEN ``na2d`` (kernel 7), twice: as a layer (the same qkv and output ``nn.Linear`` around
  ``na2d``) against our ``neighborhood rpb=False`` (the same work: NATTEN 0.21 has no relative
  position bias), and as a bare kernel on identical ``[B, heads, T, D]`` tensors against
  ``attnlab.attend(q, k, v, mask=attnlab.masks.neighborhood(7, shape=(H, W)))``;
- timm ``HaloAttn`` (``timm.layers.halo_attn``) against ``halo``; DaViT ``ChannelAttention``
  and ``WindowAttention`` (``timm.models.davit``, the latter inside the window partition of
  DaViT's ``SpatialBlock``) against ``davit_channel`` and ``davit_window``; ConViT ``GPSA``
  (``timm.models.convit``, after its ``local_init``) against ``gpsa``. timm's modules are
  NCHW or ``[B, N, C]``: small adapters (``ChannelsFirst``, ``Tokens``, ``TimmWindows``)
  reshape the channels-last input, and their cost is part of the peer's time.

Each peer pair is also checked for agreement: the peer gets our module's weights (``sync_*``)
and both run on one input (32×32, 28×28 for the DaViT windows); the largest difference is in
the table. Where the two layers differ in meaning, the note column says how.

How (``bench/harness.py``, shared with ``bench/mechanisms.py``): the fastest of repeated runs
after a warm-up, peak memory from the resident set's high-water mark; the two times of every
ratio a check reads (ours and a peer's, a claim's two largest sizes) are taken again in turn,
in alternating rounds, so that both see the same load; glibc malloc's thresholds are fixed. Each size's cost is
predicted before it runs, from the size before it (the first from a probe at a quarter of the
tokens), scaled as ``T^p`` with ``p`` = max(2, the power of ``T`` in the registry's time
string); a size predicted to take more than 60 s per call or more than 6 GiB is skipped, with
the reason in the table. A backward that raises (NATTEN's CPU path has none) is recorded as
"no backward" with the error.

Targets (the table's check column, and the notes):

- neighborhood 7×7 forward at least 10× faster than NATTEN's CPU path, as a kernel and as a
  layer, at every size both ran; and our backward works;
- no mechanism slower than its timm counterpart: ``t(ours) / t(timm) ≤ 1`` (up to 1.05 is
  called a tie: noise);
- a mechanism whose registry time string claims less than quadratic time (``T^p``, p < 2)
  must scale ``t(4T) / t(T) ≤ 1.15 · 4^max(p, 1)`` between the two largest sizes: ≤ 4.6, as
  every sub-quadratic claim of a vision mechanism is linear. Where the string is quadratic
  only because a size is held fixed (biformer's region count ``S``, hilo's pool ``p``), a
  variant that grows it with the image (``side / 8``) makes the string linear and is checked
  instead. A forward that takes at most twice a bare copy of its inputs (timed in the same
  turn) is bound by memory traffic: it is held to how that copy grew, × 1.15, instead (a copy
  of 128×128×128 floats takes 7–8× a 64×64×128 one here, which fits a core's L2), and its
  forward+backward to the target above;

timm imports ``torchvision`` at import time (a few names, none used by the layers compared).
When ``import torchvision`` fails (not installed, or PyPI's build cannot load beside a CPU
torch), :func:`install_torchvision_stand_in` puts a minimal stand-in into ``sys.modules``.
Peers that are not installed are listed as skipped: ``pip install -e '.[bench]'`` for NATTEN,
``pip install --no-deps -c constraints.txt timm pyyaml pillow`` for timm (never torchvision).

Usage:
    python bench/vision.py            # 32×32, 64×64, 128×128: bench/results/vision.{md,json}
    python bench/vision.py --quick    # 32×32 and 64×64, 2 repeats: vision-quick.{md,json}
"""

from __future__ import annotations

import argparse
import enum
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

import attnlab
from attnlab import mechanisms
from harness import (
    SIDE,
    Case,
    claimed_exponent,
    pair_ratios,
    peer_checks,
    ratio_check,
    report,
    run_cases,
    run_notes,
    run_settings,
    scaling_checks,
    steady_allocator,
    turn_text,
)

B, DIM, HEADS = 1, 128, 4
SIDES = (32, 64, 128)
KERNEL = 7  # the neighborhood pair's window
CHECK_SIDES = (32,)  # where a peer's outputs are compared with ours, unless its case says otherwise
NATTEN_SPEEDUP = 10.0


# --- inputs ---------------------------------------------------------------------------------


def image(side: int, g: torch.Generator) -> tuple:
    """The plain input ``x [B, side, side, C]``."""
    return (torch.randn(B, side, side, DIM, generator=g),)


def image_and_text(side: int, g: torch.Generator) -> tuple:
    """sentence_gate: ``x`` and a sentence embedding ``text [B, C]`` (its default text_dim = dim)."""
    return torch.randn(B, side, side, DIM, generator=g), torch.randn(B, DIM, generator=g)


def image_and_pyramid(side: int, g: torch.Generator) -> tuple:
    """medusa: ``x`` and the four feature maps it gates, ``[B, side/2^i, side/2^i, C]`` for i = 0..3."""
    maps = [torch.randn(B, side >> i, side >> i, DIM, generator=g) for i in range(4)]
    return torch.randn(B, side, side, DIM, generator=g), maps


def qkv(side: int, g: torch.Generator) -> tuple:
    """The kernel pair: ``q, k, v [B, heads, side², D]``."""
    return tuple(torch.randn(B, HEADS, side * side, DIM // HEADS, generator=g) for _ in range(3))


# --- our mechanisms -------------------------------------------------------------------------


@dataclass
class Special:
    """A mechanism that does not take the defaults: options (from the side), inputs, a note."""

    options: Callable[[int], dict] = lambda side: {}
    inputs: Callable[[int, torch.Generator], tuple] = image
    note: str = ""


SPECIAL = {
    "sentence_gate": Special(inputs=image_and_text, note="inputs: x and a sentence embedding [1, 128]; a channel gate, no softmax"),
    "medusa": Special(
        inputs=image_and_pyramid,
        note="inputs: x and 4 feature maps [1, s/2^i, s/2^i, 128], i = 0..3 (default feature_dims); returns the gated maps",
    ),
    "biformer": Special(note="defaults n_win = S = 7, topk 4 (32 and 64 are zero-padded to multiples of 7): k·T²/S² is quadratic"),
    "hilo": Special(note="defaults alpha 0.9 (3 Lo-Fi heads, 1 Hi-Fi), window = pool = 2: T²/p² is quadratic"),
    "crossformer": Special(note="kind sda (default), group 7 (32 and 64 are padded to multiples of 7)"),
    "aggregated": Special(note="defaults kernel 3, pool 7 (CPB over up to T·P offsets: sides are not multiples of 7)"),
    "davit_window": Special(note="window 7 (padded, padded tokens masked)"),
    "gpsa": Special(note="local init (4 heads = a 2×2 grid of offsets)"),
}


@dataclass
class Variant:
    """An extra row: a registered mechanism with other options, labelled "<name> <what differs>"."""

    label: str
    options: Callable[[int], dict]  # side -> options
    exponent: float | None = None  # None: from the registry's time string
    note: str = ""


VARIANTS = {
    "neighborhood": [
        Variant("neighborhood rpb=False", lambda s: {"rel_pos_bias": False}, note="no relative position bias: the NATTEN layer's work")
    ],
    "crossformer": [
        Variant(
            "crossformer kind=lda",
            lambda s: {"kind": "lda", "interval": s // 8},
            note="interval = side/8: groups of 8×8 tokens (paper: I = S/G)",
        )
    ],
    "biformer": [
        Variant(
            "biformer n_win=side/8",
            lambda s: {"n_win": s // 8},
            exponent=1.0,
            note="regions of 8×8 tokens (S² = T/64): k·T²/S² = 64k·T, linear",
        )
    ],
    "hilo": [
        Variant("hilo pool=side/8", lambda s: {"pool": s // 8}, exponent=1.0, note="T/64 pooled keys (p² = T/64): T²/p² = 64·T, linear")
    ],
}


def vision_entries() -> list:
    """The registry's entries whose layout is ``[B, H, W, C]``."""
    return [e for e in mechanisms.available() if e.layout.startswith("[B, H, W, C]")]


def our_cases() -> list[Case]:
    """Every vision mechanism of the registry, with its special inputs and variants."""
    cases = []
    for entry in vision_entries():
        spec = SPECIAL.get(entry.name, Special())
        exponent = claimed_exponent(entry.time)
        for v in [Variant(entry.name, spec.options, note=spec.note), *VARIANTS.get(entry.name, [])]:

            def build(side, name=entry.name, options=v.options):
                return mechanisms.get(name, dim=DIM, heads=HEADS, **options(side))

            cases.append(
                Case(
                    label=v.label,
                    paper=entry.paper,
                    build=build,
                    inputs=spec.inputs,
                    exponent=exponent if v.exponent is None else v.exponent,
                    note=v.note,
                )
            )
        if entry.name == "neighborhood":
            cases.append(
                Case(
                    label="attend + masks.neighborhood(7)",
                    paper=entry.paper,
                    build=OurKernel,
                    inputs=qkv,
                    exponent=exponent,
                    grad_inputs=3,
                    note=KERNEL_NOTE,
                )
            )
    return cases


KERNEL_NOTE = "kernel only: q, k, v [1, 4, T, 32], backend auto"


class OurKernel(nn.Module):
    """``attnlab.attend`` with the neighborhood mask on ``q, k, v [B, heads, T, D]``."""

    def __init__(self, side: int):
        super().__init__()
        self.mask = attnlab.masks.neighborhood(KERNEL, shape=(side, side))

    def forward(self, q, k, v):
        return attnlab.attend(q, k, v, mask=self.mask)  # [B, heads, T, D]


# --- NATTEN ---------------------------------------------------------------------------------


class NattenKernel(nn.Module):
    """``natten.na2d`` on ``q, k, v [B, heads, T, D]``; NATTEN is heads-last, ``[B, X, Y, heads, D]``."""

    def __init__(self, side: int):
        super().__init__()
        self.side = side

    def forward(self, q, k, v):
        import natten

        Bq, h, T, d = q.shape
        grid = [t.transpose(1, 2).reshape(Bq, self.side, self.side, h, d) for t in (q, k, v)]  # [B, X, Y, heads, D]
        out = natten.na2d(*grid, kernel_size=KERNEL)  # [B, X, Y, heads, D]
        return out.reshape(Bq, T, h, d).transpose(1, 2)  # [B, heads, T, D]


class NattenLayer(nn.Module):
    """A neighborhood attention layer around ``natten.na2d``: qkv ``Linear``, na2d (kernel 7), output ``Linear``."""

    def __init__(self, side: int):
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x):
        import natten

        Bx, X, Y, C = x.shape
        q, k, v = self.qkv(x).view(Bx, X, Y, 3, HEADS, C // HEADS).unbind(3)  # [B, X, Y, heads, D] each
        out = natten.na2d(q, k, v, kernel_size=KERNEL)  # [B, X, Y, heads, D]
        return self.proj(out.reshape(Bx, X, Y, C))


def sync_linear_layers(ours: nn.Module, peer: nn.Module) -> None:
    """The peer's ``qkv`` and ``proj`` take ours."""
    peer.qkv.load_state_dict(ours.qkv.state_dict())
    peer.proj.load_state_dict(ours.proj.state_dict())


def natten_cases() -> list[Case]:
    """NATTEN's na2d as a layer and as a kernel, each next to ours (skipped if NATTEN is not installed)."""
    try:
        import natten  # noqa: F401
    except ImportError:
        reason = "natten not installed: pip install -c constraints.txt natten"
        return [Case(label="natten.na2d layer", paper="peer", peer_of="neighborhood rpb=False", skip=reason)]
    return [
        Case(
            label="natten.na2d layer",
            paper="peer",
            build=NattenLayer,
            inputs=image,
            peer_of="neighborhood rpb=False",
            sync=sync_linear_layers,
            note="qkv Linear, na2d(kernel 7), proj Linear; CPU path: uncompiled FlexAttention",
        ),
        Case(
            label="natten.na2d",
            paper="peer",
            build=NattenKernel,
            inputs=qkv,
            grad_inputs=3,
            peer_of="attend + masks.neighborhood(7)",
            note=KERNEL_NOTE,
        ),
    ]


# --- timm -----------------------------------------------------------------------------------


class _StandIn:
    """A torchvision class that timm names at import time; the layers compared here never build one."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"torchvision's {type(self).__name__} is a stand-in here (bench/vision.py): torchvision cannot be imported")


def install_torchvision_stand_in() -> None:
    """Put the names timm 1.0's import needs from torchvision into ``sys.modules``; nothing else.

    - ``torchvision.ops.misc.FrozenBatchNorm2d``: imported by timm/layers/create_norm.py,
      layers/norm_act.py and utils/model.py; built only when a model asks for frozen batch norm.
    - ``torchvision.datasets.{CIFAR10, CIFAR100, MNIST, KMNIST, FashionMNIST, ImageFolder}``:
      imported by timm/data/dataset_factory.py; built only by ``create_dataset``. (Places365,
      INaturalist, QMNIST and ImageNet are imported under ``try/except ImportError``: left out.)
    - ``torchvision.transforms.ToTensor``: subclassed by timm/data/transforms.py's
      ``MaybeToTensor``; ``torchvision.transforms.functional`` is imported as a module, and its
      ``InterpolationMode`` enum (six members, torchvision's values) by data/transforms.py and
      data/naflex_transforms.py, which map its members to strings.
    - ``torchvision.models.feature_extraction`` is not provided: timm/layers/_fx.py imports it
      under ``try/except ImportError`` and turns FX feature extraction off.

    The attention layers compared (HaloAttn, DaViT's ChannelAttention and WindowAttention,
    ConViT's GPSA) use none of these; a stand-in class raises if anything builds one.
    """

    def module(name: str, **attrs) -> types.ModuleType:
        m = types.ModuleType(name, "stand-in for torchvision (bench/vision.py)")
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    def stand_in(name: str) -> type:
        return type(name, (_StandIn,), {})

    interpolation = enum.Enum(
        "InterpolationMode",
        {"NEAREST": "nearest", "BILINEAR": "bilinear", "BICUBIC": "bicubic", "BOX": "box", "HAMMING": "hamming", "LANCZOS": "lanczos"},
    )
    functional = module("torchvision.transforms.functional", InterpolationMode=interpolation)
    transforms = module("torchvision.transforms", ToTensor=stand_in("ToTensor"), functional=functional)
    datasets = module(
        "torchvision.datasets", **{n: stand_in(n) for n in ("CIFAR10", "CIFAR100", "MNIST", "KMNIST", "FashionMNIST", "ImageFolder")}
    )
    misc = module("torchvision.ops.misc", FrozenBatchNorm2d=stand_in("FrozenBatchNorm2d"))
    ops = module("torchvision.ops", misc=misc)
    module("torchvision", ops=ops, datasets=datasets, transforms=transforms)  # no __path__: other submodules raise ImportError


STAND_IN_NOTE = (
    " The stand-in provides only ops.misc.FrozenBatchNorm2d, datasets.CIFAR10/CIFAR100/MNIST/KMNIST/FashionMNIST/ImageFolder,"
    " transforms.ToTensor and transforms.functional.InterpolationMode (the names timm's import needs); none is used by the layers compared."
)


def import_timm() -> tuple[types.SimpleNamespace, str]:
    """timm's layers compared here, and how torchvision was found ("installed" or the stand-in's reason)."""
    try:
        import torchvision  # noqa: F401

        how = "installed"
    except Exception as e:  # not installed, or a build that cannot load beside this torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        install_torchvision_stand_in()
        how = f"stand-in ({type(e).__name__}: {e})"
    from timm.layers.halo_attn import HaloAttn
    from timm.models.convit import GPSA
    from timm.models.davit import ChannelAttention, WindowAttention, window_partition, window_reverse

    layers = types.SimpleNamespace(HaloAttn=HaloAttn, GPSA=GPSA, ChannelAttention=ChannelAttention, WindowAttention=WindowAttention)
    layers.window_partition, layers.window_reverse = window_partition, window_reverse
    return layers, how


class ChannelsFirst(nn.Module):
    """timm's NCHW ``HaloAttn`` on a channels-last input, followed by the output ``Linear`` our layer has."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x):
        out = self.module(x.permute(0, 3, 1, 2))  # [B, C, H, W]
        return self.proj(out.permute(0, 2, 3, 1))  # [B, H, W, C]


class Tokens(nn.Module):
    """A ``[B, N, C]`` module on ``x [B, H, W, C]``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        Bx, H, W, C = x.shape
        return self.module(x.reshape(Bx, H * W, C)).view(Bx, H, W, C)


class TimmWindows(nn.Module):
    """DaViT's ``WindowAttention`` inside ``SpatialBlock``'s window partition: pad, partition, attend, merge, crop."""

    def __init__(self, timm, window: int):
        super().__init__()
        self.attn = timm.WindowAttention(DIM, window_size=(window, window), num_heads=HEADS, qkv_bias=True)
        self.partition, self.reverse, self.window = timm.window_partition, timm.window_reverse, window

    def forward(self, x):
        Bx, H, W, C = x.shape
        w = self.window
        x = F.pad(x, (0, 0, 0, -W % w, 0, -H % w))  # [B, Hp, Wp, C], zeros as in SpatialBlock
        Hp, Wp = x.shape[1:3]
        windows = self.partition(x, (w, w)).view(-1, w * w, C)  # [B·nW, w², C]
        out = self.attn(windows).view(-1, w, w, C)
        return self.reverse(out, (w, w), Hp, Wp)[:, :H, :W]  # [B, H, W, C]


def sync_halo(ours: nn.Module, peer: ChannelsFirst) -> None:
    """timm's ``q`` and ``kv`` 1×1 convolutions from our ``qkv``; its relative tables hold ours at offset ``2·halo``.

    timm's ``kv`` channels are per head ``[k_h (D), v_h (D)]``; its tables span ``2(b+2h)-1``
    offsets where ours span the ``2(b+h)-1`` a block can see.
    """
    halo, D = peer.module, DIM // HEADS
    q, k, v = ours.qkv.weight.detach().split(DIM)  # [C, C] each
    kv = torch.cat([k.view(HEADS, D, DIM), v.view(HEADS, D, DIM)], dim=1).reshape(2 * DIM, DIM)  # [h·(k_h, v_h), C]
    with torch.no_grad():
        halo.q.weight.copy_(q[:, :, None, None])
        halo.kv.weight.copy_(kv[:, :, None, None])
        shift = 2 * ours.halo
        for mine, theirs in ((ours.rel_h, halo.pos_embed.height_rel), (ours.rel_w, halo.pos_embed.width_rel)):
            theirs.zero_()
            theirs[shift : shift + len(mine)] = mine
    peer.proj.load_state_dict(ours.proj.state_dict())


def sync_module_linears(ours: nn.Module, peer: nn.Module) -> None:
    """The ``qkv`` and ``proj`` of the timm layer inside the adapter (``Tokens`` or ``TimmWindows``) take ours."""
    sync_linear_layers(ours, peer.module if isinstance(peer, Tokens) else peer.attn)


def sync_gpsa(ours: nn.Module, peer: Tokens) -> None:
    """timm's GPSA takes our ``qk``, ``v``, ``proj``, positional weights and gate; its positional bias is zeroed."""
    gpsa = peer.module
    for name in ("qk", "v", "proj"):
        getattr(gpsa, name).load_state_dict(getattr(ours, name).state_dict())
    with torch.no_grad():
        gpsa.pos_proj.weight.copy_(ours.pos_weight)  # over (δx, δy, δ²) in both
        gpsa.pos_proj.bias.zero_()  # ours has none
        gpsa.gating_param.copy_(ours.gate)


def timm_cases() -> tuple[list[Case], str]:
    """timm's layers, each next to our mechanism of the same shape (skipped if timm is not installed)."""
    try:
        timm, how = import_timm()
    except Exception as e:  # not installed, or its import fails
        reason = f"timm not importable ({e}): pip install --no-deps -c constraints.txt timm pyyaml pillow"
        labels = (("timm HaloAttn", "halo"), ("timm DaViT ChannelAttention", "davit_channel"))
        labels += (("timm DaViT WindowAttention", "davit_window"), ("timm ConViT GPSA", "gpsa"))
        return [Case(label=label, paper="peer", peer_of=ours, skip=reason) for label, ours in labels], f"not importable ({e})"

    def gpsa(side):
        """ConViT's GPSA after its local init, on ``[B, N, C]``."""
        module = timm.GPSA(DIM, num_heads=HEADS, locality_strength=1.0)
        module.local_init()
        return Tokens(module)

    window = TimmWindows(timm, 7).attn
    fused = f"fused_attn={window.fused_attn} (SDPA)" if window.fused_attn else "fused_attn=False (einsum softmax)"
    cases = [
        Case(
            label="timm HaloAttn",
            paper="peer",
            build=lambda side: ChannelsFirst(timm.HaloAttn(DIM, num_heads=HEADS, block_size=8, halo_size=3)),
            inputs=image,
            peer_of="halo",
            sync=sync_halo,
            note="block 8, halo 3, zero-padded keys as ours; NCHW (input permuted) + our Linear proj (HaloAttn has none)",
        ),
        Case(
            label="timm DaViT ChannelAttention",
            paper="peer",
            build=lambda side: Tokens(timm.ChannelAttention(DIM, num_heads=HEADS, qkv_bias=True)),
            inputs=image,
            peer_of="davit_channel",
            sync=sync_module_linears,
            note="[B, N, C] (a view of x); qkv_bias=True as in DaViT's blocks",
        ),
        Case(
            label="timm DaViT WindowAttention",
            paper="peer",
            build=lambda side: TimmWindows(timm, 7),
            inputs=image,
            peer_of="davit_window",
            sync=sync_module_linears,
            check_sizes=(28, 32),
            note=f"window 7 in SpatialBlock's partition; its zero padding takes part as keys (ours masks it); {fused}",
        ),
        Case(
            label="timm ConViT GPSA",
            paper="peer",
            build=gpsa,
            inputs=image,
            peer_of="gpsa",
            sync=sync_gpsa,
            note="local_init; pos_proj has a bias (ours: none), heads ordered column-major (ours row-major), renormalises (a no-op)",
        ),
    ]
    return cases, how


def all_cases() -> tuple[list[Case], str]:
    """Our rows, each followed by its peers, and how timm found torchvision."""
    timm, how = timm_cases()
    peers = natten_cases() + timm
    ordered = []
    for case in our_cases():
        ordered.append(case)
        ordered += [p for p in peers if p.peer_of == case.label]
    return ordered, how


# --- checks ---------------------------------------------------------------------------------


def peer_check(case: Case, row: dict, ours: dict) -> str:
    """The check of a peer row: NATTEN's forward speed-up target, or the harness's ours ÷ peer ratio for timm's."""
    return _natten_check(case, row, ours) if case.label.startswith("natten") else ratio_check(case, row, ours)


def _natten_check(case: Case, row: dict, ours: dict) -> str:
    """Our forward ≥ ``NATTEN_SPEEDUP``× faster than NATTEN's, and our backward works; sets ``peer_over_ours_fwd``."""
    speedup = 1 / pair_ratios(row, ours)[0]
    row["peer_over_ours_fwd"] = round(speedup, 3)
    verdict = "met" if speedup >= NATTEN_SPEEDUP else "NOT met"
    backward = "works" if "fwd_bwd_s" in ours else f"FAILS ({ours.get('no_backward')})"
    return f"ours ({case.peer_of}) forward {speedup:.1f}× faster{turn_text(row)} (target ≥ {NATTEN_SPEEDUP:g}: {verdict}); our backward {backward}"


def agreement(ours: Case, peer: Case, side: int) -> str:
    """Largest |ours − peer| on one ``side × side`` input, the peer holding our weights."""
    torch.manual_seed(0)
    a, b = ours.build(side).eval(), peer.build(side).eval()
    if peer.sync is not None:
        peer.sync(a, b)
    args = peer.inputs(side, torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (a(*args) - b(*args)).abs().max().item()
    return f"max |ours − this| = {diff:.1e} at {SIDE.text(side)}"


def all_agreements(cases: list[Case]) -> dict[str, str]:
    """The agreement of every peer that runs with our mechanism, by peer label."""
    labels = {c.label: c for c in cases}
    out = {}
    for peer in (c for c in cases if c.peer_of and c.skip is None):
        try:
            out[peer.label] = ", ".join(agreement(labels[peer.peer_of], peer, side) for side in peer.check_sizes or CHECK_SIDES)
        except Exception as e:
            out[peer.label] = f"outputs not compared: {type(e).__name__}: {e}"
    return out


def add_agreements(cases: list[Case], rows: list[dict], agreements: dict[str, str]) -> None:
    """Append each peer's agreement (``all_agreements``) to the check of its first row."""
    for case in cases:
        first = next((r for r in rows if r["mechanism"] == case.label), None)
        if case.label in agreements and first is not None:
            first["check"] = "; ".join(filter(None, [first.get("check"), agreements[case.label]]))


def main(argv=None):
    """Measure every case, check the targets and the peers' agreement, print and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="32×32 and 64×64 only, 2 repeats")
    args = ap.parse_args(argv)
    # NATTEN's CPU path warns that FlexAttention runs uncompiled (that is the path measured) and about a deprecated argument.
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    warnings.filterwarnings("ignore", message="return_lse is deprecated")
    console = Console(width=220)
    allocator = steady_allocator()
    reps = 2 if args.quick else 3
    sides = SIDES[:-1] if args.quick else SIDES
    cases, torchvision = all_cases()
    rows = run_cases(cases, SIDE, SIDES, quick=args.quick, reps=reps, console=console)
    agreements = all_agreements(cases)
    notes = peer_checks(cases, rows, SIDE, check=peer_check) + scaling_checks(cases, rows, SIDE)
    add_agreements(cases, rows, agreements)
    notes += [
        f"Agreement of {label} with ours (same input, our weights copied in where there are any): {text}."
        for label, text in agreements.items()
    ]
    timm_version = metadata.version("timm") if "timm" in sys.modules else "not installed"
    notes += [
        "Forward: eval mode under torch.no_grad(). Forward+backward: train mode, the sum of the outputs backpropagated into the parameters and the first input (q, k and v for the kernel rows).",
        *run_notes(allocator),
        f"Scaling is checked where the registry's time string claims less than T² (hilo's and biformer's claim T²: checked on the variants that grow p and S with the image); "
        f"the ratio is between the two largest sizes ({'64×64 / 32×32 in --quick' if args.quick else '128×128 / 64×64'}), 4× the tokens.",
        f"timm {timm_version}; torchvision: {torchvision}." + (STAND_IN_NOTE if torchvision.startswith("stand-in") else ""),
        "dcal (paper 22) is registered with layout [B, T, C]: it is in bench/mechanisms.py, not here.",
    ]
    settings = run_settings(allocator, reps) | {
        "B": B,
        "dim": DIM,
        "heads": HEADS,
        "dtype": "float32",
        "sides": sides,
        "quick": args.quick,
    }
    settings |= {"kernel": KERNEL, "timm": timm_version, "torchvision": torchvision}
    report(console, "vision-quick" if args.quick else "vision", "vision mechanisms (CPU)", rows, SIDE, settings=settings, notes=notes)


if __name__ == "__main__":
    main()
