"""attnlab: a laboratory for attention in transformers.

Every attention computation goes through one site, :func:`attnlab.attend`, where backends
compute, probes observe and edits act. See DESIGN in the docs.

``attnlab.mechanisms``, ``attnlab.probes``, ``attnlab.edits`` and ``attnlab.tasks`` need no
import of their own; :func:`names` and :func:`available` list what each kind offers:
``attnlab.names("probes")``, ``attnlab.available() -> {kind: [names]}``.
"""

from importlib.metadata import PackageNotFoundError, version

from attnlab import edits, mechanisms, probes, tasks  # packages only: their modules load on first use (~15 ms)
from attnlab.core import Edit, Probe, Site, attach, attend, masks
from attnlab.models.graph import Cache, capture, hook_points, intervene
from attnlab.registry import available, names
from attnlab.results import ScanResult
from attnlab.runs.scan import scan

try:
    __version__ = version("attnlab")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

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
