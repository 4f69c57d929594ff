"""The ``attnlab`` command line.

Commands grow with the pillars (``scan``, ``edit``, ``bench``, ``train``, ``report``); today:
``attnlab list`` shows what the installed attnlab offers, and ``attnlab check`` runs every
backend against the reference on this machine.
"""

from __future__ import annotations

import inspect
import re
import sys
from enum import Enum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="attnlab: a laboratory for attention in transformers.")
console = Console()


class Category(str, Enum):
    backends = "backends"
    masks = "masks"
    mechanisms = "mechanisms"
    probes = "probes"


def _version(value: bool):
    if value:
        import attnlab

        console.print(f"attnlab {attnlab.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
):
    """attnlab: build, probe, edit and benchmark attention."""


def _first_line(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def _paper(text: str) -> str:
    """The PAPERS.md numbers a docstring cites (``Paper 42``, ``Paper: 73 (...), 68 (...)``)."""
    m = re.search(r"Papers?:?\s*(\d+)", text)
    if not m:
        return ""
    line = text[m.start() :].split("\n")[0]
    return ", ".join(dict.fromkeys(re.findall(r"(?<![\w.])(\d{1,2})(?![\w.])", line)))


def _call(name: str, fn) -> str:
    params = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.KEYWORD_ONLY and "*" not in params:
            params.append("*")
        params.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return f"{name}({', '.join(params)})"


def rows(category: Category) -> list[tuple[str, ...]]:
    """``(name, paper, what it is)`` for every entry of a category, read from the code itself.

    Mechanisms add their input layout and time and memory complexity.
    """
    from attnlab import mechanisms, probes
    from attnlab.core import backends, choose_backend, masks

    if category is Category.mechanisms:
        return [(e.name, e.paper, e.summary, e.layout, e.time, e.memory) for e in mechanisms.available()]
    if category is Category.backends:
        out = [(name, "", _first_line(type(b))) for name, b in backends.BACKENDS.items()]
        return [*out, ("auto", "", _first_line(choose_backend))]
    if category is Category.masks:
        out = []
        for name in masks.__all__:
            obj = getattr(masks, name)
            if isinstance(obj, masks.Mask):
                out.append((name, "", obj.description))
            elif callable(obj) and not isinstance(obj, type):
                out.append((_call(name, obj), _paper(inspect.getdoc(obj) or ""), _first_line(obj)))
        return out
    return [(name, _paper(inspect.getdoc(getattr(probes, name)) or ""), _first_line(getattr(probes, name))) for name in probes.__all__]


@app.command("list")
def list_(category: Annotated[Category, typer.Argument(help="What to list.")]):
    """List the backends, masks, mechanisms or probes this attnlab has, with the paper each comes from."""
    table = Table(title=f"attnlab {category.value}")
    for col in ("name", "paper", "what it is"):
        table.add_column(col, style="bold" if col == "name" else None)
    if category is Category.mechanisms:
        for col in ("input", "time", "memory"):
            table.add_column(col)
    for row in rows(category):
        table.add_row(*row)
    console.print(table)


@app.command()
def check(
    length: Annotated[int, typer.Option(min=1, max=4096, help="Sequence length of the check.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
):
    """Run every backend against the reference on this machine, forward and backward."""
    import torch

    from attnlab.core import attend
    from attnlab.core import masks as M

    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, length, 32, generator=g, requires_grad=True)
    k = torch.randn(2, 2, length, 32, generator=g, requires_grad=True)
    v = torch.randn(2, 2, length, 32, generator=g, requires_grad=True)
    cases = {"causal": M.causal, "sliding_window(64)": M.sliding_window(64), "prefix_lm(10)": M.prefix_lm(10)}
    table = Table(title=f"backends vs reference (L={length}, GQA 4/2, fp32)")
    for col in ("mask", "backend", "max |out diff|", "max |grad diff|", "ok"):
        table.add_column(col)
    ok_all = True
    for name, mask in cases.items():
        ref = attend(q, k, v, mask=mask, backend="reference")
        ref_g = torch.autograd.grad(ref.sum(), (q, k, v))
        for backend in ("sdpa", "blocked"):
            out = attend(q, k, v, mask=mask, backend=backend)
            grads = torch.autograd.grad(out.sum(), (q, k, v))
            d_out = (out - ref).abs().max().item()
            d_grad = max((a - b).abs().max().item() for a, b in zip(grads, ref_g))
            ok = d_out < 1e-5 and d_grad < 1e-4
            ok_all &= ok
            table.add_row(name, backend, f"{d_out:.1e}", f"{d_grad:.1e}", "yes" if ok else "[red]NO[/red]")
    console.print(table)
    if not ok_all:
        raise typer.Exit(1)


def main() -> None:
    """Entry point: user errors print one line and exit 1, without a traceback."""
    try:
        app()
    except (ValueError, TypeError, FileNotFoundError) as e:
        Console(stderr=True).print(f"[red]error:[/red] {e}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
