"""Spans of one sequence: image tokens, text tokens, token ranges, words; a Span is positions wherever positions go."""

import pytest
import torch

from attnlab.core.spans import Span, Spans, check_span

IMG = 7
IDS = torch.tensor([[1, IMG, IMG, IMG, IMG, 20, 21, 22, 21]])


class _WordTokenizer:
    """Whitespace words to ids: 'the' -> 21, 'red cat' -> [20, 22]; enough to find words."""

    def __init__(self):
        self.vocab = {"red": 20, "the": 21, "cat": 22, "big": 23}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab[w] for w in text.split()]}

    def decode(self, ids):
        inv = {v: k for k, v in self.vocab.items()}
        return " ".join(inv.get(i, "?") for i in ids)


def test_image_and_text_partition_the_sequence():
    s = Spans(IDS, image_token_id=IMG)
    assert tuple(s.image) == (1, 2, 3, 4)
    assert tuple(s.text) == (0, 5, 6, 7, 8)
    assert s.image.length == s.text.length == 9


def test_token_range_is_inclusive_and_spec_strings_name_spans():
    s = Spans(IDS[0], image_token_id=IMG, tokenizer=_WordTokenizer())
    assert tuple(s["token 2..5"]) == (2, 3, 4, 5)
    assert s["image"] == s.image and s["text"] == s.text
    assert tuple(s["word:the"]) == (6,) and tuple(s["word:the#1"]) == (8,)
    assert tuple(s.word("cat")) == (7,)


def test_a_span_is_a_tuple_of_positions_and_prints_its_runs():
    span = Spans(IDS, image_token_id=IMG).text
    assert isinstance(span, tuple) and list(span) == [0, 5, 6, 7, 8]
    assert repr(span) == "Span('text', 0+5..8 of 9)"
    assert tuple(span.subset([1, 2])) == (5, 6) and tuple(span.subset(torch.tensor([True, False, False, False, True]))) == (0, 8)


@pytest.mark.parametrize("spec", ["token 3..9", "token 5..2", "token 40..41"])
def test_a_token_range_outside_the_sequence_is_refused(spec):
    with pytest.raises(ValueError, match="inside the sequence of 9 tokens"):
        Spans(IDS, image_token_id=IMG)[spec]


def test_a_span_with_positions_outside_its_sequence_is_refused():
    with pytest.raises(ValueError, match=r"outside the sequence of 4 tokens"):
        Span([2, 4], name="bad", length=4)
    with pytest.raises(ValueError, match=r"indices must lie in 0\.\.1"):
        Span([0, 1], name="two", length=4).subset([2])


def test_no_image_token_id_or_no_image_tokens_is_a_clear_error():
    with pytest.raises(ValueError, match="no image token id"):
        _ = Spans(IDS).image
    with pytest.raises(ValueError, match="has no image token"):
        _ = Spans(torch.tensor([1, 20, 21]), image_token_id=IMG).image
    assert tuple(Spans(IDS).text) == tuple(range(9))  # without an image, every token is text


def test_words_need_a_tokenizer_and_must_occur():
    with pytest.raises(ValueError, match="needs the tokenizer"):
        Spans(IDS, image_token_id=IMG).word("cat")
    s = Spans(IDS, image_token_id=IMG, tokenizer=_WordTokenizer())
    with pytest.raises(ValueError, match=r"'big' occurs 0 time\(s\).*reads '\? red the cat the'"):
        s.word("big")
    with pytest.raises(ValueError, match="wanted occurrence 2"):
        s["word:the#2"]


def test_unknown_span_names_and_batches_are_refused():
    with pytest.raises(ValueError, match="unknown span 'images'"):
        Spans(IDS, image_token_id=IMG)["images"]
    with pytest.raises(ValueError, match=r"one sequence, \[T\] or \[1, T\], got shape \[2, 9\]"):
        Spans(IDS.repeat(2, 1), image_token_id=IMG)


def test_check_span_refuses_a_span_of_another_input_only():
    span = Spans(IDS, image_token_id=IMG).image
    check_span(span, 9, "x")
    check_span([1, 2], 3, "x")  # plain positions are not checked here
    with pytest.raises(ValueError, match=r"knockout source: .* 9 tokens, the input has 12"):
        check_span(span, 12, "knockout source")
