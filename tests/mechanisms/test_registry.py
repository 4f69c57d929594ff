"""The mechanism registry: registration, lookup by name, and its error messages."""

import pytest
from torch import nn

from attnlab import mechanisms
from attnlab.registry import Registry


@pytest.fixture
def registry(monkeypatch):
    """An empty registry for the test (no package to load), restored afterwards."""
    fresh = Registry("mechanism", "attnlab.mechanisms")
    fresh._loaded = True
    monkeypatch.setattr(mechanisms, "registry", fresh)
    return fresh


def test_register_and_get(registry):
    @mechanisms.register("toy", paper="0", time="O(T)")
    class Toy(nn.Module):
        """A toy mechanism."""

        def __init__(self, dim, heads, *, scale=1.0):
            super().__init__()
            self.dim, self.heads, self.scale = dim, heads, scale

    m = mechanisms.get("toy", dim=8, heads=2, scale=3.0)
    assert (m.dim, m.heads, m.scale) == (8, 2, 3.0)
    (entry,) = mechanisms.available()
    assert (entry.name, entry.paper, entry.time, entry.summary) == ("toy", "0", "O(T)", "A toy mechanism.")


def test_duplicate_name_raises(registry):
    mechanisms.register("toy", paper="0")(nn.Identity)
    with pytest.raises(ValueError, match="registered twice"):
        mechanisms.register("toy", paper="0")(nn.Identity)


def test_unknown_name_suggests_close_names(registry):
    mechanisms.register("hilo", paper="21")(nn.Identity)
    with pytest.raises(ValueError, match=r"unknown mechanism 'hil0' \(did you mean 'hilo'\?\): valid mechanisms are hilo"):
        mechanisms.get("hil0", dim=8, heads=2)


def test_unknown_option_lists_valid_options(registry):
    class Toy(nn.Module):
        def __init__(self, dim, heads, *, window=2):
            super().__init__()

    mechanisms.register("toy", paper="0")(Toy)
    with pytest.raises(TypeError, match="has no option 'windw' \\(did you mean 'window'\\?\\): its options are window"):
        mechanisms.get("toy", dim=8, heads=2, windw=3)
