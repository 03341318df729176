"""The public implementations our losses are checked against (tests only).

* mmsegmentation 1.2.2's ``mmseg/models/losses/cross_entropy_loss.py`` and
  ``ohem_cross_entropy_loss.py``, executed as they are. mmseg's package ``__init__`` imports
  mmcv, whose compiled ops have no wheel for this torch, so the two files are loaded
  without it: ``mmseg``, ``mmseg.models`` and ``mmseg.models.losses`` become bare packages
  over the installed folders, and the only names they import from elsewhere (the model
  registry, ``mmengine.fileio.load`` for weights read from a file) get stand-ins that the
  code under test does not call. The stand-ins are removed again once the files are loaded.
* segmentation_models_pytorch 0.6.0's ``DiceLoss``, ``FocalLoss`` and ``LovaszLoss`` (its
  Lovász code is the authors'). It imports torchvision: see ``experiments/torchvision_shim.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

from experiments.torchvision_shim import allow_torchvision_without_extension

_STANDINS = ("mmseg", "mmseg.models", "mmseg.models.losses", "mmseg.registry", "mmengine",
             "mmengine.fileio", "mmengine.utils")


def _registry() -> types.ModuleType:
    class Registry:
        def register_module(self, *args, **kwargs):
            return lambda cls: cls

    module = types.ModuleType("mmseg.registry")
    module.MODELS = Registry()
    return module


def mmseg_losses() -> types.SimpleNamespace:
    """mmseg's ``CrossEntropyLoss`` and ``OhemCrossEntropy`` classes."""
    spec = importlib.util.find_spec("mmseg")  # finds the package without running its __init__
    root = spec.submodule_search_locations[0]
    saved = {name: sys.modules.get(name) for name in _STANDINS}
    try:
        for name, path in (("mmseg", root), ("mmseg.models", f"{root}/models"),
                           ("mmseg.models.losses", f"{root}/models/losses")):
            package = types.ModuleType(name)
            package.__path__ = [path]
            sys.modules[name] = package
        sys.modules["mmseg.registry"] = _registry()
        fileio = types.ModuleType("mmengine.fileio")
        fileio.load = lambda *a, **k: (_ for _ in ()).throw(AssertionError("not used"))
        utils = types.ModuleType("mmengine.utils")
        utils.is_list_of = lambda seq, kind: all(isinstance(x, kind) for x in seq)
        sys.modules.update({"mmengine": types.ModuleType("mmengine"), "mmengine.fileio": fileio,
                            "mmengine.utils": utils})
        ce = importlib.import_module("mmseg.models.losses.cross_entropy_loss")
        ohem = importlib.import_module("mmseg.models.losses.ohem_cross_entropy_loss")
        return types.SimpleNamespace(CrossEntropyLoss=ce.CrossEntropyLoss,
                                     OhemCrossEntropy=ohem.OhemCrossEntropy)
    finally:
        for name in ("mmseg.models.losses.cross_entropy_loss",
                     "mmseg.models.losses.ohem_cross_entropy_loss", "mmseg.models.losses.utils"):
            sys.modules.pop(name, None)
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def smp_losses() -> types.ModuleType:
    allow_torchvision_without_extension()
    return importlib.import_module("segmentation_models_pytorch.losses")
