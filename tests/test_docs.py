"""The generated parts of the docs match the code."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_paper_table_is_current():
    spec = importlib.util.spec_from_file_location("papers_page", ROOT / "docs" / "papers.py")
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)
    assert page.render() == page.PAGE.read_text(), "docs/papers.md is out of date: run `python docs/papers.py`"


def test_support_matrix_is_current():
    spec = importlib.util.spec_from_file_location("support_page", ROOT / "docs" / "support.py")
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)
    assert page.render() == page.PAGE.read_text(), "docs/support.md is out of date: run `python docs/support.py`"
