"""Package attributes that import their module on first use, to keep heavy imports off paths
that do not need them (torch for the safetensors write path, pandas for worker processes)."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any


class _LazyPackage(types.ModuleType):
    """A package whose lazy attribute keeps its value when a submodule of the same name loads.

    Importing `pkg.extrapolate` binds the module `pkg.extrapolate` on `pkg`, over the function
    `extrapolate` the package exports from it; here the function is bound instead, as an eager
    `from .extrapolate import extrapolate` in the package's __init__ would leave it.
    """

    _lazy_where: Mapping[str, str]

    def __setattr__(self, name: str, value: Any) -> None:
        module_name, _, attr = self._lazy_where.get(name, "").partition(":")
        if attr and isinstance(value, types.ModuleType) and value.__name__ == module_name:
            value = getattr(value, attr)
        super().__setattr__(name, value)


def lazy_getattr(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level __getattr__ for `package`: `where` maps a name to "module:attribute", or
    to "module" for the module itself; each is imported when first asked for, then kept."""
    module = sys.modules.get(package)
    if module is not None and type(module) is types.ModuleType:
        module.__dict__["_lazy_where"] = dict(where)
        module.__class__ = _LazyPackage

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
