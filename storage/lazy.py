"""Lazy package exports (PEP 562): ``from storage import Database`` imports ``storage.database`` on first use.

A package's ``__init__`` names what it exports and from which module; nothing is imported until a name is
asked for. This keeps ``import bot`` / ``import workflows`` / ``import storage`` cheap, so a CLI command
(``threadflow --help`` above all) pays only for the modules it uses.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any


def lazy_exports(namespace: dict[str, Any], exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package whose ``namespace`` (its ``globals()``) exports ``exports``.

    ``exports`` maps each public name to the submodule (relative, like ``".database"``) that defines it.
    A name, once imported, is stored in the package's namespace, so later lookups cost nothing.
    """
    package = str(namespace["__name__"])

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__


def keep_exports_over_submodules(package: str, names: frozenset[str]) -> None:
    """Keep exported functions that share their submodule's name (``workflows.step``) bound to the function.

    Importing a submodule binds it on its package (``workflows.step = <module>``). An eager ``from .step
    import step`` in ``__init__`` rebinds the name to the function once; with lazy exports the submodule can be
    imported later, by anyone, so the package refuses to let such a submodule replace the function.
    """
    module = sys.modules[package]

    class _Package(ModuleType):
        def __setattr__(self, name: str, value: Any) -> None:
            if name in names and isinstance(value, ModuleType) and value.__name__ == f"{package}.{name}":
                value = getattr(value, name)
            super().__setattr__(name, value)

    module.__class__ = _Package
