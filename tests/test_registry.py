"""The registries: papers declared at registration, names across kinds, helpful errors."""

import importlib
import inspect
import re
from pathlib import Path

import pytest

import attnlab
from attnlab import registry
from attnlab.core import masks
from attnlab.registry import KINDS, Registry

ROOT = Path(__file__).resolve().parents[1]
REGISTRIES = ("mechanisms", "probes", "edits", "tasks", "operators")


def _cited(doc: str) -> set[str]:
    """Paper numbers a docstring's ``Paper:`` paragraph cites: titles in parentheses, code in
    double backquotes and defaults in brackets are not citations."""
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"Papers?\b", line)), None)
    if start is None:
        return set()
    para = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.strip() or re.match(r"[A-Z]\w*:", line):  # a blank line or the next section (Shapes:)
            break
        para.append(line)
    text = " ".join(para)
    for pattern in (r"\([^()]*\)", r"``.*?``", r"\[[^\]]*\]"):
        while re.search(pattern, text):
            text = re.sub(pattern, " ", text)
    return set(re.findall(r"(?<![\w.-])(\d{1,2})(?![\w.-])", text))


def _entries():
    for kind in REGISTRIES:
        reg = importlib.import_module(f"attnlab.{kind}").registry
        for name in reg.names():
            yield kind, name, reg.lookup(name)


def _table_rows() -> dict[str, str]:
    rows = {}
    for line in (ROOT / "docs" / "papers.md").read_text().splitlines():
        m = re.match(r"^\| (\d+) \| .*? \| .*? \| (.*?) \|$", line)
        if m:
            rows[m[1]] = m[2]
    return rows


@pytest.mark.parametrize(("kind", "name", "cls"), list(_entries()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_registered_class_declares_the_papers_its_docstring_cites(kind, name, cls):
    assert isinstance(cls.paper, str) and re.fullmatch(r"(\d{1,2}(, \d{1,2})*)?", cls.paper), f"{kind} {name}: paper={cls.paper!r}"
    declared = set(cls.paper.split(", ")) - {""}
    assert declared == _cited(inspect.getdoc(cls) or ""), f"{kind} {name}: paper={cls.paper!r} but its docstring's Paper: line differs"


@pytest.mark.parametrize(("kind", "name", "cls"), list(_entries()), ids=lambda x: x if isinstance(x, str) else "")
def test_docs_paper_table_lists_every_registered_class_under_its_papers(kind, name, cls):
    rows = _table_rows()
    for n in set(cls.paper.split(", ")) - {""}:
        assert f"{kind[:-1]} `{name}`" in rows[n], f"docs/papers.md row {n} does not list {kind[:-1]} {name}: run python docs/papers.py"


def test_mask_factories_declare_the_papers_their_docstrings_cite():
    for name in registry.names("masks"):
        obj = getattr(masks, name)
        if isinstance(obj, masks.Mask):
            continue
        declared = set(getattr(obj, "paper", "").split(", ")) - {""}
        assert declared == _cited(inspect.getdoc(obj) or ""), name


def test_cited_reads_only_citations():
    assert _cited("Paper: 42 (Neighborhood Attention 2).\nShapes: ``x [B, 3, C]``") == {"42"}
    assert _cited('Paper: baseline; ``attention="relu"`` is paper 68 (ReLU),\n``sigma_reparam`` paper 73 (σReparam).') == {"68", "73"}
    assert _cited("Paper: 67 (MULTI-LANE), summarise N tokens into S [S = 10].") == {"67"}
    assert _cited("Paper: 38 (DSF, 2024), as ``h_t = h_{t−1}``, EMA 0.999.") == {"38"}
    assert _cited("Papers 5 and 57: induction heads on 1-D grids") == {"5", "57"}
    assert _cited("no citation in 2 words") == set()


def test_register_needs_a_paper_in_the_one_format():
    reg = Registry("widget", "attnlab.mechanisms")
    with pytest.raises(TypeError, match="paper"):
        reg.register("w")
    with pytest.raises(ValueError, match=r"widget 'w': paper must be PAPERS.md numbers joined by ', '.*got paper='68,73'"):
        reg.register("w", paper="68,73")
    cls = reg.register("w", paper="68, 73")(type("W", (), {}))
    assert (cls.name, cls.paper) == ("w", "68, 73")


def test_names_lists_every_kind_and_available_gathers_them():
    everything = attnlab.available()
    assert tuple(everything) == KINDS
    assert "mha" in everything["mechanisms"] and "entropy" in everything["probes"] and "head_mask" in everything["edits"]
    assert "mqar" in everything["tasks"] and "reference" in everything["backends"] and "causal" in everything["masks"]
    assert "Mask" not in everything["masks"] and "EMPTY" not in everything["masks"]
    for kind, names in everything.items():
        assert names == sorted(names) == attnlab.names(kind)


def test_unknown_kind_suggests_the_closest():
    with pytest.raises(ValueError, match=r"unknown kind 'probe' \(did you mean 'probes'\?\): choose one of backends, edits"):
        attnlab.names("probe")


def test_an_option_close_to_a_valid_one_is_suggested():
    with pytest.raises(TypeError, match=r"no option 'causal' \(did you mean 'is_causal'\?\): its options are kv_heads, is_causal"):
        attnlab.mechanisms.get("mha", dim=8, heads=2, causal=True)
