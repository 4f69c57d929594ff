"""Paper 6: gCOG-lite, a small version of gCOG's grid + operator-tree reasoning and its OOD splits.

gCOG (Ito et al. 2024) shows a grid of coloured letters and an instruction built from operators;
the model answers with one token. Here the grid is ``grid × grid`` cells, each cell two tokens
(colour, letter, or ``EMPTY EMPTY``), row-major; the instruction is a boolean operator tree in
prefix notation: leaves ``exist <colour> <letter>`` (is there such an object?), internal nodes
``and``/``or`` (a full binary tree of the given depth; depth 0 is one ``exist``). The sequence is

    [grid: 2·grid² tokens] SEP [instruction] PAD … PAD QUERY      target at QUERY: TRUE / FALSE

Generation is top-down, gCOG-style: the answer is drawn (balanced), each node's value is chosen
to produce it, a true leaf puts its object on the grid, a false leaf puts a near miss (its colour
or its letter changed, gCOG's one-attribute flip), then random distractor objects are added that
never satisfy a false leaf. The target is then evaluated on the grid.

Splits, as in gCOG:

- ``train`` / ``test``: depth ``0…train_depth``, ``train_distractors`` distractors, and never a
  held-out (colour, letter) combination, neither in the instruction nor on the grid;
- ``distractor``: as train, with ``test_distractors`` (more) distractors;
- ``systematic``: as train, but every leaf asks about a held-out combination (the combinations
  with ``(colour + letter) mod 4 = 0``: every colour and letter is seen, the pairings are new);
- ``productive``: deeper trees, depth ``train_depth+1 … productive_depth``.

Encodings. ``encoding="tokens"`` (the default) spells every object as two tokens, as above, so a
model must first bind each colour to the letter beside it. gCOG itself gives the model one input
vector per grid cell (its colour and its shape) and one per operator node (the operator and the
object it selects): ``encoding="objects"`` does the same. Its ``inputs`` are float
``[B, seq_len, input_dim]``: one row per grid cell (kind ``object`` with a one-hot colour and a
one-hot letter, or kind ``empty``), then ``SEP``, one row per instruction node (``and``, ``or``,
or ``exist`` with the colour and letter it asks about), ``PAD`` rows and ``QUERY``; a model reads
them through a linear layer (:class:`~attnlab.models.tiny.TinyTransformer`'s ``input_dim``). The
examples, answers and splits are the same in both encodings for the same generator.

gCOG's other operators (get colour / shape / location, if-then-else) are left out.
"""

from __future__ import annotations

import random

import torch

from attnlab.tasks import IGNORE, Batch, Task, check_int, register, split_generator

__all__ = ["GCOGLite"]

_SPLITS = ("train", "test", "distractor", "systematic", "productive")
SPECIALS = ("<pad>", "<sep>", "<query>", "false", "true", "empty", "and", "or", "exist")
KINDS = ("<pad>", "<sep>", "<query>", "empty", "object", "and", "or", "exist")  # of a row in the objects encoding
_KIND = {k: i for i, k in enumerate(KINDS)}
ENCODINGS = ("tokens", "objects")


@register("gcog_lite", paper="6")
class GCOGLite(Task):
    """Answer a boolean ``exist``/``and``/``or`` instruction about a grid of coloured letters.

    Paper: 6 (On the generalization capacity of neural networks during generic multimodal reasoning).
    Shapes: ``inputs [B, seq_len]`` token ids (``[B, seq_len, input_dim]`` float with
    ``encoding="objects"``), ``targets, mask [B, seq_len]`` (one target, at the last position);
    ``extra["grid"], extra["instruction"] [B, seq_len]`` bool (where each input stream is, for
    cross-attention models), ``extra["depth"], extra["objects"] [B]``, ``extra["answer"] [B]`` bool.

    Args:
        grid: side of the square grid (default 4).
        colours: colours (default 4; gCOG: 10).
        letters: letters (default 8; gCOG: 26).
        train_depth: deepest tree in train, distractor and systematic (default 1).
        productive_depth: deepest tree in ``productive`` (default 3).
        train_distractors: distractor objects outside ``distractor`` (default 1).
        test_distractors: distractor objects in ``distractor`` (default 6).
        encoding: ``"tokens"`` (two tokens per object) or ``"objects"`` (one feature row per grid
            cell and per instruction node, as gCOG; see the module docstring).

    Attributes: ``itos``/``stoi`` (the vocabulary; ``vocab_size`` is also the width of the
    answer logits in both encodings), ``held_out`` (the held-out (colour, letter) index pairs),
    ``grid_len`` (stimulus positions at the start of ``inputs``: 2 per cell, or 1 with
    ``objects``), ``input_dim`` (the feature width with ``objects``, else None).

    Example:
        >>> task = GCOGLite()
        >>> b = task.batch(2, "productive", torch.Generator().manual_seed(0))
        >>> b.inputs.shape, [task.itos[int(t)] in ("true", "false") for t in b.targets[:, -1]]
        (torch.Size([2, 65]), [True, True])
    """

    def __init__(
        self,
        *,
        grid: int = 4,
        colours: int = 4,
        letters: int = 8,
        train_depth: int = 1,
        productive_depth: int = 3,
        train_distractors: int = 1,
        test_distractors: int = 6,
        encoding: str = "tokens",
    ):
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got encoding={encoding!r}")
        self.encoding = encoding
        self.grid, self.colours, self.letters = (
            check_int("grid", grid, 2),
            check_int("colours", colours, 2),
            check_int("letters", letters, 4),
        )
        self.train_depth = check_int("train_depth", train_depth, 0)
        self.productive_depth = check_int("productive_depth", productive_depth, train_depth + 1)
        self.train_distractors = check_int("train_distractors", train_distractors, 0)
        cells = grid * grid
        check_int("test_distractors", test_distractors, train_distractors + 1, cells - 2**train_depth)
        self.test_distractors = test_distractors
        if 2**productive_depth + train_distractors > cells:
            raise ValueError(
                f"a depth-{productive_depth} tree needs {2**productive_depth} objects plus {train_distractors} "
                f"distractors, more than the {cells} cells: productive_depth must be in [{train_depth + 1}, "
                f"{(cells - train_distractors).bit_length() - 1}] or the grid larger"
            )
        combos = [(c, l) for c in range(colours) for l in range(letters)]
        self.held_out = [(c, l) for c, l in combos if (c + l) % 4 == 0]
        self.seen = [(c, l) for c, l in combos if (c + l) % 4]
        if len(self.held_out) < 2**train_depth or len(self.seen) < 2**productive_depth:
            raise ValueError(f"colours={colours} × letters={letters} has too few combinations for trees of depth {productive_depth}")
        self.itos = [*SPECIALS, *(f"colour{c}" for c in range(colours)), *(f"letter{chr(65 + l)}" for l in range(letters))]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.vocab_size = len(self.itos)
        objects = encoding == "objects"
        self.grid_len = cells if objects else 2 * cells
        nodes = 2 ** (productive_depth + 1) - 1  # a full tree's operators and leaves
        self.seq_len = self.grid_len + 1 + (nodes if objects else 4 * 2**productive_depth - 1) + 1
        self.input_dim = len(KINDS) + colours + letters if objects else None

    def splits(self) -> tuple[str, ...]:
        return _SPLITS

    def _tokens(self, c: int, l: int) -> list[int]:
        return [len(SPECIALS) + c, len(SPECIALS) + self.colours + l]

    def _tree(self, rng: random.Random, depth: int, want: bool, leaves: list[bool]) -> list[str]:
        """A prefix tree of ``and``/``or`` whose leaves (values appended to ``leaves``) make ``want``."""
        if depth == 0:
            leaves.append(want)
            return ["exist"]
        op = rng.choice(("and", "or"))
        if op == "and":
            kids = (True, True) if want else rng.choice(((False, True), (True, False), (False, False)))
        else:
            kids = rng.choice(((True, False), (False, True), (True, True))) if want else (False, False)
        return [op, *self._tree(rng, depth - 1, kids[0], leaves), *self._tree(rng, depth - 1, kids[1], leaves)]

    def _example(self, rng: random.Random, split: str) -> tuple[list[int], list[int], bool, int, int]:
        depth = rng.randint(self.train_depth + 1, self.productive_depth) if split == "productive" else rng.randint(0, self.train_depth)
        distractors = self.test_distractors if split == "distractor" else self.train_distractors
        leaves: list[bool] = []
        ops = self._tree(rng, depth, rng.random() < 0.5, leaves)
        combos = rng.sample(self.held_out if split == "systematic" else self.seen, len(leaves))
        allowed = set(self.seen) | (set(self.held_out) if split == "systematic" else set())
        banned = {combo for combo, true in zip(combos, leaves) if not true}  # must stay absent
        pool = sorted(allowed - banned)
        objects = []
        for (c, l), true in zip(combos, leaves):
            if true:
                objects.append((c, l))
                continue
            near = [(c, x) for x in range(self.letters)] + [(x, l) for x in range(self.colours)]
            near = [o for o in near if o in allowed and o not in banned]  # one attribute flipped
            objects.append(rng.choice(near) if near else rng.choice(pool))
        objects += [rng.choice(pool) for _ in range(distractors)]
        cells = self.grid * self.grid
        grid = [self.stoi["empty"]] * (2 * cells)  # two tokens per cell
        for cell, (c, l) in zip(rng.sample(range(cells), len(objects)), objects):
            grid[2 * cell : 2 * cell + 2] = self._tokens(c, l)
        instruction, leaf = [], iter(combos)
        for op in ops:
            instruction += [self.stoi[op], *(self._tokens(*next(leaf)) if op == "exist" else [])]
        return grid, instruction, self._evaluate(instruction, set(objects)), depth, len(objects)

    def _evaluate(self, instruction: list[int], objects: set[tuple[int, int]]) -> bool:
        """The value of a prefix instruction on a set of (colour, letter) objects."""
        it = iter(instruction)
        base = len(SPECIALS)

        def node() -> bool:
            op = self.itos[next(it)]
            if op == "exist":
                return (next(it) - base, next(it) - base - self.colours) in objects
            a, b = node(), node()
            return (a and b) if op == "and" else (a or b)

        return node()

    def _rows(self, grid: list[int], instruction: list[int]) -> list[list[int]]:
        """The objects encoding of one example: the active features of each of its ``seq_len`` rows."""
        base = len(SPECIALS)

        def row(op: str, colour: int | None = None, letter: int | None = None) -> list[int]:
            if colour is None:
                return [_KIND[op]]
            return [_KIND[op], len(KINDS) + colour - base, len(KINDS) + letter - base]  # letter ids follow colour ids

        rows = [row("empty") if c == self.stoi["empty"] else row("object", c, l) for c, l in zip(grid[::2], grid[1::2])]
        rows.append(row("<sep>"))
        it = iter(instruction)
        for t in it:
            op = self.itos[t]
            rows.append(row(op, next(it), next(it)) if op == "exist" else row(op))
        return rows + [row("<pad>")] * (self.seq_len - len(rows) - 1) + [row("<query>")]

    def batch(self, n: int, split: str = "train", generator: torch.Generator | None = None) -> Batch:
        """``n`` (grid, instruction, answer) examples of ``split`` (see :meth:`splits`)."""
        B, T = check_int("n", n, 1), self.seq_len
        rng = random.Random(int(torch.randint(2**62, (), generator=split_generator(generator, split, self.splits()))))
        objects_encoding = self.encoding == "objects"
        if objects_encoding:
            inputs, hot = torch.zeros(B, T, self.input_dim), []  # hot: (example, row, feature) of every 1
        else:
            inputs = torch.full((B, T), self.stoi["<pad>"], dtype=torch.long)
            inputs[:, self.grid_len], inputs[:, -1] = self.stoi["<sep>"], self.stoi["<query>"]
        instruction_mask = torch.zeros(B, T, dtype=torch.bool)
        answer, depth, objects = torch.zeros(B, dtype=torch.bool), torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)
        start = self.grid_len + 1
        for b in range(B):
            grid, instruction, answer[b], depth[b], objects[b] = self._example(rng, split)
            if objects_encoding:
                hot += [(b, t, f) for t, active in enumerate(self._rows(grid, instruction)) for f in active]
                used = len(instruction) - 2 * instruction.count(self.stoi["exist"])  # one row per node
            else:
                inputs[b, : self.grid_len] = torch.tensor(grid)
                inputs[b, start : start + len(instruction)] = torch.tensor(instruction)
                used = len(instruction)
            instruction_mask[b, start : start + used] = True
        if objects_encoding:
            inputs[tuple(torch.tensor(hot).T)] = 1.0  # one scatter, not a write per row
        targets = torch.full((B, T), IGNORE, dtype=torch.long)
        targets[:, -1] = torch.where(answer, self.stoi["true"], self.stoi["false"])
        grid_mask = torch.zeros(B, T, dtype=torch.bool)
        grid_mask[:, : self.grid_len] = True
        extra = {"grid": grid_mask, "instruction": instruction_mask, "depth": depth, "objects": objects, "answer": answer}
        return Batch(inputs, targets, extra=extra)
