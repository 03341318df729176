"""One experiments/ script used from another. experiments/ is not a package (its files run as
``python experiments/NAME.py``), so a sibling is imported by its path, once per process."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType


def load_sibling(name: str) -> ModuleType:
    """``experiments/NAME.py`` as the module ``_experiments_NAME``."""
    module_name = f"_experiments_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = pathlib.Path(__file__).resolve().with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module
