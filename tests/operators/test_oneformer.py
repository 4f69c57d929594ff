"""OneFormer (paper 74): task-conditioned queries and the query–text contrastive loss."""

import math

import pytest
import torch

from attnlab import operators
from attnlab.operators.oneformer import TaskConditionedQueries, query_text_contrastive


def _reference_infonce(q, t, tau):
    """The paper's sum written out with loops over pairs (cosine similarity, both directions)."""
    M = q.shape[0]
    qn = [q[i] / q[i].norm() for i in range(M)]
    tn = [t[i] / t[i].norm() for i in range(M)]
    total = 0.0
    for i in range(M):
        q2t = [math.exp(float(qn[i] @ tn[j]) / tau) for j in range(M)]
        t2q = [math.exp(float(tn[i] @ qn[j]) / tau) for j in range(M)]
        total += math.log(q2t[i] / sum(q2t)) + math.log(t2q[i] / sum(t2q))
    return -total / (2 * M)


@pytest.mark.parametrize("tau", [0.07, 0.5, 1.0])
def test_contrastive_loss_equals_reference_infonce(tau):
    torch.manual_seed(0)
    q, t = torch.randn(7, 12, dtype=torch.float64), torch.randn(7, 12, dtype=torch.float64)
    assert float(query_text_contrastive(q, t, tau)) == pytest.approx(_reference_infonce(q, t, tau), rel=1e-10)


def test_contrastive_loss_is_log_m_for_identical_rows():
    q = torch.ones(5, 4)
    assert float(query_text_contrastive(q, q)) == pytest.approx(math.log(5), rel=1e-6)


def test_contrastive_loss_scale_invariant_and_small_for_matched_orthogonal_pairs():
    q = torch.eye(6, 8)
    assert float(query_text_contrastive(q, 3 * q)) < 1e-5  # exp(-1/0.07) off-diagonal terms
    assert float(query_text_contrastive(q, q.roll(1, 0))) > 10


def test_queries_first_row_is_task_token_and_tasks_differ():
    torch.manual_seed(1)
    m = TaskConditionedQueries(16, 2, queries=5)
    f = torch.randn(1, 9, 16).expand(3, 9, 16)
    out = m(f, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(out[:, 0], m.task_token.weight)
    assert not torch.allclose(out[0, 1:], out[1, 1:]) and not torch.allclose(out[1, 1:], out[2, 1:])


def test_queries_with_zero_value_path_are_task_token_plus_offsets():
    """With the attention's output projection at zero the refinement vanishes: Q = [Q_task; Q_task + E_q]."""
    torch.manual_seed(2)
    m = TaskConditionedQueries(8, 2, queries=4)
    with torch.no_grad():
        m.attn.out_proj.weight.zero_()
        m.attn.out_proj.bias.zero_()
    out = m(torch.randn(2, 5, 8), torch.tensor([1, 0]))
    tok = m.task_token.weight[[1, 0]]
    torch.testing.assert_close(out, torch.cat([tok[:, None], tok[:, None] + m.offsets], 1))


def test_gradcheck():
    torch.manual_seed(3)
    m = TaskConditionedQueries(4, 2, queries=3).double()
    f = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m(x, torch.tensor([0, 2])), (f,))
    q = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: query_text_contrastive(a, b, 0.5), (q, t))


def test_registered():
    assert operators.get("oneformer_queries") is TaskConditionedQueries
    assert operators.get("query_text_contrastive") is query_text_contrastive
    assert TaskConditionedQueries.paper == "74"


@pytest.mark.parametrize(
    ("kw", "text"),
    [({"dim": 0}, "dim must be a positive"), ({"dim": 10, "heads": 3}, "divisible by heads"), ({"dim": 8, "queries": 1}, "at least 2")],
)
def test_bad_options_raise(kw, text):
    with pytest.raises(ValueError, match=text):
        TaskConditionedQueries(**kw)


def test_bad_inputs_raise():
    m = TaskConditionedQueries(8, 2, queries=3)
    with pytest.raises(ValueError, match=r"features must be \[B, T, C\]"):
        m(torch.randn(2, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="task ids must be in"):
        m(torch.randn(2, 3, 8), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integer ids"):
        m(torch.randn(2, 3, 8), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="same shape"):
        query_text_contrastive(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        query_text_contrastive(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="temperature must be positive"):
        query_text_contrastive(torch.randn(3, 4), torch.randn(3, 4), 0.0)
