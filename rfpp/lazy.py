"""Lazy package exports (PEP 562): a package's `from .sub import a, b` lines, run on first use instead of at import,
so that a torch-free submodule (rfpp.losses.kinds, read by rfpp.config) loads without the torch-heavy ones.

Not lazy_loader.attach: it binds only the name asked for, and a later import of a submodule that shares a name
with an export (rfpp.sampling.straightness, the module and the function) then rebinds the name to the module;
here every export is bound after its submodules are imported, as the eager lines did."""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any


def exports(package: str, imports: dict[str, tuple[str, ...]]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: the first time one of the exported names is asked for, import every
    submodule of `imports` in order and bind its names in the package, exactly as the eager `from .sub import …`
    lines would have."""
    exported = {name for names in imports.values() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in exported:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        here = sys.modules[package]
        modules = {sub: import_module(f"{package}.{sub}") for sub in imports}
        for sub, names in imports.items():
            for export in names:
                setattr(here, export, getattr(modules[sub], export))
        return getattr(here, name)

    return __getattr__


def names(imports: dict[str, tuple[str, ...]]) -> list[str]:
    """The package's `__all__`: every exported name, sorted."""
    return sorted(name for names in imports.values() for name in names)
