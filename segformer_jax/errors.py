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


class DamagedCheckpointError(CheckpointError):
    """A checkpoint whose files on disk cannot be read back as they were written (missing,
    truncated or changed files; arrays that differ from the fingerprint saved with them)."""


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


class NonFiniteError(TrainingError):
    """A training state holding NaN or Inf: never saved as a checkpoint."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception from another library as one short line: its type and the first line of
    its message (TensorStore's carry kilobytes of JSON after it)."""
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    text = text.split(" [source locations=")[0].split(" See full TensorStore details")[0]
    return f"{type(error).__name__}: {text[:limit]}{'…' if len(text) > limit else ''}"
