"""Package attributes loaded on first use (PEP 562), so that importing a package for its
light parts (a config, a parser) does not load TensorFlow."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_attributes(package: str, where: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` that imports `where[name]` and returns its `name`.

    Example (in a package's `__init__.py`):
        >>> __getattr__ = lazy_attributes(__name__, {"VAE": "model.vae"})
    """

    def __getattr__(name: str):
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
