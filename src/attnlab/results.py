"""One results format: every result (a scan, an edit evaluation, a sweep) is saved and loaded here.

A result file is strict JSON: an object with a ``meta`` block and the fields of its kind.

- ``meta`` is the same for every kind: ``format`` (``"attnlab.result"``), ``kind`` (``"scan"``,
  ``"edit"`` or ``"sweep"``), ``schema`` (:data:`SCHEMA`), ``created`` (the start time, UTC ISO),
  ``wall_s``, ``versions`` (:func:`versions`), ``settings`` (everything that determined the run),
  ``model`` (``identity``, the loader's ``weights`` record when it set one, and what the kind
  knows of the model), then what the kind adds (a scan's ``inputs``, an edit's ``metrics``, a
  sweep's ``target``), and ``non_finite``.
- Non-finite floats are written as ``null`` and their paths listed in ``meta.non_finite``
  (``"findings.sink.bars.sink_rate[3]"``); :func:`read` puts ``nan`` back at those paths (an
  infinity comes back as ``nan`` too: the file records only that the value was not finite).
- Files are written whole to a temporary file beside the target, then renamed over it: a reader
  never sees half a file, and a failed write leaves no file behind. They follow the umask.
- Files of the older formats (scan and edit schema 1, ``"attnlab.sweep/1"``) are refused with a
  ``ValueError`` that says to re-run what wrote them: their meta blocks lack settings and
  provenance that cannot be rebuilt after the fact.

    >>> result = attnlab.results.load("attnlab-scan/results.json")  # doctest: +SKIP
    >>> result.to_pandas()                                           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "FORMAT",
    "KINDS",
    "SCHEMA",
    "EditResult",
    "RepresentResult",
    "Result",
    "ScanResult",
    "atomic_path",
    "file_mode",
    "load",
    "make_meta",
    "model_meta",
    "read",
    "save",
    "to_json",
    "versions",
    "write_atomic",
    "write_together",
]

FORMAT = "attnlab.result"
SCHEMA = 2
KINDS = ("scan", "edit", "sweep", "circuit", "represent")
_OLD = {1: "schema 1", "attnlab.sweep/1": "attnlab.sweep/1"}  # formats before this module, refused with a hint


def versions() -> dict:
    """attnlab, torch, transformers (if installed) and Python versions, and the machine, for provenance."""
    import torch

    import attnlab

    out = {"attnlab": attnlab.__version__, "torch": torch.__version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:
        pass
    out["python"] = platform.python_version()
    out["machine"] = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    return out


def model_meta(model=None, **known) -> dict:
    """The ``meta.model`` block: ``identity``, the loader's ``weights`` record if it set one, then ``known``.

    ``identity`` is ``model.attnlab_identity`` (set by :func:`attnlab.models.hf.load`), else the
    class name, else ``known["identity"]``.
    """
    identity = known.pop("identity", None)
    if model is not None:
        identity = getattr(model, "attnlab_identity", None) or identity or type(model).__name__
    out: dict[str, Any] = {"identity": identity}
    weights = getattr(model, "attnlab_weights", None)
    if weights:
        out["weights"] = dict(weights)
    return {**out, **known}


def make_meta(kind: str, *, settings: dict, model: dict, wall_s: float, started: float | None = None, **extra) -> dict:
    """The meta block of a ``kind`` result.

    Args:
        settings: everything that determined the run.
        model: :func:`model_meta`'s block.
        wall_s: seconds the run took.
        started: ``time.time()`` when the run started (default: now − ``wall_s``).
        extra: what the kind adds (a scan's ``inputs``, an edit's ``metrics``, ...).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown result kind {kind!r}: choose from {', '.join(KINDS)}")
    start = time.time() - wall_s if started is None else started
    return {
        "format": FORMAT,
        "kind": kind,
        "schema": SCHEMA,
        "created": datetime.fromtimestamp(start, timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(wall_s, 2),
        "versions": versions(),
        "settings": settings,
        "model": model,
        **extra,
    }


def _strict(x, path: str, bad: list[str]):
    """``x`` as JSON-ready data: tensors and arrays as lists, non-finite floats as None (their paths in ``bad``)."""
    if isinstance(x, float):
        if math.isfinite(x):
            return x
        bad.append(path)
        return None
    if x is None or isinstance(x, (str, bool, int)):
        return x
    if isinstance(x, dict):
        return {str(k): _strict(v, f"{path}.{k}" if path else str(k), bad) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v, f"{path}[{i}]", bad) for i, v in enumerate(x)]
    if hasattr(x, "tolist"):  # torch tensors, numpy arrays and scalars
        return _strict(x.tolist(), path, bad)
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    raise TypeError(f"cannot store {type(x).__name__} at {path} in a result: give numbers, strings, lists or dicts")


def _restore(x, path: str, paths: set[str]):
    """``x`` with ``nan`` back at the recorded ``paths`` (the inverse of :func:`_strict`)."""
    if x is None:
        return math.nan if path in paths else None
    if isinstance(x, dict):
        return {k: _restore(v, f"{path}.{k}" if path else k, paths) for k, v in x.items()}
    if isinstance(x, list):
        return [_restore(v, f"{path}[{i}]", paths) for i, v in enumerate(x)]
    return x


def to_json(result) -> str:
    """The file text of ``result``: strict JSON, non-finite values as null and listed in ``meta.non_finite``."""
    bad: list[str] = []
    data = _strict(result.to_dict(), "", bad)
    if not isinstance(data.get("meta"), dict):
        raise TypeError(f"{type(result).__name__}.meta must be a dict, got {type(data.get('meta')).__name__}")
    data["meta"] = {**data["meta"], "non_finite": [p for p in bad if not p.startswith("meta.non_finite")]}
    return json.dumps(data, indent=1, allow_nan=False, ensure_ascii=False)


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` sets it to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` gives a new file here: ``0o666`` less the umask."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on a clean exit it is renamed over ``path``.

    The file gets :func:`file_mode` (``tempfile.mkstemp`` creates ``0o600``). On any exception,
    ``KeyboardInterrupt`` included, the temporary file is removed and ``path`` is left as it was.

        >>> with atomic_path("run/checkpoint.pt") as tmp:  # doctest: +SKIP
        ...     torch.save(state, tmp)
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory: give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_atomic(path: str | os.PathLike, text: str | bytes) -> Path:
    """Write ``text`` (or bytes) to ``path`` whole: a temporary file in the same folder, then ``os.replace``.

    The file gets the permissions a plain ``open(path, "w")`` would (:func:`file_mode`); a failed
    write removes the temporary file and leaves ``path`` as it was.
    """
    with atomic_path(path) as tmp:
        if isinstance(text, bytes):
            tmp.write_bytes(text)
        else:
            tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_together(files: dict[str | os.PathLike, str | bytes]) -> list[Path]:
    """Write several files so that they appear together or not at all (results.json and report.html).

    Every text is first written whole to a temporary file beside its target; only when all are
    written are they renamed over their targets, one after the other. A failure (a full disk, a
    Ctrl-C) before the renames leaves every target as it was and no temporary file behind.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for target, text in files.items():
            target = Path(target)
            if target.is_dir():
                raise ValueError(f"{target} is a directory: give a file name")
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            staged.append((Path(tmp), target))
            with os.fdopen(fd, "wb") as f:
                f.write(text if isinstance(text, bytes) else text.encode("utf-8"))
            os.chmod(tmp, file_mode())
        for tmp, target in staged:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        raise
    return [target for _, target in staged]


def save(result, path: str | os.PathLike) -> Path:
    """Write ``result`` (any kind) to ``path`` as strict JSON, atomically."""
    return write_atomic(path, to_json(result))


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not strict JSON")


def read(path: str | os.PathLike, kind: str | None = None) -> dict:
    """The validated JSON object of the result at ``path`` (of ``kind``, if given), ``nan`` restored.

    Raises:
        ValueError: naming ``path`` and what is wrong: missing, not JSON, no meta block, another
            kind, an unknown or older schema.
    """
    path = Path(path)
    what = f"attnlab {kind} result" if kind else "attnlab result"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ValueError(f"{path} does not exist") from e
    except IsADirectoryError as e:
        raise ValueError(f"{path} is a directory: give the results.json in it") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not an {what} (not JSON: {e})") from e
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as e:
        raise ValueError(f"{path} is not an {what} (not JSON: {e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not an {what}: it holds a JSON {type(data).__name__}, not an object with a meta block")
    meta = data.get("meta")
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not an {what}: it has no meta block (an object)")
    if meta.get("schema") in _OLD and meta.get("format") is None:
        raise ValueError(
            f"{path} is an attnlab result of an older format ({_OLD[meta['schema']]}) that this attnlab does not read: "
            f"re-run the scan, edit or sweep that wrote it to get a {FORMAT} file of schema {SCHEMA}"
        )
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an {what}: meta.format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("kind") not in KINDS:
        raise ValueError(f"{path} has an unknown result kind {meta.get('kind')!r}: expected one of {', '.join(KINDS)}")
    if kind and meta["kind"] != kind:
        raise ValueError(f"{path} is not an {what}: it is an attnlab {meta['kind']} result (attnlab.results.load reads any kind)")
    if meta.get("schema") != SCHEMA:
        raise ValueError(f"{path} has schema {meta.get('schema')!r}: this attnlab reads {FORMAT} schema {SCHEMA}; re-run to rewrite it")
    return _restore(data, "", set(meta.get("non_finite") or ()))


class Result:
    """What every result kind shares: ``meta``, :meth:`save`, :meth:`load`, :meth:`report`, :meth:`to_dict`."""

    KIND: ClassVar[str] = ""
    meta: dict

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result as strict JSON (whole, then renamed); non-finite values become null."""
        return save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read a result written by :meth:`save`; a ``ValueError`` says what is wrong with a bad file."""
        return cls._from_dict(read(path, cls.KIND), path)

    @classmethod
    def _from_dict(cls, data: dict, path) -> Result:
        names = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise ValueError(f"{path} is an attnlab {cls.KIND} result without {', '.join(map(repr, missing))}")
        return cls(**{n: data[n] for n in names if n in data})

    def page(self):
        """The report as a :class:`attnlab.report.page.Report` (sections of texts, tables and figures)."""
        raise NotImplementedError

    def html(self, *, standalone: bool = True) -> str:
        """The self-contained interactive HTML report (its JavaScript inlined: no network request)."""
        return self.page().html(standalone=standalone)

    def _repr_html_(self) -> str:
        return self.html(standalone=False)

    def report(self, path: str | os.PathLike, *, figures: Sequence[str] = ()) -> Path:
        """Write the self-contained HTML report; ``figures`` (``"png"``, ``"svg"``) also writes each figure
        as ``figures/<name>.<format>`` beside it."""
        page = self.page()
        out = write_atomic(path, page.html())
        if figures:
            page.write_figures(Path(path).parent / "figures", figures)
        return out


def _frame(rows: list[tuple], columns: list[str], ints: tuple[str, ...] = ()):
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ValueError("to_pandas needs pandas: pip install pandas") from e
    df = pd.DataFrame(rows, columns=columns)
    for c in ints:
        df[c] = df[c].astype("Int64")
    return df


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _value(v) -> float:
    return math.nan if v is None else float(v)


SCAN_COLUMNS = ["probe", "metric", "layer", "head", "position", "token", "value"]
_WHERE = ("layer", "head", "position", "token")


@dataclass
class ScanResult(Result):
    """What a scan found, with everything needed to regenerate it.

    Attributes:
        meta: the meta block (see :mod:`attnlab.results`); ``model`` adds type, layers, heads,
            kv heads and trained positions, and ``inputs`` lists what was run (kind, length);
            ``skipped`` (``{"what", "why"}``) what the defaults left out for this model (an
            encoder's ``probe retrieval``) and ``capped`` (``{"what", "default", "used", "why"}``)
            the default lengths shortened to its trained positions.
        sites: ``{"name", "layer", "num_heads", "num_kv_heads"}`` per attention site.
        findings: per probe, its :class:`attnlab.probes.Findings` as a dict (ids as keys, ``titles``).
        maps: whole attention maps of one short prompt for chosen heads: ``{"layer", "head", "why", "prompt", "tokens",
            "matrix"}``; ``matrix[q][k]`` is None (null) where the mask hides key ``k`` from query ``q``.
    """

    KIND: ClassVar[str] = "scan"

    meta: dict
    sites: list[dict]
    findings: dict[str, dict]
    maps: list[dict] = field(default_factory=list)

    def to_pandas(self):
        """Every number the probes found, as one long table.

        Columns ``probe, metric, layer, head, position, token, value``; what does not apply is
        empty (``<NA>``/None):

        - a heatmap gives a row per (layer, head), ``metric`` its id (``"first_token_mass"``);
        - a bar chart gives a row per layer;
        - a table gives a row per numeric cell (booleans and text are left out), ``metric``
          ``"<table id>.<column>"`` (``"retrieval_heads.score"``), with the row's ``layer``,
          ``head``, ``position`` and ``token`` cells as its coordinates.
        """
        layer_of = [s.get("layer", i) for i, s in enumerate(self.sites)]

        def layer(i: int):
            return layer_of[i] if i < len(layer_of) and layer_of[i] is not None else i

        rows = []
        for probe, f in self.findings.items():
            for mid, grid in f.get("heatmaps", {}).items():
                rows += [(probe, mid, layer(i), h, None, None, _value(v)) for i, row in enumerate(grid) for h, v in enumerate(row)]
            for mid, values in f.get("bars", {}).items():
                rows += [(probe, mid, layer(i), None, None, None, _value(v)) for i, v in enumerate(values)]
            for tid, table in f.get("tables", {}).items():
                for r in table:
                    where = tuple(r.get(k) for k in _WHERE)
                    rows += [(probe, f"{tid}.{k}", *where, float(v)) for k, v in r.items() if k not in _WHERE and _number(v)]
        return _frame(rows, SCAN_COLUMNS, ints=("layer", "head", "position"))

    def page(self):
        """The report: findings, heatmaps, bars, tables and the attention viewer (:mod:`attnlab.report.scan`)."""
        from attnlab.report.scan import build

        return build(self)


@dataclass
class EditResult(Result):
    """Edits and their measured effect.

    Attributes:
        meta: the meta block; ``settings`` holds the edit specs, evaluations and backend,
            ``applied`` the edits as applied (after calibration, if any), ``calibrated`` ``{"edit", "by"}`` per edit that was
            calibrated (``by``: "probe" or a search name; absent in older files), ``metrics`` a summary row per evaluation.
        examples: per evaluation, ``{"before": [...], "after": [...]}``, one value per example.
    """

    KIND: ClassVar[str] = "edit"

    meta: dict
    examples: dict[str, dict[str, list[float]]]

    def to_pandas(self):
        """One row per (evaluation, example): ``metric, example, before, after, difference``."""
        rows = [
            (name, i, _value(b), _value(a), _value(a) - _value(b))
            for name, v in self.examples.items()
            for i, (b, a) in enumerate(zip(v["before"], v["after"]))
        ]
        return _frame(rows, ["metric", "example", "before", "after", "difference"])

    def page(self):
        """The report: the before/after table and per-example differences (:mod:`attnlab.report.edit`)."""
        from attnlab.report.edit import build

        return build(self)


@dataclass
class CircuitResult(Result):
    """What a circuit method found (:mod:`attnlab.circuits`).

    Attributes:
        meta: the meta block; ``settings`` holds the method, points, task or prompts file, pairs
            and options; ``pairs`` the prompt pairs as text (``{"clean", "corrupted", "answer",
            "wrong"}``); ``summary`` the clean and corrupted metric (patching methods; the logit
            difference and the terms' sum for direct logit attribution) and ``agreement``
            (attribution patching against activation patching, when run).
        table: one row per unit: ``point, layer, head, position, metric, score`` (patching
            methods; path patching into several receivers adds ``receiver``) or ``term, kind,
            layer, head, value`` (direct logit attribution).
        grid: the scores as a grid, ``grid_axes`` naming its axes (``["layer", "head"]``,
            ``["layer", "position"]``, ``["sender", "receiver"]``) and ``grid_rows`` labelling its rows.
    """

    KIND: ClassVar[str] = "circuit"

    meta: dict
    table: list[dict]
    grid: list[list[float]]
    grid_axes: list[str]
    grid_rows: list[str]

    def to_pandas(self):
        """The table as a DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.table)

    def page(self):
        """The report: the method's heatmap and top components, the pairs and settings (:mod:`attnlab.report.circuits`)."""
        from attnlab.report.circuits import build

        return build(self)


@dataclass
class RepresentResult(Result):
    """What a representation method found (:mod:`attnlab.represent`).

    Attributes:
        meta: the meta block; ``settings`` holds the method, dataset, models and options;
            ``models`` and ``streams`` each model's identity and stream names (``embed``,
            ``layers.{i}.resid_post``); ``probe`` adds ``pooling`` and ``best`` (per concept: the
            layer of the best accuracy), ``cka`` and ``match`` the ``tokens`` compared.
        table: one row per layer (and concept): ``concept, layer, accuracy, std, control,
            selectivity, chance`` (probe), ``layer_a, layer_b, cka`` (cka), ``layer, matched, best,
            shared_groups, units`` (match), ``layer, group_cosine, consecutive`` (align).
        grid: the layer × layer CKA (``cka``; empty for the other methods).
    """

    KIND: ClassVar[str] = "represent"

    meta: dict
    table: list[dict]
    grid: list[list[float]] = field(default_factory=list)

    def to_pandas(self):
        """The table as a DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.table)

    def page(self):
        """The report: per-layer curves and the layer × layer heatmap (:mod:`attnlab.report.represent`)."""
        from attnlab.report.represent import build

        return build(self)


def _classes() -> dict[str, type[Result]]:
    from attnlab.train.result import SweepResult  # imports this module: import it late

    return {"scan": ScanResult, "edit": EditResult, "sweep": SweepResult, "circuit": CircuitResult, "represent": RepresentResult}


def load(path: str | os.PathLike) -> Result:
    """Read any result: a :class:`ScanResult`, :class:`EditResult`, :class:`CircuitResult`, :class:`RepresentResult` or
    :class:`~attnlab.train.SweepResult` by its kind."""
    data = read(path)
    return _classes()[data["meta"]["kind"]]._from_dict(data, path)
