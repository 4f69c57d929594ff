"""The ``attnlab`` command line.

- ``attnlab scan``: probe a pretrained model's attention; writes results.json and report.html.
- ``attnlab edit``: apply training-free edits to a model and measure them before/after.
- ``attnlab represent``: per-layer probes, CKA, unit matching or token-group alignment of one or two models.
- ``attnlab report results.json``: re-render a report from saved results.
- ``attnlab list backends|masks|mechanisms|probes``: what the installed attnlab offers.
- ``attnlab check``: every backend against the reference on this machine.
- ``attnlab train``: train a tiny transformer with one mechanism on a synthetic task.
- ``attnlab bench tasks``: compare mechanisms on a task over seeds (mean ± 95% CI).

Errors and outputs (one boundary, :class:`_Guarded`):

- an expected failure (a bad argument, a missing, unreadable or malformed file, a folder that
  cannot be written, an unusable device) prints ``error: <what> (<path>): <how to fix>`` on
  stderr and exits 1; bad command-line syntax exits 2; Ctrl-C prints ``interrupted`` and exits
  130; anything else is an attnlab bug: one line, exit 1, and ``attnlab --debug ...`` re-raises
  it with the traceback;
- user text (paths, specs, model tokens in notes) is printed literally, never as Rich markup;
- ``--out`` is checked before any model work: it must be a folder that can be written, and one
  that already holds results (results.json or report.html) is refused unless ``--force``
  (``attnlab train`` resumes from the checkpoint.pt it finds there: resuming is not overwriting;
  ``train --force`` starts afresh);
- results.json and report.html are both rendered, written to temporary files, then renamed: they
  appear together or not at all, with the umask's permissions.

Conventions:

- every list option takes ``--x a,b``, ``--x a --x b`` or both (:func:`_listed`); ``--edit``
  specs hold commas of their own, so there a comma starts a new spec only before a name
  (:func:`_edit_specs`);
- help is plain text that wraps, never cut, at any terminal width;
- ``attnlab --version`` imports neither torch nor any model code.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import inspect
import json
import re
import sys
import tempfile
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup
from typer.exceptions import TyperException

from attnlab.data import read_utf8
from attnlab.presets import DEFAULTS
from attnlab.presets import describe as describe_presets
from attnlab.runs.defaults import DEFAULT_PROBES

console = Console(emoji=False, highlight=False)
_stderr = Console(stderr=True, soft_wrap=True, emoji=False, highlight=False)  # no wrapping: paths stay whole


def _say(text: str, *, err: bool = False) -> None:
    """Print ``text`` literally: no markup, emoji codes or highlighting (it holds paths, specs, tokens)."""
    (_stderr if err else console).print(text, markup=False, emoji=False, highlight=False)


def _row(table: Table, *cells: str) -> None:
    """Add a row of plain text cells (a Table reads strings as markup)."""
    table.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in cells))


def _listed(values: list[str] | None) -> list[str]:
    """The items of a list option given as ``--x a,b``, ``--x a --x b`` or both, in order, blanks dropped.

    Example:
        >>> _listed(["sink,entropy", "patterns"])
        ['sink', 'entropy', 'patterns']
    """
    return [item.strip() for value in values or [] for item in value.split(",") if item.strip()]


_SPEC_START = re.compile(r"\s*[A-Za-z_][\w.]*\s*(:|$)")  # "name" or "name:...": a comma before it starts a new spec


def _edit_specs(values: list[str]) -> list[str]:
    """Edit specs from ``--edit`` values; one value may hold several specs joined by commas.

    A spec's own options are joined by commas too (``head_mask:heads=L1H2,mode=zero``), so the rule
    is: a comma starts a new spec only when a name follows it (``name`` or ``name:...``); a
    ``key=value`` after a comma belongs to the spec before it.

    Example:
        >>> _edit_specs(["head_mask:heads=L1H2,mode=zero,temperature:tau=2", "drop_attention:top=4"])
        ['head_mask:heads=L1H2,mode=zero', 'temperature:tau=2', 'drop_attention:top=4']
    """
    specs: list[str] = []
    for value in values:
        first = len(specs)
        for part in value.split(","):
            if not part.strip():
                continue
            if len(specs) > first and not _SPEC_START.match(part):
                specs[-1] += "," + part  # key=value: an option of the spec before it
            else:
                specs.append(part.strip())
    return specs


_EXPECTED = (ValueError, TypeError, OSError)  # what users can get wrong; anything else is a bug


def _os_message(e: OSError) -> str:
    """``<what> (<path>): <how to fix>`` for an OS error reading or writing a file."""
    if not e.strerror:  # raised with a message of its own (FileNotFoundError("... does not exist"))
        return str(e)
    fix = {
        errno.EACCES: "check its permissions, or give a path you can use",
        errno.EPERM: "check its permissions, or give a path you can use",
        errno.ENOENT: "check the path",
        errno.ENOTDIR: "a part of the path is a file, not a folder: give another path",
        errno.EISDIR: "it is a folder: give a file",
        errno.EEXIST: "it exists already: give another path",
        errno.ENOSPC: "the disk is full: free some space, or give a path on another disk",
        errno.EDQUOT: "the disk quota is used up: free some space, or give another path",
        errno.EROFS: "the file system is read-only: give a path on a writable one",
        errno.ENAMETOOLONG: "give a shorter path",
    }.get(e.errno, "check the path, or give another one")
    where = f" ({e.filename})" if e.filename is not None else ""
    if e.filename2 is not None:
        where = f" ({e.filename} -> {e.filename2})"
    return f"{e.strerror}{where}: {fix}"


def _message(e: BaseException) -> str:
    text = _os_message(e) if isinstance(e, OSError) else str(e)
    return text or type(e).__name__


class _Guarded(TyperGroup):
    """The CLI's one error boundary: every command runs inside :meth:`invoke`.

    An expected error (:data:`_EXPECTED`) prints ``error: <message>`` and exits 1; Ctrl-C prints
    ``interrupted`` and exits 130 (outputs are written whole at the end, so nothing is
    half-written); any other exception is an attnlab bug: one line naming it, exit 1, or its
    traceback under ``attnlab --debug``.
    """

    def invoke(self, ctx):
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException, BrokenPipeError):  # --help, usage errors, `| head`: typer's own
            raise
        except KeyboardInterrupt:
            _say("interrupted", err=True)
            raise typer.Exit(130) from None
        except _EXPECTED as e:
            if debug:
                raise
            _say(f"error: {_message(e)}", err=True)
            raise typer.Exit(1) from None
        except Exception as e:
            if debug:
                raise
            first = (_message(e).strip().splitlines() or [""])[0]
            _say(f"error: {type(e).__name__}: {first} (an attnlab bug: run with --debug for the traceback)", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Guarded,
    rich_markup_mode=None,  # click's plain help: wraps every line, never cuts one short with "…"
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="attnlab: a laboratory for attention in transformers.",
)


class Category(str, Enum):
    backends = "backends"
    edits = "edits"
    masks = "masks"
    mechanisms = "mechanisms"
    operators = "operators"
    probes = "probes"
    tasks = "tasks"


def _version(value: bool):
    if value:
        import attnlab  # its names load on first use: this imports no torch

        _say(f"attnlab {attnlab.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="On an error, show the Python traceback instead of one line.")] = False,
):
    """attnlab: build, probe, edit and benchmark attention."""


def _first_line(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


_ROLE = re.compile(r":[a-z]+:`(~?)([^`<]*?)\s*(?:<[^>]*>)?`")  # :func:`~a.b.c` (shown as c) or :ref:`text <target>`


def plain(text: str) -> str:
    """Docstring markup (reStructuredText) as plain text: roles by their name, literals without backquotes.

    Example:
        >>> plain("FlexAttention via ``torch.compile``; see :func:`~attnlab.core.attend` and *masks*.")
        'FlexAttention via torch.compile; see attend and masks.'
    """
    text = _ROLE.sub(lambda m: m[2].rsplit(".", 1)[-1] if m[1] else m[2], text)
    text = re.sub(r"``(.+?)``", r"\1", text)
    return re.sub(r"(?<![\w*])\*{1,2}([^*\s][^*]*?)\*{1,2}(?![\w*])", r"\1", text)


def _call(name: str, fn) -> str:
    params = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.KEYWORD_ONLY and "*" not in params:
            params.append("*")
        params.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return f"{name}({', '.join(params)})"


def rows(category: Category) -> list[tuple[str, ...]]:
    """``(name, paper, what it is)`` for every entry of a category, from :func:`attnlab.names`.

    Papers are what each entry declared where it registered (``cls.paper``, a mask factory's
    ``fn.paper``). Mechanisms add their input layout and time and memory complexity.
    """
    from attnlab import registry

    names = registry.names(category.value)
    if category is Category.mechanisms:
        from attnlab import mechanisms

        return [(e.name, e.paper, e.summary, e.layout, e.time, e.memory) for e in mechanisms.available()]
    if category is Category.backends:
        from attnlab.core import backends, choose_backend

        return [*((n, "", _first_line(type(backends.BACKENDS[n]))) for n in names), ("auto", "", _first_line(choose_backend))]
    if category is Category.masks:
        from attnlab.core import masks

        out = []
        for name in names:
            obj = getattr(masks, name)
            if isinstance(obj, masks.Mask):
                out.append((name, "", obj.description))
            else:
                out.append((_call(name, obj), getattr(obj, "paper", ""), _first_line(obj)))
        return out
    kind = importlib.import_module(f"attnlab.{category.value}").registry
    return [(name, cls.paper, _first_line(cls)) for name in names for cls in [kind.lookup(name)]]


@app.command("list")
def list_(
    category: Annotated[
        Category,
        typer.Argument(help="What to list: one of " + ", ".join(c.value for c in Category) + ".", metavar="CATEGORY", show_choices=False),
    ],
):
    """List the backends, edits, masks, mechanisms, operators, probes or tasks this attnlab has, with the paper each comes from.

    Papers are given by their number in docs/papers.md and their short name.
    """
    from attnlab.papers import cite

    table = Table(title=Text(f"attnlab {category.value}"))
    for col in ("name", "paper", "what it is"):
        table.add_column(col, style="bold" if col == "name" else None, overflow="fold")
    if category is Category.mechanisms:
        for col in ("input", "time", "memory"):
            table.add_column(col, overflow="fold")
    for name, paper, what, *more in rows(category):
        _row(table, name, cite(paper), plain(what), *more)
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
            _row(table, name, backend, f"{d_out:.1e}", f"{d_grad:.1e}", "yes" if ok else Text("NO", style="red"))
    console.print(table)
    if not ok_all:
        raise typer.Exit(1)


_Model = Annotated[
    str,
    typer.Option(
        help="Embedded name (smollm2-135m, minilm-l6), a Hugging Face Hub id (org/name; from the local HF cache when HF_HUB_OFFLINE is set), a local HF model directory or a .gguf file."
    ),
]
_Device = Annotated[str | None, typer.Option(help="Put the model on this device: cpu, cuda, cuda:N or mps (default: cpu).")]
_Dtype = Annotated[str, typer.Option(help="Model dtype: float32, bfloat16, float16, or auto (the checkpoint's own).")]
_DeviceMap = Annotated[
    str | None,
    typer.Option(
        help='accelerate placement instead of --device: auto (GPUs, then CPU, then disk for a model bigger than memory), balanced, sequential, or a JSON object module -> device, e.g. \'{"": "cuda:1"}\'.'
    ),
]


def _load(model: str, device: str | None, dtype: str, device_map: str | None):
    """Load --model with --device, --dtype and --device-map (a JSON object for a per-module map)."""
    from attnlab.models.hf import load

    placement = device_map
    if device_map is not None and device_map.lstrip().startswith("{"):
        try:
            placement = json.loads(device_map)
        except json.JSONDecodeError as e:
            raise ValueError(
                f'--device-map {device_map!r} is not a JSON object ({e.msg}): give auto, a device or e.g. \'{{"": "cuda:1"}}\''
            ) from e
    try:
        return load(model, dtype=dtype, device=device, device_map=placement)
    except (OSError, KeyboardInterrupt):
        raise
    except Exception as e:  # a reader's own error for a damaged file (SafetensorError, struct.error, ...)
        if type(e) in (ValueError, TypeError):  # attnlab's messages already name the file and the fix
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(
            f"cannot load --model {model} ({type(e).__name__}: {first}): its files may be damaged or incomplete; "
            "save or download the model again (attnlab --debug ... shows where it failed)"
        ) from e


_Force = Annotated[bool, typer.Option("--force", help="Replace the results --out already holds (refused without it).")]
_Figures = Annotated[
    list[str] | None,
    typer.Option(
        "--figures",
        help="Also write each figure of the report as a file, figures/<name>.<format> beside it: png, svg, or png,svg (or repeat).",
        show_default=False,
    ),
]


def _figure_formats(figures: list[str] | None) -> list[str]:
    """``--figures png,svg`` or ``--figures png --figures svg`` as a checked list of formats (empty: none)."""
    from attnlab.report.page import check_formats

    return check_formats(_listed(figures))


OUTPUTS = ("results.json", "report.html")


def _check_out(out: Path, force: bool) -> None:
    """Before any model work: ``out`` is (or can be made) a folder this process can write in, holding no results unless ``force``."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a directory (it is created if missing)")
    _check_writable(out, f"--out {out}")
    held = [name for name in OUTPUTS if (out / name).exists()]
    if held and not force:
        raise ValueError(f"--out {out} already holds results ({', '.join(held)}): give another --out, or --force to replace them")


def _check_writable(folder: Path, what: str) -> None:
    """``folder`` can be made and written in: its nearest existing ancestor is a folder that takes new files."""
    here = folder.absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise ValueError(f"{what} is inside {here}, which is a file, not a directory: give a path in a directory")
    try:
        with tempfile.TemporaryFile(dir=here):
            pass
    except OSError as e:
        raise ValueError(
            f"{what} cannot be written: {here} refuses new files ({e.strerror or e}): give a directory you can write to"
        ) from None


def _write_error(what: str, e: OSError) -> ValueError:
    """A failed write, named by what was being written rather than by its temporary file."""
    return ValueError(f"cannot write {what} ({e.strerror or e}): give a path in a folder you can write to, on a disk with space")


def _write_outputs(out: Path, result, figures: list[str] = ()) -> tuple[Path, Path]:
    """Write results.json and report.html (and ``figures`` as figures/<name>.<format>) into ``out`` together or not at all
    (all rendered first)."""
    from attnlab.results import to_json, write_together

    texts = {out / "results.json": to_json(result), out / "report.html": result.html()}
    if figures:
        texts.update({out / "figures" / name: data for name, data in result.page().figure_files(figures).items()})
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_together(texts)
    except BaseException as e:
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: nothing of this run is left behind
        if isinstance(e, OSError):
            raise _write_error(f"the results into --out {out}", e) from None
        raise
    return out / "results.json", out / "report.html"


@app.command()
def scan(
    model: _Model = "smollm2-135m",
    text: Annotated[Path | None, typer.Option(help="A UTF-8 text file to scan (one input).")] = None,
    prompts: Annotated[Path | None, typer.Option(help='A JSONL file of inputs: one {"text": ...} per line.')] = None,
    synthetic: Annotated[
        list[str] | None,
        typer.Option(
            help="Synthetic inputs: needle (retrieval trials), repeated (random tokens twice, for the head detectors); needle,repeated or the option repeated for both. Default: repeated (with a text, the head detectors read it and the repeated tokens, reported apart), and needle when retrieval is among --probes.",
            show_default=False,
        ),
    ] = None,
    max_len: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="Longest input in tokens (default: the model's trained positions; for the sample text 1024, or those positions when fewer).",
        ),
    ] = None,
    truncate: Annotated[bool, typer.Option(help="Cut inputs longer than --max-len instead of refusing them.")] = False,
    allow_extrapolation: Annotated[
        bool, typer.Option(help="Allow --max-len beyond the positions the model was trained on (memory/speed measurement).")
    ] = False,
    probes: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Probes to run (attnlab list probes): sink,entropy or the option repeated. Default: {', '.join(DEFAULT_PROBES)}, those that apply to the model (an encoder skips retrieval); with --text or --prompts, retrieval only when asked for. retrieval runs needle trials, the others read text or repeated tokens.",
            show_default=False,
        ),
    ] = None,
    needle_lengths: Annotated[
        list[str] | None,
        typer.Option(
            help="Needle trial lengths in tokens: 512,768 or the option repeated (default: 512,768, those whose trials fit the model's trained positions).",
            show_default=False,
        ),
    ] = None,
    maps: Annotated[
        list[str] | None,
        typer.Option(
            "--maps",
            help="Heads whose whole attention maps the report's viewer shows, besides those the scan finds: L<layer>H<head>, comma-separated or repeated (e.g. --maps L18H6,L17H3).",
            show_default=False,
        ),
    ] = None,
    figures: _Figures = None,
    out: Annotated[Path, typer.Option(help="Output directory for results.json and report.html.")] = Path("attnlab-scan"),
    force: _Force = False,
    backend: Annotated[str, typer.Option(help="Attention backend: auto, reference, sdpa, blocked, flex.")] = "auto",
    device: _Device = None,
    dtype: _Dtype = "float32",
    device_map: _DeviceMap = None,
):
    """Probe a pretrained model's attention (sinks, entropy, head patterns, extreme tokens, layer importance, retrieval heads).

    With no options it scans the embedded SmolLM2-135M on 1,024 tokens of The Tempest (shipped with
    attnlab), plus repeated random tokens and needle-in-a-haystack trials. With --text or --prompts
    the probes read that text, and the head detectors (patterns) read repeated random tokens as well,
    reported apart; needle trials run only when retrieval is among --probes. Defaults fit the model:
    lengths stay within its trained positions, and default probes that do not apply to it
    (retrieval on an encoder) are skipped; a line says what and why, and results.json records it.
    """
    from attnlab.probes import names as probe_registry
    from attnlab.runs.scan import SAMPLE_TOKENS, capped_length, plan_scan
    from attnlab.runs.scan import scan as run_scan

    explicit = probes is not None
    probe_names = _listed(probes) if explicit else list(DEFAULT_PROBES)
    if not probe_names:
        raise ValueError(f"--probes {','.join(probes)!r} names no probe: give some of {', '.join(probe_registry())}")
    for p in probe_names:
        if p not in probe_registry():
            raise ValueError(f"unknown probe {p!r}: choose from {', '.join(probe_registry())}")
    kinds = set(_listed(synthetic))
    for k in kinds:
        if k not in ("needle", "repeated"):
            raise ValueError(f"unknown synthetic input {k!r}: choose needle or repeated")
    lengths = None if needle_lengths is None else _ints(",".join(needle_lengths), "--needle-lengths")
    formats = _figure_formats(figures)
    map_text = ",".join(_listed(maps))
    from attnlab.heads import parse_heads

    map_heads = parse_heads(map_text) if map_text else []  # malformed fails here, before loading; the scan checks the model has them
    texts = _read_inputs(text, prompts)
    default_sample = not texts and not kinds
    skipped_here: list[dict] = []
    if synthetic is None:  # the synthetic inputs the probes read
        if not explicit and texts and "retrieval" in probe_names:
            probe_names.remove("retrieval")  # needle trials do not read the user's text: only when asked for
            why = "its needle trials do not read --text or --prompts; add retrieval to --probes to run them"
            skipped_here.append({"what": "probe retrieval", "why": why})
        kinds = {"repeated"} if not texts or "patterns" in probe_names else set()  # with a text: for the head detectors
        if "retrieval" in probe_names:
            kinds.add("needle")
    probe_names = _fed_probes(probe_names, explicit, has_text=bool(texts) or default_sample, kinds=kinds)
    _check_out(out, force)
    with console.status(f"loading {escape(model)}"):
        m, tok = _load(model, device, dtype, device_map)
    _header(m, tok)
    plan = plan_scan(m, probe_names if explicit else None, lengths, name=model, defaults=probe_names)  # what applies to this model
    plan.skipped[:0] = skipped_here
    probe_names = plan.probes
    if "needle" in kinds and "retrieval" not in probe_names:
        why = next(s["why"] for s in plan.skipped if s["what"] == "probe retrieval")
        if not default_sample:
            raise ValueError(f"--synthetic needle feeds only the retrieval probe, which is skipped: {why}; leave --synthetic needle out")
        kinds.discard("needle")
    capped: list[dict] = []
    if default_sample:
        from attnlab.data import sample_text

        texts, truncate = [sample_text()], True  # the built-in sample is cut to a chosen length
        if max_len is None:
            max_len, capped = capped_length(m, SAMPLE_TOKENS, "max_len", name=model)
    settings = {
        "model": model,
        "text": str(text) if text else None,
        "prompts": str(prompts) if prompts else None,
        "synthetic": sorted(kinds),
        "sample_text": default_sample,
    }
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        task = bar.add_task("scanning", total=None)

        def progress(what, done, total):
            bar.update(task, description=escape(what), completed=done, total=total or None)

        result = run_scan(
            m,
            tok,
            texts,
            probes=probe_names,
            repeated="repeated" in kinds,
            needle_lengths=plan.needle_lengths,
            max_len=max_len,
            truncate=truncate,
            allow_extrapolation=allow_extrapolation,
            backend=backend,
            progress=progress,
            settings=settings,
            skipped=plan.skipped,
            capped=capped,
            maps=map_heads,
        )
    _show_warnings(caught)
    _show_skipped(result.meta)
    _show_capped(result.meta)
    written = _write_outputs(out, result, formats)
    for probe, f in result.findings.items():
        for note in f["notes"]:  # notes quote model tokens: printed literally
            console.print(Text.assemble((probe, "bold"), ": ", str(note)))
    _say(f"wrote {written[0]} and {written[1]} ({result.meta['wall_s']} s)")


def _show_warnings(caught: list) -> None:
    """attnlab's own warnings (a scan's inputs too short to mean much) as ``warning: ...`` lines; others as Python shows them."""
    for w in caught:
        if w.category.__module__.startswith("attnlab"):
            _say(f"warning: {w.message}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _show_capped(meta: dict) -> None:
    """A line for each default length shortened to the model's trained positions (recorded in ``meta["capped"]``)."""
    for c in meta.get("capped", []):
        _say(f"capped {c['what']} at {c['used']} (default {c['default']}): {c['why']}")


def _fed_probes(probes: list[str], explicit: bool, *, has_text: bool, kinds: set[str]) -> list[str]:
    """The probes a scan runs: every requested probe gets the inputs it reads, or the scan is refused.

    ``retrieval`` reads the needle trials (``--synthetic needle``, which ``retrieval`` in the probes
    implies when ``--synthetic`` is not given); the other probes read texts or
    repeated random tokens. With the default probes (``--probes`` not given), those the inputs do
    not feed are left out; probes given with ``--probes`` must all be fed, and every requested
    input must feed a probe.
    """
    passive = [p for p in probes if p != "retrieval"]
    out = list(probes)
    if "retrieval" in out and "needle" not in kinds:
        if explicit:
            raise ValueError(
                "--probes retrieval runs needle-in-a-haystack trials: add --synthetic needle (or leave retrieval out of --probes)"
            )
        out.remove("retrieval")
    if "needle" in kinds and "retrieval" not in out:
        raise ValueError("--synthetic needle feeds only the retrieval probe: add retrieval to --probes, or leave --synthetic needle out")
    if passive and not (has_text or "repeated" in kinds):
        if explicit:
            raise ValueError(
                f"--probes {','.join(passive)} read text or repeated tokens, and --synthetic needle alone gives them none: "
                "add --text, --prompts or --synthetic repeated (or ask only for --probes retrieval)"
            )
        out = [p for p in out if p == "retrieval"]
    return out


@app.command()
def report(
    results: Annotated[
        Path, typer.Argument(help="A results.json written by attnlab scan, edit, circuit, represent, train or bench tasks.")
    ],
    out: Annotated[Path | None, typer.Option(help="Where to write the HTML (default: report.html beside the results).")] = None,
    figures: _Figures = None,
):
    """Re-render the HTML report of a saved result of any kind (scan, edit, sweep, circuit or represent)."""
    from attnlab.results import load, write_atomic, write_together

    formats = _figure_formats(figures)
    target = out or results.with_name("report.html")
    if target.resolve() == results.resolve():
        raise ValueError(f"--out {target} is the results file itself: give another path for the HTML")
    result = load(results)
    _check_writable(target.parent, f"--out {target}" if out else f"the report {target}")
    try:
        html = result.html()
        files = {target.parent / "figures" / name: data for name, data in result.page().figure_files(formats).items()}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:  # fields of the wrong shape
        kind = result.meta.get("kind")
        raise ValueError(
            f"{results} is not a well-formed attnlab {kind} result ({type(e).__name__}: {e}): "
            "was it edited by hand? re-run what wrote it (attnlab --debug report ... shows where it broke)"
        ) from e
    try:
        path = write_together({target: html, **files})[0] if files else write_atomic(target, html)
    except OSError as e:
        raise _write_error(f"the report to {target}", e) from None
    _say(
        f"wrote {path} ({result.meta['kind']} report)" + (f" and {len(files)} figure files in {target.parent / 'figures'}" if files else "")
    )


@app.command()
def edit(
    edit: Annotated[
        list[str],
        typer.Option(
            "--edit",
            help="An edit spec name:key=value,... (attnlab list edits). Several edits compose in the order given: repeat --edit, or join specs with commas; a comma starts a new spec only before a name (name or name:...), so key=value parts stay with the spec before them: --edit a:x=1,y=2,b:z=3 is two edits, a:x=1,y=2 and b:z=3.",
        ),
    ],
    model: _Model = "smollm2-135m",
    eval: Annotated[
        list[str] | None,
        typer.Option(
            "--eval",
            help="Measurements: ppl, needle, logit_diff (decoders), match (both); ppl,needle or the option repeated. Default: ppl,needle on a decoder, match on an encoder.",
            show_default=False,
        ),
    ] = None,
    figures: _Figures = None,
    out: Annotated[Path, typer.Option(help="Output directory for results.json and report.html.")] = Path("attnlab-edit"),
    force: _Force = False,
    allow_extrapolation: Annotated[
        bool, typer.Option(help="Allow evaluation inputs beyond the positions the model was trained on (as attnlab scan).")
    ] = False,
    backend: Annotated[str, typer.Option(help="Attention backend for the edited model.")] = "auto",
    device: _Device = None,
    dtype: _Dtype = "float32",
    device_map: _DeviceMap = None,
):
    """Apply training-free attention edits to a model and measure their effect, paired before/after.

    Progress lines say which pass runs (before: the unedited model, after: with the edits); the
    table gives each measurement before, after, their difference and its 95% CI; a line per
    calibrated edit says what it was calibrated on.

    \b
    Example: attnlab edit --edit drop_attention:top=4 --eval ppl,needle
    """
    from attnlab import edits as E
    from attnlab.runs.edit import run_edit

    texts = _edit_specs(edit)
    specs = [E.parse(s) for s in texts]  # a malformed spec or unknown edit fails here, before loading
    formats = _figure_formats(figures)
    from attnlab.runs.evaluate import METRICS

    evals = None if eval is None else _listed(eval)
    if evals is not None and not evals:
        raise ValueError(f"--eval {','.join(eval)!r} names no evaluation: give some of {', '.join(METRICS)}")
    for name in evals or []:
        if name not in METRICS:
            raise ValueError(f"unknown evaluation {name!r}: choose from {', '.join(METRICS)}")
    _check_out(out, force)
    from attnlab.models.hf_load import resolve
    from attnlab.runs.edit import choose_evals

    choose_evals(evals, "encoder" if resolve(model)[1] == "encoder" else "decoder", model)  # before loading: evaluations that cannot apply
    with console.status(f"loading {escape(model)}"):
        m, tok = _load(model, device, dtype, device_map)
    _header(m, tok)
    with console.status("measuring") as status:
        result = run_edit(
            m, tok, specs, evals, specs_text=texts, model_name=model, backend=backend,
            allow_extrapolation=allow_extrapolation, progress=lambda line: status.update(escape(line)),
        )  # fmt: skip
    _show_skipped(result.meta)
    for c in result.meta["calibrated"]:  # nothing when no edit was calibrated
        _say(f"calibrated on {c['on']}: {c['edit']} -> {c['applied']}")
    table = Table(title=Text(f"{'; '.join(texts)}: before / after"))
    for col in ("metric", "before", "after", "difference (after − before)", "95% CI of the difference", "better", "examples"):
        table.add_column(col, overflow="fold")
    for r in result.meta["metrics"]:
        _row(
            table,
            r["metric"],
            f"{r['before']:.4g}",
            f"{r['after']:.4g}",
            f"{r['difference']:+.4g}",
            f"[{r['ci95'][0]:+.3g}, {r['ci95'][1]:+.3g}]",
            "higher" if r["higher_is_better"] else "lower",
            str(r["examples"]),
        )
    console.print(table)
    for r in result.meta["metrics"]:
        if "tokens" in r:
            _say(f"{r['metric']} over all {r['tokens']} scored tokens: {r['pooled_before']:.4g} before, {r['pooled_after']:.4g} after")
    written = _write_outputs(out, result, formats)
    _say(f"wrote {written[0]} and {written[1]}")


@app.command()
def circuit(
    model: _Model = "smollm2-135m",
    prompts: Annotated[
        Path | None,
        typer.Option(help='Prompt pairs, JSONL: {"clean", "corrupted", "answer", "wrong"} a line (docs: Circuits).', show_default=False),
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="Built-in pairs instead of --prompts: ioi, induction, colored_objects, multiple_choice.")
    ] = None,
    pairs: Annotated[int, typer.Option("--pairs", help="How many built-in pairs (--task).")] = 8,
    method: Annotated[
        str,
        typer.Option(
            help="patch (attn.z per head), path (each head into --receivers), attrib (attribution patching), dla, "
            "ig (neuron paths by integrated gradients, paper 69), saliency (NormGrad per token, paper 10)."
        ),
    ] = "patch",
    receivers: Annotated[
        list[str] | None,
        typer.Option(
            help="For --method path: heads as L9H6,L10H0 or repeated (each alone: a senders × receivers grid), or 'logits' (the default)."
        ),
    ] = None,
    per: Annotated[
        str, typer.Option(help="For patch and attrib: head (attn.z, layer × head) or position (resid_pre, layer × position).")
    ] = "head",
    batch_size: Annotated[int, typer.Option(help="Pairs per forward pass.")] = 8,
    layers: Annotated[
        str, typer.Option(help="For --method ig: the layers to search, 'all', a range 26-29 or a list 3,7 (each costs one IG batch).")
    ] = "all",
    steps: Annotated[int, typer.Option(help="For --method ig: integration steps m (paper 69: 20).")] = 20,
    figures: _Figures = None,
    out: Annotated[Path, typer.Option(help="Output directory for results.json and report.html.")] = Path("attnlab-circuit"),
    force: _Force = False,
    device: _Device = None,
    dtype: _Dtype = "float32",
    device_map: _DeviceMap = None,
):
    """Find the heads that carry a model's answer: activation/path/attribution patching or direct logit attribution;
    the MLP neurons (integrated gradients) or the tokens (NormGrad saliency) it depends on.

    Writes results.json and report.html. Example: attnlab circuit --task ioi --method patch --out ioi-heads
    """
    from attnlab.circuits.run import METHODS, PER, TASKS, run_circuit, task_pairs

    if (prompts is None) == (task is None):
        raise ValueError(f"give exactly one of --prompts pairs.jsonl or --task ({', '.join(TASKS)})")
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown --task {task!r}: choose one of {', '.join(TASKS)}")
    if method not in METHODS:
        raise ValueError(f"unknown --method {method!r}: choose one of {', '.join(METHODS)}")
    if per not in PER:
        raise ValueError(f"unknown --per {per!r}: choose one of {', '.join(PER)}")
    if per != "head" and method not in ("patch", "attrib"):
        raise ValueError(f"--per {per} applies to --method patch and attrib; --method {method} is per head: leave --per out")
    if prompts is not None and not prompts.is_file():
        raise ValueError(f"--prompts {prompts} is not a file: give a JSONL file of prompt pairs")
    if method != "ig" and (layers != "all" or steps != 20):
        raise ValueError(f"--layers and --steps apply to --method ig; --method {method} takes neither: leave them out")
    if steps < 1:
        raise ValueError(f"--steps is the number of integration points, a positive int (paper 69: 20), got {steps}")
    searched = _layer_list(layers)
    formats = _figure_formats(figures)
    named = _listed(receivers)
    heads = "logits" if named in ([], ["logits"]) else named
    _check_out(out, force)
    with console.status(f"loading {escape(model)}"):
        m, tok = _load(model, device, dtype, device_map)
    _header(m, tok)
    from attnlab.circuits.pairs import load_pairs

    chosen = load_pairs(prompts, tok) if prompts is not None else task_pairs(task, tok, pairs)
    settings = {"model": model, "prompts": str(prompts) if prompts else None, "task": task, "receivers": heads, "batch_size": batch_size}
    with console.status("running") as status:
        result = run_circuit(
            m, chosen, method, settings=settings, receivers=heads, per=per, batch_size=batch_size, layers=searched, steps=steps, tokenizer=tok,
            progress=lambda what, done, total: status.update(escape(f"{what} ({done}/{total})")),
        )  # fmt: skip
    for key, value in result.meta.get("summary", {}).items():
        _say(f"{key}: {value:.4g}")
    written = _write_outputs(out, result, formats)
    _say(f"wrote {written[0]} and {written[1]} ({result.meta['wall_s']} s)")


def _layer_list(text: str) -> list[int] | None:
    """``--layers``: None for 'all', else the layers of a range ``a-b`` or a list ``a,b``."""
    if text == "all":
        return None
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-"))
            return list(range(lo, hi + 1))
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise ValueError(f"--layers takes 'all', a range like 26-29 or a list like 3,7, got {text!r}") from e


@app.command()
def represent(
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="The model (as --model elsewhere; default smollm2-135m); two (--model a,b or --model a --model b) to compare models: cka, match.",
            show_default=False,
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="A built-in set (concepts, parity, lexical, paired) or a JSONL file: {text, label[, concept]} a line, or {a, b} for align "
            "(docs: Representations). Default: concepts, or paired for --method align.",
            show_default=False,
        ),
    ] = None,
    method: Annotated[
        str, typer.Option(help="probe (per-layer linear probes), cka (layer × layer CKA), match (unit matching of two models), align.")
    ] = "probe",
    examples: Annotated[int, typer.Option(help="Examples per concept of a built-in set.")] = 64,
    folds: Annotated[int, typer.Option(help="Cross-validation folds of the probes.")] = 5,
    groups: Annotated[int, typer.Option(help="Spectral groups of units (match).")] = 8,
    batch_size: Annotated[int, typer.Option(help="Examples per forward pass.")] = 8,
    memory: Annotated[
        int, typer.Option(help="MiB the running sums of cka may take; pairs beyond it run in further passes over the dataset.")
    ] = 2048,
    figures: _Figures = None,
    out: Annotated[Path, typer.Option(help="Output directory for results.json and report.html.")] = Path("attnlab-represent"),
    force: _Force = False,
    device: _Device = None,
    dtype: _Dtype = "float32",
    device_map: _DeviceMap = None,
):
    """What each layer represents: linear probes, CKA between layers or models, unit matching, token-group alignment.

    Writes results.json and report.html. Example: attnlab represent --method cka --out smollm2-cka
    """
    from attnlab.represent import datasets as D
    from attnlab.represent.run import METHODS, check_dataset, run_represent

    names = _listed(model) or ["smollm2-135m"]
    if method not in METHODS:
        raise ValueError(f"unknown --method {method!r}: choose one of {', '.join(METHODS)}")
    if len(names) > 2:
        raise ValueError(f"--model given {len(names)} times: give one model, or two to compare")
    if memory < 1:
        raise ValueError(f"--memory takes MiB, at least 1, got {memory}")
    name = dataset or ("paired" if method == "align" else "concepts")
    if name in D.BUILTIN:
        data = D.builtin(name, examples)
    elif Path(name).is_file():
        data = D.load(name)
    else:
        raise ValueError(f"--dataset {name!r} is neither a built-in set ({', '.join(D.BUILTIN)}) nor a file: give one of them")
    check_dataset(data, method, folds)
    formats = _figure_formats(figures)
    _check_out(out, force)
    loaded = []
    for n in names:
        with console.status(f"loading {escape(n)}"):
            loaded.append(_load(n, device, dtype, device_map))
        _header(*loaded[-1])
    settings = {"models": names, "dataset": name}
    with console.status("running") as status:
        result = run_represent(
            [m for m, _ in loaded], [t for _, t in loaded], data, method, settings=settings, folds=folds, groups=groups,
            batch_size=batch_size, memory_mib=memory, progress=lambda what, done, total: status.update(escape(f"{what} ({done}/{total})")),
        )  # fmt: skip
    for concept, b in result.meta.get("best", {}).items():
        _say(f"{concept}: best probe accuracy {b['accuracy']:.3f} at stream {b['layer']}")
    written = _write_outputs(out, result, formats)
    _say(f"wrote {written[0]} and {written[1]} ({result.meta['wall_s']} s)")


def _header(model, tokenizer) -> None:
    """The model's conventions, once, before a run (:func:`attnlab.models.conventions.conventions`)."""
    from attnlab.models.conventions import conventions

    _say(f"model: {getattr(model, 'attnlab_identity', None) or type(model).__name__} · {conventions(model, tokenizer).line()}")


def _show_skipped(meta: dict) -> None:
    """A line for each part of the run that did not apply to the model (recorded in ``meta["skipped"]``)."""
    for s in meta.get("skipped", []):
        _say(f"skipped {s['what']}: {s['why']}")


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
        out.append(read_utf8(text))
        if not out[-1].strip():
            raise ValueError(f"{text} is empty: give a file with some text")
    if prompts is not None:
        for n, line in enumerate(read_utf8(prompts).splitlines(), 1):
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


# ---- train and bench (issue 6) ------------------------------------------------------------------

bench_app = typer.Typer(rich_markup_mode=None, no_args_is_help=True, help="Benchmarks: compare attention mechanisms on synthetic tasks.")
app.add_typer(bench_app, name="bench")

_TaskOption = Annotated[
    list[str] | None,
    typer.Option("--task-option", help="Task options key=value: pairs=8,seq_len=64 or the option repeated (attnlab list tasks)."),
]
_TaskName = Annotated[str, typer.Option(help="A registered task (mqar, ...), or module:Class for a Task defined elsewhere.")]


def _key_values(pairs: list[str] | None, option: str) -> dict:
    """Options from repeated ``--x-option key=value[,key=value]`` (:func:`attnlab.spec.parse_options`)."""
    from attnlab.spec import parse_options

    out: dict = {}
    for pair in pairs or []:
        for key, value in parse_options(pair, what=option, example="pairs=8").items():
            if key in out:
                raise ValueError(f"{option} gives {key!r} twice ({key}={out[key]!r} and {pair!r}): give each option once")
            out[key] = value
    return out


def _task_class_or_name(task: str):
    """``module:Class`` imports a Task class; anything else is a registered task name."""
    if ":" not in task:
        return task
    import importlib

    module, _, name = task.partition(":")
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # like `python -m`: modules in the working directory import
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--task {task}: cannot import {name} from {module} ({e})") from e
    from attnlab.tasks import Task

    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ValueError(f"--task {task} is not a Task class (attnlab.tasks.Task)")
    return cls


def _model_options(dim: int, heads: int, layers: int, mlp: bool, positions: str, causal: bool | None, **more) -> dict:
    opts = {"dim": dim, "heads": heads, "layers": layers, "mlp": mlp, "positions": positions, **more}
    return opts if causal is None else {**opts, "causal": causal}


def _given(**options) -> dict:
    """The options given on the command line (None: not given, so a preset or the defaults decide)."""
    return {k: v for k, v in options.items() if v is not None}


_PRESET_HELP = "A paper's settings by name, as differences from the defaults (options given still win): " + describe_presets()


@app.command()
def train(
    task: Annotated[
        str | None,
        typer.Option(
            help="A registered task (attnlab list tasks), or module:Class for a Task defined elsewhere; a --preset names its own."
        ),
    ] = None,
    preset: Annotated[str | None, typer.Option(help=_PRESET_HELP, show_default=False)] = None,
    mechanism: Annotated[str, typer.Option(help="The attention mechanism (attnlab list mechanisms).")] = "mha",
    task_option: _TaskOption = None,
    mechanism_option: Annotated[
        list[str] | None, typer.Option("--mechanism-option", help="Mechanism options key=value: a=1,b=2 or the option repeated.")
    ] = None,
    steps: Annotated[int | None, typer.Option(min=1, help=f"Optimizer steps (default {DEFAULTS['steps']}; fewer for slow tasks).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help=f"Sequences per step (default {DEFAULTS['batch_size']}).")] = None,
    lr: Annotated[
        float | None, typer.Option(min=0.0, help=f"Peak learning rate, AdamW, warmup then cosine (default {DEFAULTS['lr']:g}).")
    ] = None,
    warmup: Annotated[int | None, typer.Option(min=0, help="Warmup steps (default: a tenth of --steps).")] = None,
    weight_decay: Annotated[
        float | None, typer.Option(min=0.0, help=f"AdamW weight decay on matrices (default {DEFAULTS['weight_decay']}).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seeds the model's initialisation and the data.")] = 0,
    target: Annotated[float | None, typer.Option(help="Stop when the test metric reaches this.")] = None,
    eval_every: Annotated[
        int | None, typer.Option(min=1, help=f"Evaluate and checkpoint every this many steps (default {DEFAULTS['eval_every']}).")
    ] = None,
    eval_batches: Annotated[
        int | None, typer.Option(min=1, help=f"Test batches per evaluation (default {DEFAULTS['eval_batches']}).")
    ] = None,
    dim: Annotated[int | None, typer.Option(min=1, help=f"Model width (default {DEFAULTS['dim']}).")] = None,
    heads: Annotated[int | None, typer.Option(min=1, help=f"Attention heads (default {DEFAULTS['heads']}).")] = None,
    layers: Annotated[int | None, typer.Option(min=1, help=f"Blocks (default {DEFAULTS['layers']}).")] = None,
    mlp: Annotated[
        bool | None, typer.Option("--mlp/--no-mlp", help="Feed-forward layers, or attention only (default: with).", show_default=False)
    ] = None,
    positions: Annotated[str | None, typer.Option(help=f"learned, none or rope (default {DEFAULTS['positions']}).")] = None,
    causal: Annotated[bool | None, typer.Option("--causal/--encoder", help="Decoder or encoder (default: what the task asks).")] = None,
    device: Annotated[str | None, typer.Option(help="torch device (default cpu).")] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch CPU threads (default: every core unless OMP_NUM_THREADS is set).")
    ] = None,
    figures: _Figures = None,
    out: Annotated[
        Path,
        typer.Option(
            help="Directory for checkpoint.pt, results.json and report.html; a checkpoint.pt there resumes (same settings), results without one are refused unless --force."
        ),
    ] = Path("attnlab-train"),
    force: Annotated[
        bool, typer.Option("--force", help="Start afresh in --out: remove its checkpoint.pt and replace its results.")
    ] = False,
):
    """Train a tiny transformer with one mechanism on a synthetic task; print its curves.

    Without --preset, task sizes and steps are chosen to finish in about a minute on 2 CPU cores
    (mqar: vocabulary 64, 32 tokens, 4 pairs); --preset NAME gives a paper's settings instead.
    Settings: the defaults, then the preset (or the quick sizes), then the options given.

    \b
    Example: attnlab train --task mqar --mechanism mha --steps 2000 --target 0.99
    """
    import torch

    from attnlab.presets import resolve
    from attnlab.results import versions
    from attnlab.train import SweepResult, build_model
    from attnlab.train import train as run_train
    from attnlab.train.sweep import make_task

    spec = None if task is None else _task_class_or_name(task)
    given = _given(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, weight_decay=weight_decay, eval_every=eval_every,
                   eval_batches=eval_batches, dim=dim, heads=heads, layers=layers, mlp=mlp, positions=positions)  # fmt: skip
    run = resolve(preset, spec, _key_values(task_option, "--task-option"), given)
    spec, task_options = run["task"], run["task_options"]
    task = task or spec
    mech_options = _key_values(mechanism_option, "--mechanism-option")
    formats = _figure_formats(figures)
    the_task = make_task(spec, task_options)
    checkpoint = out / "checkpoint.pt"
    _check_out(out, force=force or checkpoint.is_file())  # resuming a run is not overwriting it
    _check_device(device)
    model_options = _model_options(
        run["dim"], run["heads"], run["layers"], run["mlp"], run["positions"], causal,
        **({"mechanism_options": mech_options} if mech_options else {}),
    )  # fmt: skip
    torch.manual_seed(seed)
    model = build_model(the_task, mechanism, model_options)
    if force and checkpoint.is_file():
        checkpoint.unlink()
        _say(f"--force: removed {checkpoint}, starting afresh")
    if checkpoint.exists():
        _say(f"resuming from {checkpoint}")
    r = run_train(
        the_task, model, steps=run["steps"], batch_size=run["batch_size"], lr=run["lr"], warmup=run["warmup"],
        weight_decay=run["weight_decay"], seed=seed, target=target, eval_every=run["eval_every"], eval_batches=run["eval_batches"],
        checkpoint=checkpoint, device=device, threads=threads,
    )  # fmt: skip
    table = Table(title=Text(f"{mechanism} on {the_task.name or task}: curves"))
    for col in ("step", "train loss", "test loss", "test metric"):
        table.add_column(col, justify="right")
    shown = sorted({*range(0, len(r.steps), max(1, len(r.steps) // 10)), len(r.steps) - 1})
    for i in shown:
        _row(table, str(r.steps[i]), f"{r.train_loss[i]:.4f}", f"{r.test_loss[i]:.4f}", f"{r.test_metric[i]:.4f}")
    console.print(table)
    reached = f", target {target} reached at step {r.steps_to_target}" if r.steps_to_target is not None else ""
    _say(f"final test metric {r.final_metric:.4f} after {r.steps_done} steps{reached}; {r.steps_per_s} steps/s, {r.wall_s} s")
    settings = {
        "task": task, "preset": preset, "task_options": task_options, "task_settings": r.settings["task"], "mechanisms": [mechanism], "seeds": [seed],
        "model_options": model_options, "train": {k: v for k, v in r.settings.items() if k not in ("task", "model", "seed")},
        "executor": "serial", "workers": 1, "command": "attnlab train",
    }  # fmt: skip
    result = SweepResult.from_runs(
        [{"mechanism": mechanism, "seed": seed, **r.to_dict()}], {"settings": settings, "versions": versions(), "wall_s": r.wall_s}
    )
    written = _write_outputs(out, result, formats)
    _say(f"wrote {checkpoint}, {written[0]} and {written[1]}")


def _check_device(device: str | None) -> None:
    """Before any work: a device torch knows and this machine has (``train --device cuda`` on a CPU machine)."""
    if device is None:
        return
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"--device {device!r} is not a torch device ({e}): give cpu, cuda, cuda:N or mps") from None
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"--device {device} but this machine has no CUDA GPU (or torch was built without CUDA): use --device cpu")
        if d.index is not None and d.index >= n:
            raise ValueError(f"--device {device} but this machine has {n} CUDA device(s): give cuda:0 .. cuda:{n - 1}")
    elif d.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"--device {device} but MPS (Apple GPU) is not available here: use --device cpu")
    elif d.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device}: attnlab trains on cpu, cuda, cuda:N or mps")


@bench_app.callback()
def _bench():
    """Benchmarks: compare attention mechanisms on synthetic tasks."""


@bench_app.command("tasks")
def bench_tasks(
    task: _TaskName,
    mechanisms: Annotated[
        list[str], typer.Option(help="Mechanisms to compare (attnlab list mechanisms): mha,linear or the option repeated.")
    ] = ["mha,linear"],  # noqa: B006 (typer reads the default; it is never mutated)
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per mechanism (0 .. seeds-1).")] = 5,
    task_option: _TaskOption = None,
    executor: Annotated[str, typer.Option(help="process (local pool), ray (pip install ray) or serial.")] = "process",
    workers: Annotated[int | None, typer.Option(min=1, help="Parallel runs (default: one per core).")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch threads per run (default: cores // workers).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps per run.")] = 1000,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per step.")] = 32,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate.")] = 1e-3,
    warmup: Annotated[int | None, typer.Option(min=0, help="Warmup steps (default: a tenth of --steps).")] = None,
    target: Annotated[float | None, typer.Option(help="Stop a run when its test metric reaches this.")] = None,
    eval_every: Annotated[int, typer.Option(min=1, help="Evaluate every this many steps.")] = 100,
    eval_batches: Annotated[int, typer.Option(min=1, help="Test batches per evaluation.")] = 4,
    dim: Annotated[int, typer.Option(min=1, help="Model width.")] = 64,
    heads: Annotated[int, typer.Option(min=1, help="Attention heads.")] = 4,
    layers: Annotated[int, typer.Option(min=1, help="Blocks.")] = 2,
    mlp: Annotated[bool, typer.Option(help="Feed-forward layers (--no-mlp: attention only).")] = True,
    positions: Annotated[str, typer.Option(help="learned, none or rope.")] = "learned",
    causal: Annotated[bool | None, typer.Option("--causal/--encoder", help="Decoder or encoder (default: what the task asks).")] = None,
    out: Annotated[Path, typer.Option(help="Directory for results.json and report.html.")] = Path("attnlab-bench"),
    force: _Force = False,
):
    """Train every mechanism with every seed on one task, same data and budget; print mean ± 95% CI.

    \b
    Example: attnlab bench tasks --task mqar --mechanisms mha,linear,normalized --seeds 5
    """
    from rich.progress import Progress

    from attnlab.models.tiny import check_mechanism
    from attnlab.train import sweep
    from attnlab.train.sweep import make_task

    names = _listed(mechanisms)
    spec, task_options = _task_class_or_name(task), _key_values(task_option, "--task-option")
    sample = make_task(spec, task_options)  # bad tasks and mechanisms fail here, before the progress bar
    for name in names:
        check_mechanism(name, causal=getattr(sample, "causal", True) if causal is None else causal, positions=positions)
    train_options = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "target": target,
        "eval_every": eval_every,
        "eval_batches": eval_batches,
    }
    if warmup is not None:
        train_options["warmup"] = warmup
    _check_out(out, force)
    with Progress(console=console, transient=True) as bar:
        job = bar.add_task(f"{len(names)} mechanisms × {seeds} seeds", total=len(names) * seeds)
        try:
            result = sweep(
                spec, task_options, names, seeds,
                _model_options(dim, heads, layers, mlp, positions, causal), train_options,
                executor=executor, workers=workers, threads=threads, progress=lambda done, total: bar.update(job, completed=done),
            )  # fmt: skip
        except ImportError as e:  # Ray missing: one line, not a traceback
            raise ValueError(str(e)) from e
    table = Table(title=Text(f"{task}: final test metric over {seeds} seeds (mean ± 95% CI half-width)"))
    for col in result.HEADER:
        table.add_column(col)
    for row in result.rows():
        _row(table, *row)
    console.print(table)
    written = _write_outputs(out, result)
    _say(f"wrote {written[0]} and {written[1]} ({result.meta['wall_s']} s)")


def main() -> None:
    """Entry point: the app, whose one error boundary is :class:`_Guarded` (``--debug`` for tracebacks)."""
    app()


if __name__ == "__main__":
    main()
