"""Paper 1: sphere inputs and the cubic target (1/N) Σ ⟨x0, x_i⟩³, scored by negative MSE."""

import pytest
import torch

from attnlab import tasks
from attnlab.tasks.random_features import SphereCubic


def _g(seed):
    return torch.Generator().manual_seed(seed)


def test_sphere_cubic_same_seed_same_batch_other_seed_other_batch():
    task = SphereCubic()
    a, b, c = (task.batch(4, "train", _g(s)) for s in (0, 0, 1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_sphere_cubic_inputs_lie_on_the_unit_sphere_and_the_target_is_the_mean_cube():
    b = SphereCubic().batch(8, "train", _g(0))
    assert b.inputs.shape == (8, 17, 8)
    torch.testing.assert_close(b.inputs.norm(dim=-1), torch.ones(8, 17))
    for row in range(8):
        x0, keys = b.inputs[row, 0].double(), b.inputs[row, 1:].double()
        expected = sum(float(x0 @ k) ** 3 for k in keys) / 16
        assert float(b.targets[row]) == pytest.approx(expected, abs=1e-6)
    assert torch.equal(b.extra["x0"], b.inputs[:, 0]) and torch.equal(b.extra["keys"], b.inputs[:, 1:])


def test_sphere_cubic_hand_checked_tiny_instance():
    task = SphereCubic(dim=2, keys=2, degree=3)
    b = task.batch(1, "train", _g(0))
    (a0, a1), (p0, p1), (q0, q1) = b.inputs[0].tolist()
    assert float(b.targets[0]) == pytest.approx(((a0 * p0 + a1 * p1) ** 3 + (a0 * q0 + a1 * q1) ** 3) / 2, abs=1e-6)


def test_sphere_cubic_metric_is_negative_mse_where_masked():
    task = SphereCubic()
    b = task.batch(4, "train", _g(0))
    assert task.metric(b.targets, b) == 0.0
    assert task.metric(b.targets[:, None] + 0.5, b) == pytest.approx(-0.25)
    b.mask = torch.tensor([True, False, False, False])
    pred = b.targets.clone()
    pred[1:] += 10.0  # errors outside the mask do not count
    assert task.metric(pred, b) == 0.0


def test_sphere_cubic_target_is_invariant_to_key_order_and_odd_in_the_query():
    task = tasks.get("random_features")
    b = task.batch(16, "train", _g(0))
    x0, keys = b.extra["x0"], b.extra["keys"]

    def target(q, k):
        return (torch.einsum("bd,bnd->bn", q, k) ** 3).mean(-1)

    torch.testing.assert_close(target(x0, keys), b.targets)
    torch.testing.assert_close(target(x0, keys.flip(1)), b.targets)  # a function of the set of keys
    torch.testing.assert_close(target(-x0, keys), -b.targets)


@pytest.mark.parametrize(("options", "match"), [({"dim": 0}, r"dim must be an integer >= 1"), ({"keys": -1}, r"keys must be")])
def test_sphere_cubic_bad_options_name_the_valid_range(options, match):
    with pytest.raises(ValueError, match=match):
        SphereCubic(**options)
