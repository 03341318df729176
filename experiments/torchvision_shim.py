"""Lets ``import torchvision`` succeed when its C extension cannot load (test environments).

The torchvision wheel on the package registry is a CUDA build; next to this project's
CPU-only torch its C extension does not load, and ``import torchvision`` then fails while
registering fake kernels for that extension's operators (NMS, RoI pooling). transformers
imports torchvision whenever it is installed, and timm (the augmentation oracle) always
does; neither uses those operators here. Empty stand-ins for the two registration modules
let the import succeed with every pure-Python part intact. Call before importing
transformers or timm; it changes nothing when the extension loads.
"""

import importlib.util
import sys
import types


def allow_torchvision_without_extension() -> None:
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torch  # noqa: F401  (the extension needs torch's libraries loaded first)
        torch.ops.load_library(importlib.util.find_spec("torchvision._C").origin)
        return  # a matching build: nothing to do
    except (OSError, RuntimeError, AttributeError, ImportError):
        pass
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(name, types.ModuleType(name))
