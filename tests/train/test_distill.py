"""Attention-map distillation (papers 14, 37): the losses against hand-computed values, and Distill through train()."""

import math

import pytest
import torch

import attnlab
from attnlab.models.tiny import TinyTransformer
from attnlab.train import train
from attnlab.train.distill import Distill, attention_kl, echoatt_kd_loss, head_nmi, hybrid_layer, logit_kd, map_mse, nmi_had_loss
from tests.train.toy import Lag

A_S = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).view(1, 1, 2, 2)
A_T = torch.tensor([[0.5, 0.5], [0.5, 0.5]]).view(1, 1, 2, 2)
KL_HAND = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL([.75, .25] ‖ [.5, .5])


def test_logit_kd_by_hand_and_its_temperature_squared_factor():
    s, t = torch.zeros(1, 2), torch.tensor([[math.log(3), 0.0]])
    assert float(logit_kd(s, t)) == pytest.approx(KL_HAND, abs=1e-6)
    assert float(logit_kd(s, 2 * t, temperature=2.0)) == pytest.approx(4 * KL_HAND, abs=1e-6)


def test_map_mse_and_echoatt_loss_by_hand():
    assert float(map_mse([A_S], [A_T])) == pytest.approx(0.125)
    assert float(map_mse([A_S, A_T], [A_T, A_T])) == pytest.approx(0.0625)
    s, t = torch.zeros(1, 2), torch.tensor([[math.log(3), 0.0]])
    got = echoatt_kd_loss(s, t, [A_S], [A_T], logit_weight=2.0, map_weight=3.0)
    assert float(got) == pytest.approx(2 * KL_HAND + 3 * 0.125, abs=1e-6)


def test_attention_kl_by_hand():
    s = torch.tensor([[0.75, 0.25], [0.5, 0.5]]).view(1, 1, 2, 2)
    want = (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)) / 2  # row 1 agrees: 0
    assert float(attention_kl(s, A_T)) == pytest.approx(want, abs=1e-6)


def test_head_nmi_by_hand_local_global_and_hybrid():
    h_k = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    want = (h_k - math.log(2) / 2) / math.sqrt(math.log(2) * h_k)  # 0.3456: hybrid
    assert float(head_nmi(A_S)) == pytest.approx(want, abs=1e-9)
    assert float(head_nmi(torch.eye(5).view(1, 1, 5, 5))) == pytest.approx(1.0)
    assert float(head_nmi(torch.full((1, 1, 5, 5), 0.2))) == pytest.approx(0.0, abs=1e-9)


def test_nmi_had_distils_the_deepest_hybrid_teacher_layer():
    eye, uniform = torch.eye(2).view(1, 1, 2, 2), A_T
    assert hybrid_layer([A_S, eye, A_S, uniform]) == 2
    s = torch.tensor([[0.75, 0.25], [0.5, 0.5]]).view(1, 1, 2, 2)
    torch.testing.assert_close(nmi_had_loss(s, [eye, A_S, uniform]), attention_kl(s, A_S))
    with pytest.raises(ValueError, match="hybrid"):
        hybrid_layer([eye, uniform])


def tiny(seed):
    torch.manual_seed(seed)
    return TinyTransformer(8, dim=16, heads=2, layers=2, max_len=16)


def test_distill_aux_loss_equals_the_loss_on_separately_captured_maps():
    student, teacher = tiny(0), tiny(1)
    x = torch.randint(0, 8, (3, 16))
    maps = {}
    for name, m in (("s", student), ("t", teacher)):
        with attnlab.capture(m, "layers.*.attn.probs") as cache:
            maps[name + "z"] = m.eval()(x)
        maps[name] = [cache[f"layers.{i}.attn.probs"] for i in range(2)]
    d = Distill(student, teacher, kind="echoatt", weight=0.5).train()
    torch.testing.assert_close(d(x), maps["sz"])
    want = 0.5 * echoatt_kd_loss(maps["sz"], maps["tz"], maps["s"], maps["t"])
    torch.testing.assert_close(d.aux_loss, want, atol=1e-6, rtol=1e-5)
    d.aux_loss.backward()
    assert student.layers[0].attn.q_proj.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("kind", ["echoatt", "nmi_had"])
def test_the_map_term_alone_sends_gradient_to_the_student_queries(kind):
    student, teacher = tiny(0), tiny(1)
    d = Distill(student, teacher, kind=kind, logit_weight=0.0, layer=1).train()  # layer: a random teacher need not be hybrid
    d(torch.randint(0, 8, (3, 16)))
    d.aux_loss.backward()
    assert float(student.layers[-1].attn.q_proj.weight.grad.abs().sum()) > 0


def test_distill_through_train_pulls_the_student_maps_to_the_teacher():
    teacher = tiny(1)
    train(Lag(seq_len=16), teacher, steps=150, batch_size=32, lr=3e-3, eval_every=150, eval_batches=1, progress=False, threads=1)
    x = torch.randint(0, 8, (8, 16))

    def gap(student):
        d = Distill(student, teacher, kind="echoatt", weight=10.0).train()
        d(x)
        return float(d.aux_loss.detach())

    student = tiny(0)
    before = gap(student)
    d = Distill(student, teacher, kind="echoatt", weight=10.0)
    train(Lag(seq_len=16), d, steps=100, batch_size=32, lr=3e-3, eval_every=100, eval_batches=1, progress=False, threads=1)
    assert gap(student) < 0.5 * before


def test_bad_kind_raises():
    with pytest.raises(ValueError, match="kind"):
        Distill(tiny(0), tiny(1), kind="mse")
