"""Paper 6: gCOG-lite answers, read back by an independent parser, and its four OOD splits."""

import pytest
import torch

from attnlab import tasks
from attnlab.tasks import IGNORE
from attnlab.tasks.gcog_lite import GCOGLite


def _g(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def task():
    return GCOGLite()


def _read(task, row):
    """Words of one sequence → (set of (colour, letter) objects, instruction words, depth)."""
    words = [task.itos[int(t)] for t in row]
    cells = [words[i : i + 2] for i in range(0, task.grid_len, 2)]
    objects = {(c, l) for c, l in cells if c != "empty"}
    assert all((c == "empty") == (l == "empty") for c, l in cells)
    sep = words.index("<sep>")
    instruction = [w for w in words[sep + 1 : -1] if w != "<pad>"]
    return objects, instruction, words


def _truth(instruction, objects):
    """Evaluate the prefix instruction by recursion over a word list."""

    def node(i):
        if instruction[i] == "exist":
            return (instruction[i + 1], instruction[i + 2]) in objects, i + 3
        a, j = node(i + 1)
        b, k = node(j)
        return (a and b) if instruction[i] == "and" else (a or b), k

    value, end = node(0)
    assert end == len(instruction)
    return value


def _depth(instruction):
    leaves = instruction.count("exist")
    return leaves.bit_length() - 1


@pytest.mark.parametrize("split", GCOGLite().splits())
def test_gcog_same_seed_same_batch_other_seed_other_batch(task, split):
    a, b, c = (task.batch(8, split, _g(s)) for s in (0, 0, 1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize("split", GCOGLite().splits())
def test_gcog_answers_are_the_instruction_evaluated_on_the_grid(task, split):
    b = task.batch(128, split, _g(0))
    for r in range(128):
        objects, instruction, words = _read(task, b.inputs[r])
        answer = words[-1] == "<query>" and task.itos[int(b.targets[r, -1])]
        assert answer == ("true" if _truth(instruction, objects) else "false")
        assert (b.targets[r, :-1] == IGNORE).all()
        assert len(objects) <= int(b.extra["objects"][r])  # distractors may repeat an object
        assert int(b.extra["depth"][r]) == _depth(instruction)
    assert 0.35 < b.extra["answer"].float().mean() < 0.65  # balanced answers


def test_gcog_tiny_hand_checked_example():
    task = GCOGLite(grid=2, colours=2, letters=4, train_depth=0, productive_depth=1, train_distractors=0, test_distractors=1)
    assert task.seq_len == 8 + 1 + 7 + 1
    b = task.batch(32, "train", _g(0))
    for r in range(32):
        objects, instruction, _ = _read(task, b.inputs[r])
        assert instruction[0] == "exist" and len(instruction) == 3 and len(objects) == 1  # the object or a near miss
        (c, l), asked = next(iter(objects)), tuple(instruction[1:])
        assert (c, l) == asked or (c == asked[0]) != (l == asked[1])  # a near miss differs in one attribute
        assert task.itos[int(b.targets[r, -1])] == ("true" if (c, l) == asked else "false")


def test_gcog_splits_differ_as_gcog_defines(task):
    def combos(batch, leaves_only):
        out = set()
        for row in batch.inputs:
            objects, instruction, _ = _read(task, row)
            out |= {(instruction[i + 1], instruction[i + 2]) for i, w in enumerate(instruction) if w == "exist"}
            if not leaves_only:
                out |= objects
        return out

    held = {(f"colour{c}", f"letter{chr(65 + l)}") for c, l in task.held_out}
    train = task.batch(512, "train", _g(0))
    assert combos(train, leaves_only=False).isdisjoint(held)  # held-out pairings never seen in training
    systematic = task.batch(256, "systematic", _g(0))
    assert combos(systematic, leaves_only=True) <= held
    assert {c for c, _ in held} == {f"colour{c}" for c in range(4)} and len({l for _, l in held}) == 8  # parts all seen
    assert train.extra["depth"].max() == 1 and task.batch(256, "productive", _g(0)).extra["depth"].min() == 2
    assert train.extra["objects"].max() == 2 + 1
    distractor = task.batch(64, "distractor", _g(0))
    assert (distractor.extra["objects"] - 2 ** distractor.extra["depth"] == 6).all()  # one object per leaf, 6 more


def test_gcog_streams_are_marked_for_cross_attention_models(task):
    b = task.batch(4, "productive", _g(0))
    assert b.extra["grid"][:, : task.grid_len].all() and b.extra["grid"].sum() == 4 * task.grid_len
    for r in range(4):
        words = [task.itos[int(t)] for t, m in zip(b.inputs[r], b.extra["instruction"][r]) if m]
        assert words[0] in ("and", "or", "exist") and "<pad>" not in words and "<sep>" not in words


def test_gcog_metric_counts_only_the_answer(task):
    b = task.batch(16, "train", _g(0))
    V = task.vocab_size
    logits = torch.nn.functional.one_hot(b.inputs, V).float()  # echo the input: never an answer token at QUERY
    assert task.metric(logits, b) == 0.0
    logits[:, -1] = torch.nn.functional.one_hot(b.targets[:, -1], V).float()
    assert task.metric(logits, b) == 1.0


def test_gcog_is_registered():
    assert tasks.get("gcog_lite").paper == "6"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"productive_depth": 1}, r"productive_depth must be an integer >= 2"),
        ({"productive_depth": 4}, r"productive_depth must be in \[2, 3\]"),
        ({"test_distractors": 1}, r"test_distractors must be an integer in \[2, 14\]"),
        ({"grid": 1}, r"grid must be an integer >= 2"),
    ],
)
def test_gcog_bad_options_name_the_valid_range(options, match):
    with pytest.raises(ValueError, match=match):
        GCOGLite(**options)


KINDS = ["<pad>", "<sep>", "<query>", "empty", "object", "and", "or", "exist"]  # the row kinds, in their order


def _read_rows(task, row):
    """Feature rows of one ``encoding="objects"`` sequence → (objects, instruction words), read back row by row."""
    words = []
    for features in row:
        assert set(features.tolist()) <= {0.0, 1.0}
        on = features.nonzero().flatten().tolist()
        kind = KINDS[on[0]]
        if kind in ("object", "exist"):
            assert len(on) == 3  # a kind, a colour, a letter
            colour, letter = on[1] - len(KINDS), on[2] - len(KINDS) - task.colours
            assert 0 <= colour < task.colours and 0 <= letter < task.letters
            words.append([kind, f"colour{colour}", f"letter{chr(65 + letter)}"])
        else:
            assert len(on) == 1
            words.append([kind])
    cells, rest = words[: task.grid_len], words[task.grid_len :]
    assert all(w[0] in ("object", "empty") for w in cells) and rest[0] == ["<sep>"] and rest[-1] == ["<query>"]
    objects = {(w[1], w[2]) for w in cells if w[0] == "object"}
    instruction = [x for w in rest[1:-1] if w != ["<pad>"] for x in w]
    return objects, instruction


@pytest.mark.parametrize("split", GCOGLite().splits())
def test_gcog_objects_encoding_gives_the_same_examples_one_row_per_cell_and_node(split):
    tokens, rows = GCOGLite(), GCOGLite(encoding="objects")
    assert (rows.grid_len, rows.seq_len, rows.input_dim) == (16, 16 + 1 + 15 + 1, 8 + 4 + 8) and tokens.input_dim is None
    a, b = tokens.batch(64, split, _g(0)), rows.batch(64, split, _g(0))
    assert b.inputs.shape == (64, rows.seq_len, rows.input_dim) and b.inputs.dtype == torch.float32
    torch.testing.assert_close(a.targets[:, -1], b.targets[:, -1])
    for r in range(64):
        objects, instruction, _ = _read(tokens, a.inputs[r])
        assert _read_rows(rows, b.inputs[r]) == (objects, instruction)
        marked = b.extra["instruction"][r].nonzero().flatten().tolist()
        assert marked == list(range(rows.grid_len + 1, rows.grid_len + 1 + len(instruction) - 2 * instruction.count("exist")))
    assert b.extra["grid"][:, : rows.grid_len].all() and b.extra["grid"].sum() == 64 * rows.grid_len


def test_gcog_unknown_encoding_names_the_choices():
    with pytest.raises(ValueError, match=r"encoding must be one of \('tokens', 'objects'\), got encoding='pixels'"):
        GCOGLite(encoding="pixels")
