"""timm, the reference implementation of the ImageNet recipe's augmentations and schedule
(tests only). It imports torchvision: see ``experiments/torchvision_shim.py``."""

from experiments.torchvision_shim import allow_torchvision_without_extension


def import_timm():
    allow_torchvision_without_extension()
    import timm
    return timm
