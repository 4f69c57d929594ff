"""Paper 6 (gCOG): the two-stream cross-attention model, its streams, its sites, and training on gcog."""

import pytest
import torch

import attnlab
from attnlab.models.two_stream import TwoStream
from attnlab.probes import Entropy
from attnlab.tasks.gcog_lite import GCOGLite
from attnlab.train import train


def model(task, seed=0, **kw):
    torch.manual_seed(seed)
    return TwoStream(task.vocab_size, split=task.grid_len, max_len=task.seq_len, **{"dim": 32, "heads": 2, **kw})


def test_logits_per_position_and_at_where():
    task = GCOGLite()
    m = model(task).eval()
    b = task.batch(3, generator=torch.Generator().manual_seed(0))
    out = m(b.inputs)
    assert out.shape == (3, task.seq_len, task.vocab_size)
    torch.testing.assert_close(m(b.inputs, where=b.mask), out[b.mask])


def test_stimulus_stream_never_reads_the_instruction():
    task = GCOGLite()
    m = model(task).eval()
    b = task.batch(2, generator=torch.Generator().manual_seed(1))
    other = b.inputs.clone()
    other[:, task.grid_len :] = task.batch(2, generator=torch.Generator().manual_seed(2)).inputs[:, task.grid_len :]
    torch.testing.assert_close(m(other)[:, : task.grid_len], m(b.inputs)[:, : task.grid_len], atol=0, rtol=0)


def test_instruction_reads_the_grid_only_through_cross_attention():
    """With every cross-attention's output projection zeroed, the answer no longer depends on the grid."""
    task = GCOGLite()
    m = model(task).eval()
    b = task.batch(2, generator=torch.Generator().manual_seed(3))
    other = b.inputs.clone()
    other[:, : task.grid_len] = task.batch(2, generator=torch.Generator().manual_seed(4)).inputs[:, : task.grid_len]
    assert not torch.allclose(m(other)[:, -1], m(b.inputs)[:, -1])
    with torch.no_grad():
        for block in m.layers:
            block.cross.proj.weight.zero_()
            block.cross.proj.bias.zero_()
    torch.testing.assert_close(m(other)[:, -1], m(b.inputs)[:, -1], atol=0, rtol=0)


def test_probes_see_each_stream_and_the_cross_attention():
    task = GCOGLite()
    m = model(task, layers=1)
    ent = Entropy()
    with attnlab.attach(probes=[ent]):
        m(task.batch(2).inputs)
    assert sorted(ent.result()) == ["layers.0.attn", "layers.0.cross", "stimulus.0.attn"]


def test_trains_on_gcog_with_the_trainer():
    task = GCOGLite()
    r = train(task, model(task), steps=40, batch_size=16, lr=3e-3, eval_every=20, eval_batches=1, progress=False, threads=1)
    assert r.steps_done == 40 and r.train_loss[-1] < r.train_loss[0]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"split": 70}, r"split must leave instruction tokens before max_len, got split=70, max_len=65"),
        ({"dim": 30, "heads": 4}, r"dim must be divisible by heads, got dim=30, heads=4"),
        ({"layers": 0}, r"layers must be a positive int, got layers=0"),
    ],
)
def test_bad_options_raise(kw, match):
    task = GCOGLite()
    with pytest.raises(ValueError, match=match):
        TwoStream(task.vocab_size, **{"split": task.grid_len, "max_len": task.seq_len, **kw})


def test_inputs_shorter_than_the_stimulus_raise():
    with pytest.raises(
        ValueError, match=r"inputs must be \[batch, tokens\] token ids with split=32 < tokens <= max_len=65, got shape \(2, 10\)"
    ):
        TwoStream(21, split=32, max_len=65)(torch.zeros(2, 10, dtype=torch.long))


def test_objects_encoding_reads_feature_rows_and_keeps_the_streams_apart():
    task = GCOGLite(encoding="objects")
    m = model(task, input_dim=task.input_dim).eval()
    b, c = (task.batch(2, generator=torch.Generator().manual_seed(s)) for s in (5, 6))
    assert m(b.inputs).shape == (2, task.seq_len, task.vocab_size)
    other = b.inputs.clone()
    other[:, task.grid_len :] = c.inputs[:, task.grid_len :]
    torch.testing.assert_close(m(other)[:, : task.grid_len], m(b.inputs)[:, : task.grid_len], atol=0, rtol=0)
    r = train(task, m, steps=40, batch_size=16, lr=3e-3, eval_every=20, eval_batches=1, progress=False, threads=1)
    assert r.train_loss[-1] < r.train_loss[0]
    with pytest.raises(ValueError, match=r"inputs must be \[batch, tokens, 20\] floats .* got shape \(2, 33\)"):
        m(torch.zeros(2, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_dim must be a positive int or None, got input_dim=0"):
        model(task, input_dim=0)
