"""Every error this library raises on bad input, in one place.

Each names the file, key or value at fault in its message. They derive from ``ValueError``
(``TrainingError`` from ``RuntimeError``: the input was fine, the run could not go on), so a
command line catches ``SegformerError`` and prints one line; nothing here imports anything.
"""

from __future__ import annotations


class SegformerError(Exception):
    """Base of the errors below: a command line prints its message as one ``error:`` line."""


class ConfigError(SegformerError, ValueError):
    """A config value or a config file that cannot describe a SegFormer or a run."""


class CheckpointError(SegformerError, ValueError):
    """A checkpoint or weight file that cannot be read as, or does not fit, the model."""


class DatasetError(SegformerError, ValueError):
    """A dataset that cannot be built or read: a missing archive, a bad image, mask or label."""


class ProcessingError(SegformerError, ValueError):
    """An image or mask the image processor cannot turn into model inputs."""


class InputError(SegformerError, ValueError):
    """An input image or an option of ``predict`` that cannot be used."""


class EvaluationError(SegformerError, ValueError):
    """A model, dataset and test settings that cannot be evaluated together."""


class TrainingError(SegformerError, RuntimeError):
    """A run that cannot start or continue; the message says why and what was kept."""
