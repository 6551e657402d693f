"""Package attributes that import their module on first use, to keep heavy imports off paths
that do not need them (torch for the safetensors write path, pandas for worker processes)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level __getattr__ for `package`: `where` maps a name to "module:attribute", or
    to "module" for the module itself; each is imported when first asked for, then kept."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module_name, _, attr = where[name].partition(":")
        value = importlib.import_module(module_name)
        if attr:
            value = getattr(value, attr)
        # Kept on the package, also over a submodule of the same name that the import bound.
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
