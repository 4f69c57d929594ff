"""The ``attnlab`` command line.

- ``attnlab scan``: probe a pretrained model's attention; writes results.json and report.html.
- ``attnlab report results.json``: re-render a report from saved results.
- ``attnlab list backends|masks|mechanisms|probes``: what the installed attnlab offers.
- ``attnlab check``: every backend against the reference on this machine.

User errors print one line and exit with status 1 (2 for bad command-line syntax), never a
traceback, and leave no half-written output.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from attnlab.scanner import DEFAULT_PROBES

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


@app.command()
def scan(
    model: Annotated[
        str, typer.Option(help="Embedded name (smollm2-135m, minilm-l6), a local HF model directory or a .gguf file.")
    ] = "smollm2-135m",
    text: Annotated[Path | None, typer.Option(help="A UTF-8 text file to scan (one input).")] = None,
    prompts: Annotated[Path | None, typer.Option(help='A JSONL file of inputs: one {"text": ...} per line.')] = None,
    synthetic: Annotated[
        list[str] | None,
        typer.Option(
            help="Synthetic inputs: needle (retrieval trials), repeated (random tokens twice, for the head detectors). Repeat the option for both."
        ),
    ] = None,
    max_len: Annotated[
        int | None,
        typer.Option(min=2, help="Longest input in tokens (default: 1024 for the sample text, else the model's trained positions)."),
    ] = None,
    truncate: Annotated[bool, typer.Option(help="Cut inputs longer than --max-len instead of refusing them.")] = False,
    allow_extrapolation: Annotated[
        bool, typer.Option(help="Allow --max-len beyond the positions the model was trained on (memory/speed measurement).")
    ] = False,
    probes: Annotated[str, typer.Option(help="Comma-separated probes (attnlab list probes).")] = ",".join(DEFAULT_PROBES),
    needle_lengths: Annotated[str, typer.Option(help="Needle trial lengths in tokens, comma-separated.")] = "512,768",
    out: Annotated[Path, typer.Option(help="Output directory for results.json and report.html.")] = Path("attnlab-scan"),
    backend: Annotated[str, typer.Option(help="Attention backend: auto, reference, sdpa, blocked, flex.")] = "auto",
):
    """Probe a pretrained model's attention (sinks, entropy, head patterns, extreme tokens, layer importance, retrieval heads).

    With no options it scans the embedded SmolLM2-135M on 1,024 tokens of The Tempest (shipped with
    attnlab), plus repeated random tokens and needle-in-a-haystack trials.
    """
    from attnlab.probes import names as probe_registry
    from attnlab.scanner import scan as run_scan

    probe_names = [p.strip() for p in probes.split(",") if p.strip()]
    for p in probe_names:
        if p not in probe_registry():
            raise ValueError(f"unknown probe {p!r}: choose from {', '.join(probe_registry())}")
    kinds = set(synthetic or [])
    for k in kinds:
        if k not in ("needle", "repeated"):
            raise ValueError(f"unknown synthetic input {k!r}: choose needle or repeated")
    lengths = _ints(needle_lengths, "--needle-lengths")
    texts = _read_inputs(text, prompts)
    default_sample = not texts and not kinds
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a directory (it is created if missing)")
    from attnlab.models.hf import load

    with console.status(f"loading {model}"):
        m, tok = load(model)
    if default_sample:
        from attnlab.data import sample_text

        texts = [sample_text()]
        max_len, truncate = max_len or 1024, True  # the built-in sample is cut to a chosen length
        kinds = {"needle", "repeated"}
    if not texts and "retrieval" not in probe_names and kinds == {"needle"}:
        probe_names.append("retrieval")
    if "needle" not in kinds and "retrieval" in probe_names and not default_sample:
        probe_names.remove("retrieval")
    settings = {
        "model": model,
        "text": str(text) if text else None,
        "prompts": str(prompts) if prompts else None,
        "synthetic": sorted(kinds),
        "sample_text": default_sample,
    }
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("scanning", total=None)

        def progress(what, done, total):
            bar.update(task, description=what, completed=done, total=total or None)

        result = run_scan(
            m,
            tok,
            texts,
            probes=probe_names,
            repeated="repeated" in kinds,
            needle_lengths=lengths,
            max_len=max_len,
            truncate=truncate,
            allow_extrapolation=allow_extrapolation,
            backend=backend,
            progress=progress,
            settings=settings,
        )
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "results.json")
    result.report(out / "report.html")
    for probe, f in result.findings.items():
        for note in f["notes"]:
            console.print(f"[bold]{probe}[/bold]: {note}", highlight=False)
    console.print(f"wrote {out / 'results.json'} and {out / 'report.html'} ({result.meta['wall_s']} s)")


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="A results.json written by attnlab scan.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the HTML (default: report.html beside the results).")] = None,
):
    """Re-render the HTML report of a saved scan."""
    from attnlab.scanner import ScanResult

    result = ScanResult.load(results)
    path = result.report(out or results.with_name("report.html"))
    console.print(f"wrote {path}")


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise ValueError(f"{option} takes comma-separated integers, got {text!r}") from e
    if not values or min(values) < 1:
        raise ValueError(f"{option} takes positive integers, got {text!r}")
    return values


def _read_inputs(text: Path | None, prompts: Path | None) -> list[str]:
    """Texts from --text and --prompts, with errors that say what is wrong with the file."""
    out = []
    if text is not None:
        out.append(_read_utf8(text))
        if not out[-1].strip():
            raise ValueError(f"{text} is empty: give a file with some text")
    if prompts is not None:
        for n, line in enumerate(_read_utf8(prompts).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'{prompts} line {n} is not JSON ({e.msg}): each line must be {{"text": "..."}}') from e
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
                raise ValueError(f'{prompts} line {n} has no non-empty "text" field: each line must be {{"text": "..."}}')
            out.append(row["text"])
        if len(out) == (1 if text is not None else 0):
            raise ValueError(f"{prompts} has no inputs: give one JSON object per line")
    return out


def _read_utf8(path: Path) -> str:
    if not path.is_file():
        raise ValueError(f"{path} does not exist or is not a file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}): convert it, e.g. iconv -t UTF-8"
        ) from e


def main() -> None:
    """Entry point: user errors print one line and exit 1, without a traceback."""
    try:
        app()
    except (ValueError, TypeError, FileNotFoundError) as e:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {e}", highlight=False)  # no wrapping: paths stay whole
        sys.exit(1)


if __name__ == "__main__":
    main()
