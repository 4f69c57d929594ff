"""attnlab: a laboratory for attention in transformers.

Every attention computation goes through one site, :func:`attnlab.attend`, where backends
compute, probes observe and edits act. See DESIGN in the docs.
"""

from importlib.metadata import PackageNotFoundError, version

from attnlab.core import Site, attach, attend, masks
from attnlab.scanner import ScanResult, scan

try:
    __version__ = version("attnlab")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["ScanResult", "Site", "__version__", "attach", "attend", "masks", "scan"]
