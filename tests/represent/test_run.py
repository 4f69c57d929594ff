"""attnlab represent: the result kind, its report, and the inputs it refuses (one class, wrong format, two tokenizers)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from attnlab import results
from attnlab.cli import app
from attnlab.represent import builtin, load_dataset, run_represent, tokenize_pairs
from tests.represent._models import CharTokenizer, llama


class ShiftedTokenizer(CharTokenizer):
    def __call__(self, text: str, **kw) -> dict:
        return {"input_ids": [2 + ord(c) % 90 for c in text] + [1]}


def _refused(r, out, match: str):
    assert r.exit_code == 1 and "error:" in r.output and match in " ".join(r.output.split()), r.output
    assert not out.exists()


@pytest.mark.slow
def test_cka_result_roundtrips_and_reports(tmp_path):
    model = llama()
    result = run_represent([model], [CharTokenizer()], builtin("lexical", 10), "cka", settings={"dataset": "lexical"})
    grid = result.grid
    assert len(grid) == len(grid[0]) == 3  # embed and two layers
    assert all(grid[i][i] == pytest.approx(1.0, abs=1e-9) for i in range(3))
    assert grid[0][1] == pytest.approx(grid[1][0], abs=1e-12)
    result.save(tmp_path / "results.json")
    back = results.load(tmp_path / "results.json")
    assert isinstance(back, results.RepresentResult) and back.grid == grid
    html = back.html()
    assert "linear CKA" in html and "represent.cka" in html


def test_two_models_with_different_tokenizers_are_refused_for_per_token_methods():
    model = llama()
    with pytest.raises(ValueError, match=r"tokenize example 0 differently .* need one tokenizer"):
        run_represent([model, model], [CharTokenizer(), ShiftedTokenizer()], builtin("lexical", 10), "cka", settings={})


def test_methods_refuse_the_wrong_dataset_or_model_count():
    model = llama()
    with pytest.raises(ValueError, match="align needs a paired dataset"):
        run_represent([model], [CharTokenizer()], builtin("lexical", 10), "align", settings={})
    with pytest.raises(ValueError, match="match compares two networks"):
        run_represent([model], [CharTokenizer()], builtin("lexical", 10), "match", settings={})
    with pytest.raises(ValueError, match="probe reads one model"):
        run_represent([model, model], [CharTokenizer()] * 2, builtin("lexical", 10), "probe", settings={})


def test_a_dataset_with_one_class_is_refused_before_any_model_loads(tmp_path):
    data = tmp_path / "one.jsonl"
    data.write_text("".join(json.dumps({"text": f"sentence {i}", "label": "yes"}) + "\n" for i in range(12)))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["represent", "--model", "no-such-model-is-loaded", "--dataset", str(data), "--out", str(out)])
    _refused(r, out, "concept 'label' has one class ('yes'): a probe needs at least two labels")


def test_malformed_and_paired_files_are_refused_plainly(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{"a": "x", "b": "y"}\n')
    with pytest.raises(ValueError, match="is a paired record in a labelled file"):
        load_dataset(bad)
    paired = tmp_path / "paired.jsonl"
    paired.write_text('{"a": "1 2", "b": "one two"}\n')
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["represent", "--dataset", str(paired), "--method", "cka", "--out", str(out)])
    _refused(r, out, "cka needs a labelled dataset")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"text": "café", "label": 1}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.jsonl is not UTF-8 text \(byte 0xe9 at offset 13\): convert it"):
        load_dataset(latin1)


def test_paired_records_split_into_their_two_groups():
    from tests.test_matrix import _tokenizer

    tok = _tokenizer(False)
    seqs, spans_a, spans_b = tokenize_pairs(tok, [{"a": "3 1 4", "b": "three one four"}])
    ids = seqs[0]
    assert tok.decode(ids[spans_a[0][0] : spans_a[0][1]]) == "3 1 4"
    assert tok.decode(ids[spans_b[0][0] : spans_b[0][1]]).strip() == "three one four"
    assert spans_a[0][1] == spans_b[0][0] and spans_a[0][0] == 1  # after <s>, groups back to back


@pytest.mark.slow
def test_align_and_match_results_report():
    model = llama()
    align = run_represent([model], [CharTokenizer()], builtin("paired", 10), "align", settings={"dataset": "paired"})
    assert [r["layer"] for r in align.table] == [0, 1, 2] and align.table[-1]["consecutive"] is None
    assert "represent.align" in align.html()
    match = run_represent(
        [model, llama(1)], [CharTokenizer()] * 2, builtin("lexical", 10), "match", settings={"dataset": "lexical"}, groups=4
    )
    assert all(-1 <= r["matched"] <= r["best"] <= 1 for r in match.table)
    assert "represent.match" in match.html()


def test_cka_in_several_passes_equals_one_pass():
    from attnlab.represent.run import cka_grid
    from attnlab.represent.stream import layer_points

    model = llama()
    seqs = [CharTokenizer()(t)["input_ids"] for t in builtin("lexical", 10).texts()[:12]]
    one, meta_one = cka_grid([model], seqs, batch_size=4)
    width = model.config.hidden_size
    streams = len(layer_points(model))
    budget = 3 * width * width * 8  # one off-diagonal pair and its two diagonals a pass
    split, meta_split = cka_grid([model], seqs, batch_size=4, max_bytes=budget)
    assert meta_one["passes"] == 1 and meta_split["passes"] == 3  # [(0,0),(0,1)], [(0,2)], [(1,1),(1,2),(2,2)]
    assert meta_split["tokens"] == meta_one["tokens"] == sum(len(s) for s in seqs)
    np.testing.assert_allclose(split, one, atol=1e-12)
    two, meta_two = cka_grid([model, model], seqs, batch_size=4, max_bytes=budget)
    assert meta_two["passes"] == streams * streams  # across models every pair is off the diagonal
    np.testing.assert_allclose(two, one, atol=1e-9)


def test_a_memory_below_one_mib_is_refused(tmp_path):
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["represent", "--method", "cka", "--memory", "0", "--out", str(out)])
    _refused(r, out, "--memory takes MiB")
