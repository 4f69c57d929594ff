"""Paper 57: a toy multiple-choice task, the shape of the one circuit analysis at scale studied.

Lieberum et al. traced how Chinchilla answers multiple-choice questions: "correct letter" heads at
the final position attend to the letter of the right option and write that letter. The toy keeps
that structure with one token per word. A question names an item; four options list items, each
after its letter; exactly one option is the asked item; the answer is that option's letter:

    <s> which ? ring A book B ring C pen D cup answer :   → B

Items come from ``items`` words; the three wrong options are distinct items other than the asked
one, and the right option's slot is uniform over A..D. ``test`` asks items disjoint from
``train``'s (a fixed ``held_out`` fraction of the items), so a model must match, not memorise.

``extra`` has what a circuit analysis needs: ``answer`` (0..3), ``letter`` and ``wrong_letter``
(token ids: the right letter and one wrong one, for a logit difference), ``letter_pos [B, 4]`` and
``option_pos [B, 4]`` (where each letter and its item stand), ``end_pos``.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

from attnlab.tasks import IGNORE, Batch, Task, check_int, register, split_generator

__all__ = ["MultipleChoice"]

ITEMS = "ring book pen cup key hat lamp coin shoe bell fork map box car leaf drum kite rope sock vase".split()  # noqa: SIM905
LETTERS = ("A", "B", "C", "D")


@register("multiple_choice", paper="57")
class MultipleChoice(Task):
    """Answer "which ? x A a B b C c D d answer :" with the letter of the option equal to x.

    Paper: 57 (Does circuit analysis interpretability scale? Evidence from multiple choice
    capabilities in Chinchilla).
    Shapes: ``inputs, targets, mask [B, seq_len]`` (one target, at ``end_pos``); ``extra[k] [B]``
    for ``answer, letter, wrong_letter, end_pos``; ``extra["letter_pos"], extra["option_pos"] [B, 4]``.

    Args:
        items: how many of the 20 item words to use (default 20).
        held_out: fraction of items asked only in ``test`` (default 0.25).

    Attributes: ``itos`` (token id → word; 0 is ``<pad>``, 1 ``<s>``) and ``stoi``.

    Example:
        >>> task = MultipleChoice()
        >>> b = task.batch(1, "train", torch.Generator().manual_seed(0))
        >>> words = [task.itos[int(t)] for t in b.inputs[0]]
        >>> len(words), words[0], words[-2:], task.itos[int(b.targets[0, -1])] in LETTERS
        (14, '<s>', ['answer', ':'], True)
    """

    def __init__(self, *, items: int = 20, held_out: float = 0.25):
        self.items = ITEMS[: check_int("items", items, 5, len(ITEMS))]
        if isinstance(held_out, bool) or not isinstance(held_out, (int, float)) or not 0 < held_out < 1:
            raise ValueError(f"held_out must be a fraction in (0, 1) of the items, got held_out={held_out!r}")
        n_test = min(max(1, round(held_out * items)), items - 1)
        order = torch.randperm(items, generator=torch.Generator().manual_seed(0)).tolist()  # a fixed split
        self.asked = {"test": sorted(order[:n_test]), "train": sorted(order[n_test:])}
        self.itos = ["<pad>", "<s>", "which", "?", "answer", ":", *LETTERS, *self.items]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.vocab_size = len(self.itos)
        self.seq_len = 14  # <s> which ? x, 4 × (letter item), answer :
        self.held_out = float(held_out)

    def batch(self, n: int, split: str = "train", generator: torch.Generator | None = None) -> Batch:
        """``n`` questions whose asked item comes from ``split``'s items."""
        B = check_int("n", n, 1)
        rng = random.Random(int(torch.randint(2**62, (), generator=split_generator(generator, split, self.splits()))))
        inputs = torch.zeros(B, self.seq_len, dtype=torch.long)
        extra = {k: torch.zeros(B, dtype=torch.long) for k in ("answer", "letter", "wrong_letter", "end_pos")}
        extra["letter_pos"] = torch.arange(4, 12, 2).expand(B, 4).clone()  # (B, 4): A at 4, B at 6, ...
        extra["option_pos"] = extra["letter_pos"] + 1
        for b in range(B):
            asked = rng.choice(self.asked[split])
            others = rng.sample([i for i in range(len(self.items)) if i != asked], 3)
            answer = rng.randrange(4)
            options = [*others[:answer], asked, *others[answer:]]
            words = ["<s>", "which", "?", self.items[asked]]
            for letter, item in zip(LETTERS, options):
                words += [letter, self.items[item]]
            words += ["answer", ":"]
            inputs[b] = torch.tensor([self.stoi[w] for w in words])
            wrong = rng.choice([k for k in range(4) if k != answer])
            row = {
                "answer": answer,
                "letter": self.stoi[LETTERS[answer]],
                "wrong_letter": self.stoi[LETTERS[wrong]],
                "end_pos": len(words) - 1,
            }
            for k, v in row.items():
                extra[k][b] = v
        targets = torch.full_like(inputs, IGNORE)
        targets[:, -1] = extra["letter"]
        return Batch(inputs, targets, extra=extra)

    def logit_difference(self, logits: Tensor, batch: Batch) -> float:
        """Mean of ``logit(right letter) - logit(a wrong letter)`` at the end (``logits [B, T, V]``)."""
        rows = torch.arange(logits.shape[0])
        last = logits[rows, batch.extra["end_pos"]]  # (B, V)
        return float((last[rows, batch.extra["letter"]] - last[rows, batch.extra["wrong_letter"]]).mean())
