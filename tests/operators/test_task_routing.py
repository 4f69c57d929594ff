"""Paper 65 (Denoising task routing): the first and last timesteps share 2β − 1 of the channels."""

import pytest
import torch

from attnlab.operators.task_routing import TaskRouting, task_routing_mask


@pytest.mark.parametrize("beta", [0.6, 0.8, 0.9])
def test_first_and_last_step_overlap_is_two_beta_minus_one(beta):
    C, steps = 100, 50
    first, last = task_routing_mask(0, steps, C, beta), task_routing_mask(steps - 1, steps, C, beta)
    assert int(first.sum()) == int(last.sum()) == round(beta * C)
    assert int((first & last).sum()) == round((2 * beta - 1) * C)


def test_the_window_slides_forward_and_the_module_zeroes_the_rest():
    starts = [int(task_routing_mask(t, 10, 20).int().argmax()) for t in range(10)]
    assert starts == sorted(starts) and starts[0] == 0 and starts[-1] == 4
    x = torch.randn(2, 20, 3, 3)
    out = TaskRouting(20, 10)(x, 9)
    assert bool((out[:, :4] == 0).all()) and torch.equal(out[:, 4:], x[:, 4:])


def test_a_timestep_outside_the_schedule_is_refused():
    with pytest.raises(ValueError, match=r"t must be a timestep in 0\.\.9"):
        task_routing_mask(10, 10, 8)
