"""timm, the reference implementation of the ImageNet recipe's augmentations and schedule.

Tests only. timm imports torchvision; the torchvision wheel on the package registry is a
CUDA build whose C extension cannot load next to this project's CPU-only torch, and then its
import fails while registering kernels for that extension's operators (NMS, RoI pooling).
timm's augmentations, schedulers and losses use none of those: empty stand-ins for the two
registration modules let ``import torchvision`` (and so timm) succeed with every
pure-Python transform intact.
"""

import sys
import types


def import_timm():
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(name, types.ModuleType(name))
    import timm
    return timm
