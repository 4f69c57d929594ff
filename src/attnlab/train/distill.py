"""Papers 14 and 37: attention-map distillation, EchoAtt's knowledge distillation and UNIP's NMI-HAD.

Losses on attention probabilities ``A [B, H, Tq, Tk]`` (rows sum to one) and logits, and
:class:`Distill`, which trains a student through :func:`attnlab.train.train` unchanged: it wraps
student and teacher, runs both on each training batch, and leaves the distillation loss in
``aux_loss``, which the trainer adds to the task loss.

- EchoAtt [14] (:func:`echoatt_kd_loss`): the shared-attention student learns from the original
  model, ``τ² · KL(softmax(z_t/τ) ‖ softmax(z_s/τ))`` on the logits plus the mean squared error
  between the student's and the teacher's attention maps, layer by layer.
- NMI-HAD [37] (:func:`nmi_had_loss`): the teacher layer to distil is chosen by the normalised
  mutual information of its heads (:func:`head_nmi`, as in ``probes.Patterns``): the deepest layer
  whose mean NMI is *hybrid* (``global_ ≤ NMI < local``); the student's last layer learns its map,
  ``mean over batch, heads, queries of KL(A_t[q] ‖ A_s[q])``. The choice rule (deepest hybrid
  layer) and the thresholds are attnlab's reading of UNIP.

    >>> a = torch.softmax(torch.randn(1, 2, 4, 4), -1)
    >>> float(attention_kl(a, a))
    0.0
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.core import attach
from attnlab.mechanisms.shared import CaptureProbs

__all__ = ["Distill", "attention_kl", "echoatt_kd_loss", "head_nmi", "hybrid_layer", "logit_kd", "map_mse", "nmi_had_loss"]

_EPS = 1e-12


def _check_maps(student: Tensor, teacher: Tensor) -> None:
    if student.shape != teacher.shape or student.dim() != 4:
        raise ValueError(f"attention maps must both be [B, H, Tq, Tk] of one shape, got {tuple(student.shape)} and {tuple(teacher.shape)}")


def logit_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``τ² · mean over positions of KL(softmax(z_t/τ) ‖ softmax(z_s/τ))`` (Hinton et al.'s soft targets).

    Paper: 14, EchoAtt (the logit half of its distillation).

    Shapes:
        ``[..., V]`` both → scalar.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"logits must have one shape, got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    log_s = F.log_softmax(student_logits.float() / temperature, -1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, -1)
    return temperature**2 * (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def map_mse(student_maps: list[Tensor], teacher_maps: list[Tensor]) -> Tensor:
    """Mean over layers of ``mean((A_s − A_t)²)``.

    Paper: 14, EchoAtt (the attention-map half of its distillation).

    Shapes:
        lists of ``[B, H, Tq, Tk]``, paired by position → scalar.
    """
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ValueError(f"pass one teacher map per student map, got {len(student_maps)} and {len(teacher_maps)}")
    for s, t in zip(student_maps, teacher_maps, strict=True):
        _check_maps(s, t)
    return sum(((s - t) ** 2).mean() for s, t in zip(student_maps, teacher_maps, strict=True)) / len(student_maps)


def echoatt_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_maps: list[Tensor],
    teacher_maps: list[Tensor],
    *,
    temperature: float = 1.0,
    logit_weight: float = 1.0,
    map_weight: float = 1.0,
) -> Tensor:
    """EchoAtt's distillation loss: ``logit_weight · logit_kd + map_weight · map_mse``.

    Paper: 14, EchoAtt: attend, copy, then adjust.

    Example:
        >>> z = torch.randn(2, 5)
        >>> a = [torch.softmax(torch.randn(1, 1, 3, 3), -1)]
        >>> float(echoatt_kd_loss(z, z, a, a))
        0.0
    """
    return logit_weight * logit_kd(student_logits, teacher_logits, temperature) + map_weight * map_mse(student_maps, teacher_maps)


def attention_kl(student: Tensor, teacher: Tensor) -> Tensor:
    """``mean over batch, heads and queries of KL(A_t[q] ‖ A_s[q])``.

    Paper: 37, UNIP (the distillation loss of NMI-HAD).

    Shapes:
        ``[B, H, Tq, Tk]`` both → scalar.
    """
    _check_maps(student, teacher)
    t = teacher.float()
    return (t * (torch.log(t + _EPS) - torch.log(student.float() + _EPS))).sum(-1).mean()


def head_nmi(probs: Tensor) -> Tensor:
    """Per head: NMI of query and key position, queries uniform, ``p(k | q) = A[q, k]``, averaged over the batch.

    Paper: 37, UNIP. ``I = H(K) − mean_q H(A[q])``, ``NMI = I / √(H(Q) · H(K))`` with ``H(Q) = log Tq``.

    Shapes:
        ``[B, H, Tq, Tk]`` → ``[H]`` (float64).

    Example:
        >>> head_nmi(torch.eye(4).expand(1, 1, 4, 4)).round(decimals=6).tolist()  # each query its own key: local
        [1.0]
    """
    p = probs.double()
    Tq = p.shape[-2]
    col = p.mean(-2)  # [B, H, Tk]: p(k)
    h_k = -(col * torch.log(col + _EPS)).sum(-1)  # [B, H]
    h_rows = -(p * torch.log(p + _EPS)).sum(-1).mean(-1)  # [B, H]
    h_q = math.log(Tq)
    nmi = (h_k - h_rows).clamp(min=0) / math.sqrt(h_q) / h_k.clamp(min=_EPS).sqrt()
    return torch.where(h_k > _EPS, nmi, 0.0).mean(0) if h_q > 0 else torch.zeros(p.shape[1], dtype=torch.float64)


def hybrid_layer(teacher_maps: list[Tensor], *, local: float = 0.5, global_: float = 0.2) -> int:
    """Index of the deepest teacher layer whose mean head NMI is hybrid (``global_ ≤ NMI < local``).

    Paper: 37, UNIP (NMI-guided choice of the layer to distil; attnlab's thresholds, as in ``probes.Patterns``).
    """
    nmis = [float(head_nmi(a).mean()) for a in teacher_maps]
    hybrid = [i for i, x in enumerate(nmis) if global_ <= x < local]
    if not hybrid:
        raise ValueError(
            f"no teacher layer has a hybrid mean NMI in [{global_}, {local}): got {[round(x, 3) for x in nmis]}; pass the layer"
        )
    return hybrid[-1]


def nmi_had_loss(
    student_map: Tensor, teacher_maps: list[Tensor], *, layer: int | None = None, local: float = 0.5, global_: float = 0.2
) -> Tensor:
    """NMI-HAD: the KL of the student's map to the teacher's hybrid layer's map (:func:`hybrid_layer`, or ``layer``).

    Paper: 37, UNIP: rethinking pre-trained attention patterns (NMI-guided hybrid attention distillation).

    Shapes:
        ``student_map [B, H, Tq, Tk]``, ``teacher_maps`` a list of the same shape → scalar.
    """
    i = hybrid_layer(teacher_maps, local=local, global_=global_) if layer is None else layer
    return attention_kl(student_map, teacher_maps[i].detach())


class Distill(nn.Module):
    """A student trained with attention-map distillation from a frozen teacher, through ``train()``'s ``aux_loss``.

    Paper: 14 (EchoAtt KD, ``kind="echoatt"``) and 37 (UNIP NMI-HAD, ``kind="nmi_had"``).

    Each training-mode forward runs the teacher (no gradient) and the student on the same inputs,
    records both models' attention maps at their sites (:class:`~attnlab.mechanisms.shared.CaptureProbs`)
    and sets ``aux_loss``: ``echoatt`` pairs site ``i`` with site ``i`` (the models need as many
    sites); ``nmi_had`` teaches the student's last site the teacher's hybrid layer. The output is the
    student's. In eval mode only the student runs. The teacher's parameters are frozen.

    Args:
        student: a model with ``sites()`` (a :class:`~attnlab.models.tiny.TinyTransformer`).
        teacher: another, with the same heads at the distilled sites.
        kind: ``"echoatt"`` or ``"nmi_had"``.
        weight: multiple of the distillation loss.
        temperature: ``echoatt``'s logit temperature.
        logit_weight, map_weight: ``echoatt``'s weights of the logit and the attention-map terms.
        layer: ``nmi_had``'s teacher layer (default: chosen by NMI on each batch, :func:`hybrid_layer`).

    Shapes:
        ``inputs [B, T]`` → ``[B, T, V]`` (``[N, V]`` with ``where``).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        kind: str = "echoatt",
        weight: float = 1.0,
        temperature: float = 1.0,
        logit_weight: float = 1.0,
        map_weight: float = 1.0,
        layer: int | None = None,
    ):
        super().__init__()
        if kind not in ("echoatt", "nmi_had"):
            raise ValueError(f"kind must be 'echoatt' (paper 14) or 'nmi_had' (paper 37), got kind={kind!r}")
        s_sites, t_sites = [x.name for x in student.sites()], [x.name for x in teacher.sites()]
        if not s_sites or not t_sites or (kind == "echoatt" and len(s_sites) != len(t_sites)):
            raise ValueError(
                f"kind={kind!r} needs attention sites in both models (as many for 'echoatt'), got {len(s_sites)} and {len(t_sites)}"
            )
        self.student, self.teacher = student, teacher.requires_grad_(False).eval()
        self.kind, self.weight, self.temperature = kind, weight, temperature
        self.logit_weight, self.map_weight, self.layer = logit_weight, map_weight, layer
        self.sites = (s_sites, t_sites)
        self.aux_loss: Tensor | None = None

    def train(self, mode: bool = True) -> Distill:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, inputs: Tensor, where: Tensor | None = None) -> Tensor:
        if not self.training:
            return self.student(inputs) if where is None else self.student(inputs, where=where)
        s_caps = [CaptureProbs(n, detach=False) for n in self.sites[0]]
        t_caps = [CaptureProbs(n) for n in self.sites[1]]
        T = inputs.shape[1]
        with torch.no_grad(), attach(edits=t_caps):
            z_t = self.teacher(inputs) if where is None else self.teacher(inputs, where=where)
        with attach(edits=s_caps):
            z_s = self.student(inputs) if where is None else self.student(inputs, where=where)
        s_maps, t_maps = [c.probs(T) for c in s_caps], [c.probs(T) for c in t_caps]
        if self.kind == "echoatt":
            loss = echoatt_kd_loss(
                z_s, z_t, s_maps, t_maps, temperature=self.temperature, logit_weight=self.logit_weight, map_weight=self.map_weight
            )
        else:
            loss = nmi_had_loss(s_maps[-1], t_maps, layer=self.layer)
        self.aux_loss = self.weight * loss
        return z_s
