"""attnlab: a laboratory for attention in transformers.

Every attention computation goes through one site, :func:`attnlab.attend`, where backends
compute, probes observe and edits act. See DESIGN in the docs.

``attnlab.mechanisms``, ``attnlab.probes``, ``attnlab.edits`` and ``attnlab.tasks`` need no
import of their own; :func:`names` and :func:`available` list what each kind offers:
``attnlab.names("probes")``, ``attnlab.available() -> {kind: [names]}``.
"""

import importlib
import importlib.util
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("attnlab")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# Names load on first use (PEP 562), so `import attnlab` and `attnlab --version` do not import torch.
_LAZY = {
    "Edit": "attnlab.core",
    "Probe": "attnlab.core",
    "Site": "attnlab.core",
    "attach": "attnlab.core",
    "attend": "attnlab.core",
    "masks": "attnlab.core",
    "Cache": "attnlab.models.graph",
    "capture": "attnlab.models.graph",
    "hook_points": "attnlab.models.graph",
    "intervene": "attnlab.models.graph",
    "available": "attnlab.registry",
    "names": "attnlab.registry",
    "ScanResult": "attnlab.results",
    "scan": "attnlab.runs.scan",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"attnlab.{name}") is not None:
        value = importlib.import_module(f"attnlab.{name}")  # a subpackage: attnlab.probes, attnlab.models, ...
    else:
        raise AttributeError(f"module 'attnlab' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "Cache",
    "Edit",
    "Probe",
    "ScanResult",
    "Site",
    "__version__",
    "attach",
    "attend",
    "available",
    "capture",
    "edits",
    "hook_points",
    "intervene",
    "masks",
    "mechanisms",
    "names",
    "probes",
    "scan",
    "tasks",
]
