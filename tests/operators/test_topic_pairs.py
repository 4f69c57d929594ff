"""Siamese topic-pair encoder with three heads (paper 60)."""

import pytest
import torch
import torch.nn.functional as F

from attnlab import operators
from attnlab.operators.topic_pairs import TopicPairEncoder


def test_heads_match_handwritten_pair_features():
    torch.manual_seed(0)
    m = TopicPairEncoder(6, 4, topics=3)
    a, b = torch.randn(2, 6), torch.randn(2, 6)
    W, c = m.tower[0].weight, m.tower[0].bias
    u, v = torch.tanh(a @ W.T + c), torch.tanh(b @ W.T + c)
    h = torch.cat([u, v, (u - v).abs(), u * v], -1)
    out = m(a, b)
    torch.testing.assert_close(out.same_topic, h @ m.same_head.weight[0] + m.same_head.bias[0])
    torch.testing.assert_close(out.next_sentence, h @ m.next_head.weight[0] + m.next_head.bias[0])
    torch.testing.assert_close(out.topic_b, v @ m.topic_head.weight.T + m.topic_head.bias)


def test_siamese_swap_swaps_topic_logits():
    torch.manual_seed(1)
    m = TopicPairEncoder(5, 3, topics=2)
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    ab, ba = m(a, b), m(b, a)
    torch.testing.assert_close(ab.topic_a, ba.topic_b)
    torch.testing.assert_close(ab.topic_b, ba.topic_a)


def test_loss_weights_reduce_to_single_task():
    torch.manual_seed(2)
    m = TopicPairEncoder(5, 3, topics=2)
    out = m(torch.randn(4, 5), torch.randn(4, 5))
    same, nxt = torch.tensor([1.0, 0, 1, 0]), torch.tensor([0.0, 1, 1, 0])
    ta, tb = torch.tensor([0, 1, 1, 0]), torch.tensor([1, 1, 0, 0])
    single = TopicPairEncoder.loss(out, same, ta, tb, nxt, weights=(1, 0, 0))
    torch.testing.assert_close(single, F.binary_cross_entropy_with_logits(out.same_topic, same))
    full = TopicPairEncoder.loss(out, same, ta, tb, nxt)
    want = single + (F.cross_entropy(out.topic_a, ta) + F.cross_entropy(out.topic_b, tb)) / 2
    torch.testing.assert_close(full, want + F.binary_cross_entropy_with_logits(out.next_sentence, nxt))


def test_gradcheck():
    torch.manual_seed(3)
    m = TopicPairEncoder(4, 3, topics=2).double()
    a = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: m(x, y).same_topic, (a, b))
    assert torch.autograd.gradcheck(lambda x, y: m(x, y).topic_a, (a, b))


def test_registered():
    assert operators.get("topic_pair_encoder") is TopicPairEncoder and TopicPairEncoder.paper == "60"


def test_bad_options_and_inputs_raise():
    with pytest.raises(ValueError, match="topics must be"):
        TopicPairEncoder(4, 3, topics=0)
    m = TopicPairEncoder(4, 3)
    with pytest.raises(ValueError, match=r"a and b must both be \[B, E\] with E=4"):
        m(torch.randn(2, 4), torch.randn(3, 4))
    out = m(torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="three non-negative"):
        TopicPairEncoder.loss(
            out, torch.ones(2), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), torch.ones(2), (1, -1, 0)
        )
