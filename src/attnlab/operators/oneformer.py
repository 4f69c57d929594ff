"""Paper 74: OneFormer's task-conditioned object queries and its query–text contrastive loss.

OneFormer trains one segmentation model for semantic, instance and panoptic segmentation by
telling it the task. The task is a token ``Q_task`` (an embedding of "the task is {task}"); the
object queries start as repetitions of it, are refined by attending to the image features, and the
task token itself is kept as the first query:

    Q₀ = Q_task + E_q,    Q' = Q₀ + CrossAttn(Q₀, F),    Q = [Q_task ; Q'[1:]]   (N queries),

with ``E_q`` learned per-query offsets. During training each object query is pulled towards the
text query of the same object by a symmetric InfoNCE over the ``M`` object–text pairs in the batch:

    L = −1/(2M) Σᵢ [ log softmax_j(qᵢ·tⱼ/τ)ᵢ + log softmax_j(tᵢ·qⱼ/τ)ᵢ ],

where ``q`` and ``t`` are L2-normalised and ``τ`` is the temperature (0.07, as CLIP starts).
Defaults: N = 150 queries, 3 tasks (semantic, instance, panoptic), 8 heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.operators import register

__all__ = ["TaskConditionedQueries", "query_text_contrastive"]


@register("oneformer_queries", paper="74")
class TaskConditionedQueries(nn.Module):
    """Object queries initialised from a task token and refined by cross-attention to image features.

    Paper: 74, OneFormer: One Transformer to Rule Universal Image Segmentation.

    Args:
        dim: query and feature width ``C``.
        heads: attention heads of the cross-attention (``dim`` must be divisible by it).
        queries: number of queries ``N`` including the task token (OneFormer: 150).
        tasks: number of tasks (OneFormer: 3, semantic / instance / panoptic).

    Shapes:
        features ``[B, T, C]`` (flattened image features), task ``[B]`` (integer task ids) →
        queries ``[B, N, C]``, whose first row is the task token.

    Example:
        >>> m = TaskConditionedQueries(dim=32, heads=4, queries=10)
        >>> m(torch.randn(2, 49, 32), torch.tensor([0, 2])).shape
        torch.Size([2, 10, 32])
    """

    def __init__(self, dim: int, heads: int = 8, *, queries: int = 150, tasks: int = 3):
        super().__init__()
        for name, v in {"dim": dim, "heads": heads, "queries": queries, "tasks": tasks}.items():
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}: pick heads dividing {dim}")
        if queries < 2:
            raise ValueError(f"queries counts the task token, so it must be at least 2, got queries={queries}")
        self.dim, self.queries, self.tasks = dim, queries, tasks
        self.task_token = nn.Embedding(tasks, dim)  # Q_task per task
        self.offsets = nn.Parameter(torch.randn(queries - 1, dim) * 0.02)  # E_q
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: Tensor, task: Tensor) -> Tensor:
        if features.dim() != 3 or features.shape[-1] != self.dim:
            raise ValueError(f"features must be [B, T, C] with C={self.dim}, got shape {tuple(features.shape)}")
        if task.dim() != 1 or task.shape[0] != features.shape[0] or task.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"task must be integer ids [B] with B={features.shape[0]}, got {task.dtype} of shape {tuple(task.shape)}")
        if task.min() < 0 or task.max() >= self.tasks:
            raise ValueError(f"task ids must be in [0, {self.tasks}), got values in [{int(task.min())}, {int(task.max())}]")
        q_task = self.task_token(task)  # (B, C)
        q0 = q_task[:, None] + self.offsets.to(features.dtype)  # (B, N-1, C)
        q = q0 + self.attn(self.norm(q0), features, features, need_weights=False)[0]  # (B, N-1, C)
        return torch.cat([q_task[:, None], q], 1)  # (B, N, C)


@register("query_text_contrastive", paper="74")
def query_text_contrastive(queries: Tensor, texts: Tensor, temperature: float = 0.07) -> Tensor:
    """OneFormer's symmetric query–text InfoNCE over ``M`` matched object–text pairs.

    Paper: 74, OneFormer: One Transformer to Rule Universal Image Segmentation.

    Args:
        queries: object queries, row ``i`` matched with ``texts[i]``.
        texts: text queries.
        temperature: ``τ`` dividing the cosine similarities (0.07).

    Shapes:
        queries ``[M, C]``, texts ``[M, C]`` → scalar loss.

    Example:
        >>> q = torch.randn(6, 16)
        >>> float(query_text_contrastive(q, q)) < float(query_text_contrastive(q, q.roll(1, 0)))
        True
    """
    if queries.dim() != 2 or queries.shape != texts.shape:
        raise ValueError(f"queries and texts must both be [M, C] with the same shape, got {tuple(queries.shape)} and {tuple(texts.shape)}")
    if queries.shape[0] < 2:
        raise ValueError(f"a contrastive loss needs at least 2 pairs, got M={queries.shape[0]}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive (OneFormer/CLIP start at 0.07), got temperature={temperature!r}")
    logits = F.normalize(queries, dim=-1) @ F.normalize(texts, dim=-1).T / temperature  # (M, M)
    labels = torch.arange(queries.shape[0], device=queries.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
