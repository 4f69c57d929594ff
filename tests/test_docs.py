"""The generated parts of the docs match the code."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_paper_table_is_current():
    spec = importlib.util.spec_from_file_location("papers_page", ROOT / "docs" / "papers.py")
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)
    assert page.render() == page.PAGE.read_text(), "docs/papers.md is out of date: run `python docs/papers.py`"


def test_paper_citations_are_parsed_exactly():
    from attnlab.cli import _paper

    assert _paper("Paper 42: neighborhood attention on a 1-D, 2-D or 3-D grid.") == "42"
    assert _paper("Paper: 73 (σReparam), 68 (ReLU attention). See 3.") == "73, 68"
    assert _paper("Papers 5 and 57: induction heads") == "5, 57"
    assert _paper("no citation in 2 words") == ""
