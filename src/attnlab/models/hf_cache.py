"""The model cache: where GGUF conversions are kept, and how they are written, shared and checked.

``$ATTNLAB_CACHE`` (or ``~/.cache/attnlab``) holds:

- ``models/<key>/``: one GGUF file's float32 conversion (``model.safetensors``, ``config.json``,
  tokenizer files) and ``attnlab-source.json``, which records the GGUF's sha256 and quantisation
  and the size and sha256 of every file as it was written;
- ``models/<key>.lock``: held (``filelock``) by the process converting or repairing that model;
- ``sha256.json``: remembered hashes of users' weight files.

What holds: a conversion is written in ``models/.tmp-<key>~XXXXXXXX`` and renamed whole, so the
cache never holds half a model; two processes converting one GGUF convert it once (the second
waits for the lock, then finds the conversion); a temp folder left by a killed conversion is
removed at the next load, under the lock; a cached file whose size (always), safetensors header
(always) or sha256 (small files always, every file with ``verify``) differs from what was written
is rebuilt with a message; files and folders follow the umask.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["cache_root", "check_writable", "damage", "safetensors_problem"]

RECORD = "attnlab-source.json"
SMALL = 16 << 20  # files up to this size are hashed on every load (config, tokenizer: milliseconds)


def cache_root() -> Path:
    """Where converted models are kept: ``$ATTNLAB_CACHE`` or ``~/.cache/attnlab``."""
    return Path(os.environ.get("ATTNLAB_CACHE") or Path.home() / ".cache" / "attnlab")


def check_writable(folder: Path | None = None) -> Path:
    """The cache folder (or ``folder`` inside it), made if missing; a ``ValueError`` saying how to fix it if it cannot be written."""
    folder = cache_root() if folder is None else folder
    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(0, "it is a file")
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise ValueError(
            f"the attnlab cache {folder} is not a writable folder ({why}): set ATTNLAB_CACHE to a writable folder "
            f"(export ATTNLAB_CACHE=$HOME/attnlab-cache), or fix the permissions of {folder}"
        ) from None
    return folder


# --- writing whole, shared as the umask says ------------------------------------------------------


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask sets it, briefly, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share(path: Path) -> None:
    """Give a folder (and the files in it) or a file the modes a plain ``mkdir``/``open`` would (umask)."""
    mask = _umask()
    if path.is_dir():
        for f in path.iterdir():
            if f.is_file():
                f.chmod(0o666 & ~mask)
        path.chmod(0o777 & ~mask)
    else:
        path.chmod(0o666 & ~mask)


def write_json(path: Path, data: dict) -> None:
    """Write JSON whole or not at all (several processes share the cache); a read-only cache is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    except OSError:  # a read-only cache: what it remembers is recomputed next time
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        share(Path(tmp))
        os.replace(tmp, path)
    except OSError:  # a full disk: likewise
        Path(tmp).unlink(missing_ok=True)


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def write_whole(out: Path, fill: Callable[[Path], None], record: dict) -> None:
    """Make folder ``out`` whole or not at all: ``fill`` writes into a temp folder, renamed when done.

    The size and sha256 of every file ``fill`` wrote go into ``out/attnlab-source.json`` with
    ``record``. Hold :func:`converting`'s lock around it.
    """
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}~"))
    try:
        fill(tmp)
        files = {f.name: {"size": f.stat().st_size, "sha256": hash_file(f)} for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / RECORD).write_text(json.dumps({**record, "files": files}, indent=1))
        share(tmp)  # mkdtemp makes 0700, safetensors writes 0600: a shared cache must be readable
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --- the lock and what a killed conversion leaves ---------------------------------------------------


def _stale(out: Path) -> list[Path]:
    """Temp folders of ``out``'s conversions (their owner is dead when nobody holds the lock).

    Also those of attnlab versions before the lock (``.tmp-XXXXXXXX``, any model) once an hour old.
    """
    own, legacy = re.compile(re.escape(f".tmp-{out.name}~") + r"[a-z0-9_]{8}"), re.compile(r"\.tmp-[a-z0-9_]{8}")
    if not out.parent.is_dir():
        return []
    old = time.time() - 3600
    return [
        p for p in out.parent.glob(".tmp-*") if p.is_dir() and (own.fullmatch(p.name) or (legacy.fullmatch(p.name) and _mtime(p) < old))
    ]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile
        return float("inf")


def _lock(out: Path):
    from filelock import FileLock

    return FileLock(out.parent / f"{out.name}.lock")


@contextlib.contextmanager
def converting(out: Path, what: str, progress: bool = True) -> Iterator[None]:
    """Hold ``out``'s lock (saying so while another process holds it) and clear its stale temp folders."""
    from filelock import Timeout

    lock = _lock(out)
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if progress:
                print(f"attnlab: waiting for another process converting {what} (lock {lock.lock_file})", flush=True)
            lock.acquire()
    except OSError as e:
        raise ValueError(
            f"cannot take the lock {lock.lock_file} ({e.strerror or e}): set ATTNLAB_CACHE to a writable folder of your own, "
            "or fix the permissions of the cache"
        ) from None
    try:
        for p in _stale(out):
            shutil.rmtree(p, ignore_errors=True)
        yield
    finally:
        lock.release()


def clear_stale(out: Path) -> None:
    """Remove ``out``'s stale temp folders if nobody converts it now; a read-only cache is left alone."""
    if not _stale(out):
        return
    from filelock import Timeout

    lock = _lock(out)
    try:
        lock.acquire(timeout=0)
    except (Timeout, OSError):
        return
    try:
        for p in _stale(out):
            shutil.rmtree(p, ignore_errors=True)
    finally:
        lock.release()


# --- checking what was written ----------------------------------------------------------------------


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (its header's length and tensor offsets), or None.

    Reads the header only: a truncated or overwritten file is found in microseconds.
    """
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if 8 + n > size:
                return f"size {size}, its header alone needs {8 + n}"
            header = json.loads(f.read(n))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    except (struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return f"size {size}, no readable safetensors header"
    expected = 8 + n + max(ends, default=0)
    return None if size == expected else f"size {size}, expected {expected}"


def damage(out: Path, *, verify: bool = False) -> str | None:
    """Why the cached folder ``out`` is not as it was written, ``"missing"`` if it is not there, or None.

    Checks every file's size against ``attnlab-source.json``, the safetensors header, and the
    sha256 of small files (of all files with ``verify``). A folder from before sizes were recorded
    is checked by its header alone.
    """
    if not (out / "model.safetensors").is_file() or not (out / "config.json").is_file():
        return "missing"
    try:
        files = json.loads((out / RECORD).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        files = {}
    for name, want in files.items():
        f = out / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{name}: size {size}, expected {want['size']}"
    problem = safetensors_problem(out / "model.safetensors")
    if problem is not None:
        return f"model.safetensors: {problem}"
    for name, want in files.items():
        if (verify or want["size"] <= SMALL) and (got := hash_file(out / name)) != want["sha256"]:
            return f"{name}: sha256 {got[:12]}…, expected {want['sha256'][:12]}…"
    return None
