"""Layering: probes and edits observe and act; only runs (attnlab.runs) load or run models.

Probes (``attnlab.probes``) and edits (``attnlab.edits``) keep options, state and their events;
they import nothing from ``attnlab.models`` and never call a model. Events are declared methods
on ``attnlab.core.Probe`` / ``attnlab.core.Edit``, so nothing discovers them with ``hasattr``.
"""

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import attnlab
import attnlab.edits
import attnlab.probes

SRC = Path(attnlab.__file__).parent
OBSERVERS = ("probes", "edits")


def _modules(package) -> list[str]:
    return [package.__name__] + [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]


def _source(name: str) -> str:
    return Path(importlib.import_module(name).__file__).read_text(encoding="utf-8")


MODULES = _modules(attnlab.probes) + _modules(attnlab.edits)


def _imports_models(tree: ast.AST) -> list[str]:
    """Every ``import attnlab.models...``, ``from attnlab.models... import``, ``from attnlab import models``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name == "attnlab.models" or a.name.startswith("attnlab.models.")]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "attnlab.models" or node.module.startswith("attnlab.models."):
                found.append(node.module)
            elif node.module == "attnlab" and any(a.name == "models" for a in node.names):
                found.append("attnlab.models")
    return found


@pytest.mark.parametrize("name", MODULES)
def test_probes_and_edits_import_nothing_from_models(name):
    assert _imports_models(ast.parse(_source(name))) == [], f"{name} imports attnlab.models: move what runs a model to attnlab.runs"


def test_the_import_check_sees_every_spelling():
    tree = ast.parse(
        "import attnlab.models.hf\nfrom attnlab.models import hf\nfrom attnlab import models\ndef f():\n    from attnlab.models.hf import sites\n"
    )
    assert _imports_models(tree) == ["attnlab.models.hf", "attnlab.models", "attnlab.models", "attnlab.models.hf"]


def test_importing_probes_and_edits_loads_no_model_module():
    # attnlab/__init__.py imports conveniences from everywhere: stand a bare package in for it, so
    # that only what the probes and edits themselves import gets loaded
    code = (
        "import importlib.util, sys, types\n"
        "pkg = types.ModuleType('attnlab')\n"
        "pkg.__path__ = list(importlib.util.find_spec('attnlab').submodule_search_locations)\n"
        "sys.modules['attnlab'] = pkg\n"
        "import attnlab.probes, attnlab.edits\n"
        "attnlab.edits.names(); attnlab.probes.names()\n"  # the registries import every edit and probe file
        "print(len(attnlab.edits.names()), sorted(m for m in sys.modules if m == 'attnlab.models' or m.startswith('attnlab.models.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    count, loaded = out.stdout.strip().split(" ", 1)
    assert int(count) >= 8 and loaded == "[]", out.stdout


@pytest.mark.parametrize("name", MODULES)
def test_probes_and_edits_never_call_a_model(name):
    calls = [line for line in _source(name).splitlines() if re.search(r"\bmodel\(", line)]
    assert calls == [], f"{name} calls a model: {calls}"


def test_no_hasattr_dispatch_in_probes_edits_runs_and_core():
    found = [
        f"{path.relative_to(SRC)}:{i}: {line.strip()}"
        for pkg in ("probes", "edits", "runs", "core")
        for path in sorted((SRC / pkg).rglob("*.py"))
        if not path.relative_to(SRC).as_posix().startswith("core/backends/")  # backends are neither probes nor edits
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "hasattr(" in line
    ]
    assert found == [], "declare the event on attnlab.core.Probe / Edit instead of discovering it:\n" + "\n".join(found)
