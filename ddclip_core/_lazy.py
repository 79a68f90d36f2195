"""A package's public names, imported on first use (PEP 562).

``import ddclip_core`` then costs no torch import, so the command line's --help and argument errors,
and a node refusing bad parameters, answer at once instead of after seconds of imports."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[dict[str, str], Callable[[str], Any], Callable[[], list[str]]]:
    """(name -> submodule, the package's ``__getattr__``, its ``__dir__``) for ``exports``, a map of
    submodule -> the names it exports, separated by spaces."""
    module_of = {name: module for module, names in exports.items() for name in names.split()}

    def getattr_(name: str) -> Any:
        module = module_of.get(name)
        if module is None:  # a submodule (`ddclip_core.bank`), as an eager package would have it
            try:
                return importlib.import_module(f".{name}", package)
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{name}":
                    raise  # the submodule exists but needs something missing: say what
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(f".{module}", package), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def dir_() -> list[str]:
        return sorted({*vars(sys.modules[package]), *module_of})

    return module_of, getattr_, dir_
