"""Regenerate the *today* column of docs/papers.md from the code itself.

Every mechanism, probe, edit, task, mask and operator declares its paper where it registers (``paper=``), and
every reproduction script in bench/repro/ and training recipe in src/attnlab/train/ cites its paper in its
docstring's first line; this script collects them per paper number and rewrites the table. ``tests/test_docs.py`` fails when
the page is out of date.

Usage: python docs/papers.py
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "papers.md"
ROW = re.compile(r"^\| (\d+) \| (.*?) \| (.*?) \| (.*?) \|$")


def _numbers(text: str) -> list[str]:
    return re.findall(r"(?<![\w.])(\d{1,2})(?![\w.])", text)


def entries() -> dict[str, list[str]]:
    """``{paper number: ["mechanism `mha`", ..., "repro `bench/repro/x.py`"]}``."""
    from attnlab.cli import Category, rows

    out: dict[str, list[str]] = {}
    for kind in ("mechanism", "probe", "edit", "task", "mask", "operator"):
        for row in rows(Category(kind + "s")):
            name = row[0].split("(")[0]
            for n in _numbers(row[1]):
                out.setdefault(n, []).append(f"{kind} `{name}`")
    for script in sorted((ROOT / "bench" / "repro").glob("*.py")):
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
        m = re.match(r"Papers? (\d{1,2}(?:(?:, | and )\d{1,2})*)", doc)
        for n in _numbers(m.group(1)) if m else []:
            out.setdefault(n, []).append(f"repro `{script.stem}`")
    for module in sorted((ROOT / "src" / "attnlab" / "train").glob("*.py")):  # training recipes cite theirs the same way
        doc = ast.get_docstring(ast.parse(module.read_text())) or ""
        m = re.match(r"Papers? (\d{1,2}(?:(?:, | and )\d{1,2})*)", doc)
        for n in _numbers(m.group(1)) if m else []:
            out.setdefault(n, []).append(f"recipe `attnlab.train.{module.stem}`")
    return out


def render() -> str:
    """The page with its table's *today* column recomputed."""
    found = entries()
    lines = []
    for line in PAGE.read_text().splitlines():
        m = ROW.match(line)
        if m:
            n, title, kind, _ = m.groups()
            line = f"| {n} | {title} | {kind} | {', '.join(dict.fromkeys(found.get(n, [])))} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    PAGE.write_text(render())
    sys.stdout.write(f"wrote {PAGE}\n")
