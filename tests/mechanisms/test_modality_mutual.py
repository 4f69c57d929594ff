"""modality_mutual (paper 29): image rows see the question; answers stay causal."""

import math

import pytest
import torch

from attnlab import mechanisms
from attnlab.mechanisms.mha import MultiHeadAttention
from attnlab.mechanisms.modality_mutual import ModalityMutualAttention

DIM, HEADS = 16, 4
# [image x4][question x3][answer x3]
IMAGE = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
QUESTION = torch.tensor([0, 0, 0, 0, 1, 1, 1, 0, 0, 0], dtype=torch.bool)
ANSWER = ~(IMAGE | QUESTION)
T = IMAGE.numel()


def _pair(**options):
    torch.manual_seed(0)
    mm = ModalityMutualAttention(DIM, HEADS, **options)
    mha = MultiHeadAttention(DIM, HEADS, is_causal=True, **options)
    mha.load_state_dict(mm.state_dict())
    return mm, mha


def _reference(m, x, image, question):
    """Softmax attention under allowed[i, j] = (j <= i) or (image[i] and question[j]), written out."""
    B = x.shape[0]
    D = m.head_dim
    q = (x @ m.q_proj.weight.T).view(B, T, m.heads, D).transpose(1, 2)
    k = (x @ m.k_proj.weight.T).view(B, T, m.heads, D).transpose(1, 2)
    v = (x @ m.v_proj.weight.T).view(B, T, m.heads, D).transpose(1, 2)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (j <= i) | (image[..., :, None] & question[..., None, :])  # [T, T] or [B, T, T]
    s = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(~allowed.view(-1, 1, T, T), float("-inf"))
    out = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, DIM)
    return out @ m.o_proj.weight.T


def test_modality_mutual_equals_attention_under_its_written_mask():
    mm, _ = _pair()
    x = torch.randn(2, T, DIM)
    torch.testing.assert_close(mm(x, IMAGE, QUESTION), _reference(mm, x, IMAGE, QUESTION), atol=1e-5, rtol=1e-5)


def test_modality_mutual_per_sequence_layouts():
    mm, _ = _pair()
    image = torch.stack([IMAGE, torch.roll(IMAGE, 1)])
    question = torch.stack([QUESTION, torch.roll(QUESTION, 1)])
    x = torch.randn(2, T, DIM)
    torch.testing.assert_close(mm(x, image, question), _reference(mm, x, image, question), atol=1e-5, rtol=1e-5)


def test_answer_and_question_outputs_equal_plain_causal_attention():
    mm, mha = _pair(kv_heads=2, rope=True)
    x = torch.randn(2, T, DIM)
    out, causal = mm(x, IMAGE, QUESTION), mha(x)
    torch.testing.assert_close(out[:, ~IMAGE], causal[:, ~IMAGE], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(out[:, IMAGE], causal[:, IMAGE], atol=1e-4)


def test_nothing_before_an_answer_token_depends_on_it():
    mm, _ = _pair()
    x = torch.randn(1, T, DIM, requires_grad=True)
    out = mm(x, IMAGE, QUESTION)
    for a in ANSWER.nonzero().flatten().tolist():
        (grad,) = torch.autograd.grad(out[0, :a].sum(), x, retain_graph=True)
        assert torch.equal(grad[0, a], torch.zeros(DIM))


def test_image_rows_depend_on_later_question_tokens_unlike_causal():
    mm, mha = _pair()
    x = torch.randn(1, T, DIM, requires_grad=True)
    (grad,) = torch.autograd.grad(mm(x, IMAGE, QUESTION)[0, IMAGE].sum(), x)
    assert (grad[0, QUESTION].abs().sum(-1) > 0).all()
    (grad_causal,) = torch.autograd.grad(mha(x)[0, IMAGE].sum(), x)
    assert torch.equal(grad_causal[0, QUESTION], torch.zeros(int(QUESTION.sum()), DIM))


def test_modality_mutual_without_labels_is_causal_mha():
    mm, mha = _pair()
    x = torch.randn(2, T, DIM)
    torch.testing.assert_close(mm(x), mha(x), atol=1e-6, rtol=1e-6)


def test_modality_mutual_gradcheck():
    torch.manual_seed(1)
    m = ModalityMutualAttention(8, 2, backend="reference").double()
    image, question = torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool), torch.tensor([0, 0, 1, 1, 0], dtype=torch.bool)
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t, image, question), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_modality_mutual_dtypes(dtype):
    m = ModalityMutualAttention(DIM, HEADS, kv_heads=1).to(dtype)
    out = m(torch.randn(2, T, DIM, dtype=dtype), IMAGE, QUESTION)
    assert out.shape == (2, T, DIM) and out.dtype == dtype and not out.isnan().any()


def test_modality_mutual_registered():
    assert isinstance(mechanisms.get("modality_mutual", dim=DIM, heads=HEADS), ModalityMutualAttention)


@pytest.mark.parametrize(
    ("image", "question", "message"),
    [
        (IMAGE, None, "pass image and question together"),
        (IMAGE, IMAGE, "a token cannot be both image and question"),
        (IMAGE[None].expand(3, T), QUESTION[None].expand(3, T), "image and question have batch 3 but x has batch 2"),
        (IMAGE[:5], QUESTION[:5], "built for 5 queries and 5 keys"),
    ],
)
def test_modality_mutual_bad_labels_raise(image, question, message):
    with pytest.raises(ValueError, match=message):
        ModalityMutualAttention(DIM, HEADS)(torch.randn(2, T, DIM), image, question)
