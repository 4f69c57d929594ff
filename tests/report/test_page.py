"""attnlab.report.page: one template and stylesheet for every kind, the JavaScript once, figure files, refusals."""

import pytest

from attnlab.report import figures as F
from attnlab.report.page import Report, Table, Text, check_formats
from tests.report.helpers import fetches, shown, specs


def small() -> Report:
    r = Report("Circuit: toy", meta=["tiny · 2 layers"])
    r.section("Heads").add(Text("Two heads."), F.heatmap("a", "score a", [[0.1, 0.9]], meaning="m"), Table([[1, 2]], ["x", "y"]))
    r.section("More").add(F.per_layer("b", "score b", [1.0, 2.0], meaning="m", reference=1.0))
    return r


def test_a_report_built_in_code_renders_its_sections_and_figures():
    html = small().html()
    text = shown(html)
    assert html.startswith("<!doctype html>") and "Circuit: toy" in text and "Two heads." in text and "score b" in text
    assert list(specs(html)) == ["a", "b"] and 'id="section-heads"' in html
    assert html.count("window.vegaEmbed=") == 1 and fetches(html) == []  # the JavaScript inlined once, nothing to fetch
    assert "<!doctype" not in small().html(standalone=False)


def test_every_kind_uses_the_one_stylesheet():
    from attnlab.report.page import _template

    css = _template()[1]
    page = Report("no figures", sections=[]).html()
    assert css in page and css in small().html() and "vegaEmbed" not in page  # no figure: no JavaScript


def test_figures_are_drawn_to_files_without_a_browser(tmp_path):
    paths = small().write_figures(tmp_path / "figures", ["png", "svg"])
    assert sorted(p.name for p in paths) == ["a.png", "a.svg", "b.png", "b.svg"]
    assert (tmp_path / "figures" / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "figures" / "b.svg").read_text().startswith("<svg")


def test_bad_formats_and_twice_named_figures_are_refused():
    assert check_formats(["PNG", " svg", "png"]) == ["png", "svg"]
    with pytest.raises(ValueError, match=r"unknown figure format 'pdf': choose from png, svg"):
        check_formats(["pdf"])
    r = small()
    r.section("Again").add(F.heatmap("a", "again", [[1.0]], meaning="m"))
    with pytest.raises(ValueError, match="two figures of the report 'Circuit: toy' are named 'a'"):
        r.html()
