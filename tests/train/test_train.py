"""train(): a tiny task is learned in seconds, runs are deterministic, checkpoints resume exactly."""

import itertools
import math
import time

import pytest
import torch

from attnlab.models.tiny import TinyTransformer
from attnlab.train import Step, build_model, lr_at, train
from tests.train.toy import Lag, Mean, Running

FAST = {"batch_size": 16, "lr": 3e-3, "eval_every": 20, "eval_batches": 2, "progress": False, "threads": 1}


def model(seed=0, mechanism="mha", **kw):
    torch.manual_seed(seed)
    return TinyTransformer(8, **{"dim": 32, "heads": 2, "layers": 1, "max_len": 16, "mechanism": mechanism, **kw})


def params(m):
    return [p.detach().clone() for p in m.state_dict().values()]


def test_lag_task_is_learned_to_target_in_a_few_hundred_steps_and_stops_early():
    t0 = time.perf_counter()
    r = train(Lag(), model(), **{**FAST, "batch_size": 32}, steps=400, target=0.99)
    assert r.steps_to_target is not None and r.steps_to_target <= 300, r.test_metric
    assert r.final_metric >= 0.99 and r.steps_done == r.steps_to_target < 400
    assert r.steps == list(range(20, r.steps_done + 1, 20)) and len(r.train_loss) == len(r.test_metric) == len(r.steps)
    assert r.train_loss[-1] < r.train_loss[0] and r.steps_per_s > 0 and time.perf_counter() - t0 < 30


def test_the_same_seed_gives_the_same_run_and_another_seed_other_data():
    a, b, c = model(), model(), model()
    ra, rb = train(Lag(), a, steps=40, seed=3, **FAST), train(Lag(), b, steps=40, seed=3, **FAST)
    assert ra.train_loss == rb.train_loss and ra.test_metric == rb.test_metric
    assert all(torch.equal(x, y) for x, y in zip(params(a), params(b)))
    assert train(Lag(), c, steps=40, seed=4, **FAST).train_loss != ra.train_loss


def test_an_interrupted_run_resumes_from_its_checkpoint_exactly(tmp_path):
    ck = tmp_path / "run" / "checkpoint.pt"
    straight = model()
    r_straight = train(Lag(), straight, steps=60, **FAST)
    with pytest.raises(KeyboardInterrupt):
        train(Lag(fail_at=35), model(), steps=60, checkpoint=ck, **FAST)  # dies at step 35; checkpoint at 20
    resumed = model(seed=99)  # another initialisation: the checkpoint replaces it
    r = train(Lag(), resumed, steps=60, checkpoint=ck, **FAST)
    assert r.resumed_from == 20 and r.steps == [20, 40, 60]
    assert r.train_loss == r_straight.train_loss and r.test_metric == r_straight.test_metric
    assert all(torch.equal(x, y) for x, y in zip(params(straight), params(resumed)))
    again = train(Lag(), model(seed=5), steps=60, checkpoint=ck, **FAST)  # finished: nothing left to train
    assert again.resumed_from == 60 and again.test_metric == r.test_metric


def test_a_checkpoint_refuses_other_settings(tmp_path):
    ck = tmp_path / "c.pt"
    train(Lag(), model(), steps=20, checkpoint=ck, **FAST)
    with pytest.raises(ValueError, match=r"other settings: lr=0\.003 \(now 0\.01\)"):
        train(Lag(), model(), steps=20, checkpoint=ck, **{**FAST, "lr": 0.01})
    with pytest.raises(ValueError, match="other settings: model="):
        train(Lag(), model(mechanism="linear"), steps=20, checkpoint=ck, **FAST)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not an attnlab training checkpoint"):
        train(Lag(), model(), steps=20, checkpoint=tmp_path / "junk.pt", **FAST)


def test_float_targets_train_with_mse():
    torch.manual_seed(0)
    m = TinyTransformer(1, dim=32, heads=2, layers=1, input_dim=3, max_len=8)
    r = train(Running(), m, steps=100, **{**FAST, "eval_every": 50})
    assert r.train_loss[-1] < r.train_loss[0] / 5 and r.test_metric[-1] > r.test_metric[0]


def test_a_model_is_sized_from_a_sample_batch_and_per_sequence_targets_read_the_last_position():
    torch.manual_seed(0)
    tokens = build_model(Lag(vocab_size=9, seq_len=12), "mha", {"dim": 16, "heads": 2})
    assert (tokens.vocab_size, tokens.input_dim, tokens.max_len, tokens.causal) == (9, None, 12, True)
    floats = build_model(Mean(), "linear", {"dim": 32, "heads": 2, "layers": 1})
    assert (floats.vocab_size, floats.input_dim) == (1, 4)
    r = train(Mean(), floats, steps=100, **{**FAST, "eval_every": 50})
    assert r.test_metric[-1] > r.test_metric[0] and r.train_loss[-1] < r.train_loss[0]


def test_mixture_of_heads_trains_with_its_load_balance_loss():
    m = model(mechanism="moh", mechanism_options={"top_k": 1})
    r = train(Lag(), m, steps=20, **FAST)
    assert math.isfinite(r.train_loss[-1]) and isinstance(m.layers[0].attn.aux_loss, torch.Tensor)


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    lrs = [lr_at(s, lr=1.0, warmup=10, steps=100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:])) and lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_threads_are_restored_after_training():
    before = torch.get_num_threads()
    train(Lag(), model(), steps=2, **{**FAST, "eval_every": 2, "threads": 1})
    assert torch.get_num_threads() == before


def test_lr_scale_gives_matching_parameters_their_multiple_of_the_schedule():
    """Every step, the q/k groups run at 10 × lr_at(step) and the rest at lr_at(step), read from the optimizer by a callback."""
    m, seen = model(), []

    def record(s: Step):
        rates = {}
        for g in s.optimizer.param_groups:
            for p in g["params"]:
                rates[id(p)] = g["lr"]
        seen.append((s.step, s.lr, rates))

    train(Lag(), m, steps=6, warmup=2, **{**FAST, "lr": 1e-3}, lr_scale={"*.q_proj.*": 10, "*.k_proj.*": 10}, callback=record)
    names = dict(m.named_parameters())
    assert [s for s, _, _ in seen] == [1, 2, 3, 4, 5, 6]
    for step, lr, rates in seen:
        assert lr == lr_at(step - 1, lr=1e-3, warmup=2, steps=6)
        assert rates[id(names["layers.0.attn.q_proj.weight"])] == rates[id(names["layers.0.attn.k_proj.weight"])] == 10 * lr
        assert rates[id(names["layers.0.attn.v_proj.weight"])] == rates[id(names["head.bias"])] == lr


def test_callback_sees_every_step_with_its_loss_and_batch():
    steps = []
    r = train(Lag(), model(), steps=20, **FAST, callback=lambda s: steps.append((s.step, s.loss, s.batch.inputs.shape, s.model.training)))
    assert [s[0] for s in steps] == list(range(1, 21))
    assert all(shape == (16, 16) and training for _, _, shape, training in steps)
    assert r.train_loss[0] == pytest.approx(sum(loss for _, loss, _, _ in steps) / 20)


def test_lr_scale_of_one_is_the_plain_run():
    a, b = model(), model()
    ra = train(Lag(), a, steps=20, **FAST)
    rb = train(Lag(), b, steps=20, **FAST, lr_scale={"layers.*": 1.0})
    assert ra.train_loss == rb.train_loss and all(torch.equal(x, y) for x, y in zip(params(a), params(b)))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"steps": 0}, "steps must be a positive int"),
        ({"lr_scale": {"*.qproj.*": 2}}, r"lr_scale pattern '\*.qproj.\*' matches no trained parameter: the names look like embed.weight"),
        ({"lr_scale": {"*": 0}}, r"lr_scale\['\*'\] must be a positive finite multiplier of lr, got"),
        ({"lr_scale": [("*", 2)]}, r"lr_scale must map parameter-name globs to multipliers"),
        ({"callback": 3}, r"callback must be a function of one Step, or None, got callback=3"),
        ({"seed": -1}, "seed must be an int >= 0"),
        ({"lr": 0.0}, "lr must be a positive finite learning rate"),
        ({"lr": float("inf")}, r"lr must be a positive finite learning rate \(e.g. lr=1e-3\), got lr=inf"),
        ({"threads": 0}, "threads must be a positive int"),
    ],
)
def test_bad_settings_are_explained(kw, message):
    with pytest.raises(ValueError, match=message):
        train(Lag(), model(), **{**FAST, "steps": 2, **kw})
