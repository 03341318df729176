"""Training and evaluation batches from a random-access source, deterministic given (seed, step).

Training (:class:`TrainBatches`): the examples form an endless stream, epoch after epoch; the
order within epoch ``e`` is ``default_rng([seed, e]).permutation(N)``. Global batch ``s`` is
stream positions ``s*B .. s*B + B - 1`` (a batch may straddle two epochs; nothing is dropped),
and the example at position ``j`` of that batch is augmented with
``default_rng([seed, s, j])``. So batch ``s`` is a pure function of (seed, s): a run resumed
at step ``k`` (``start_step=k``) sees exactly the batches it would have seen, and the only
state to checkpoint is the step. With ``process_count`` P > 1, process ``p`` reads and
augments only rows ``p*B/P .. (p+1)*B/P - 1`` of each global batch; the rows of all
processes together are the batch a single process would make.

A thread pool decodes and augments the examples of the next ``prefetch`` batches while the
current one is used (PIL's decoding and resampling, and numpy's big array operations, release
the GIL). ``ProcessBatches`` makes the same batches in worker processes instead (grain's
``MapDataset`` over the steps, ``mp_prefetch``): each worker computes whole batches, a
batch being a pure function of (seed, step) (``BatchOfStep``), so they are bit-identical to
the threads' and a resumed run needs no iterator state either. Threads share one process's
GIL; processes cost a start-up (each imports the data stack) and a copy of every batch
through shared memory.

Given ``num_labels``, every record's stored mask is checked as it is read (one ``max``, and
the distinct values only when the max is out of range): a label outside the classes, in any
batch, stops the run with ``DatasetError`` naming the record and its file (``label_problem``,
the one rule that ``data.check`` and the trainer's preflight apply too), instead of training
it silently as ignored pixels. The batches themselves are not changed.

A record that cannot be read (a damaged built dataset) raises ``DatasetError`` naming the
record and the dataset's directory.

Evaluation (:func:`eval_batches`): every example once, in order, transformed without
randomness; batch size 1 by default since image sizes differ.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from segformer_jax.data.transforms import IGNORE_INDEX, EvalTransform, as_example
from segformer_jax.errors import DatasetError, SegformerError

Transform = Callable[..., Mapping[str, Any]]


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    order.setflags(write=False)
    return order


def global_batch_indices(num_examples: int, global_batch_size: int, seed: int,
                         step: int) -> np.ndarray:
    """The dataset indices of global batch ``step``: (global_batch_size,) int64."""
    if num_examples < 1:
        raise ValueError("the dataset is empty")
    positions = step * global_batch_size + np.arange(global_batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, num_examples)
    out = np.empty(global_batch_size, np.int64)
    for epoch in np.unique(epochs):
        rows = epochs == epoch
        out[rows] = _permutation(int(seed), int(epoch), int(num_examples))[offsets[rows]]
    return out


def process_rows(global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> range:
    """The rows of each global batch that process ``process_index`` reads."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in 0..{process_count - 1}")
    if global_batch_size % process_count:
        raise ValueError(f"global batch size {global_batch_size} is not a multiple of the "
                         f"{process_count} processes")
    per_process = global_batch_size // process_count
    return range(process_index * per_process, (process_index + 1) * per_process)


# --------------------------------------------------------------------------------------
# Labels out of range, records that cannot be read


PREFLIGHT_BATCHES = 2  # global batches whose records the trainer checks before its first step


def label_problem(values: Iterable[int], num_labels: int, where: str,
                  reduce_zero_label: bool = False) -> str | None:
    """The message for label values outside ``0..num_labels-1`` and not ``IGNORE_INDEX``, as
    the model sees them (after ``reduce_zero_label``: 0 -> ignore, k -> k - 1); None when all
    are fine. ``values`` are the stored values."""
    values = np.unique(np.asarray(list(values), np.int64))
    seen = values
    if reduce_zero_label:  # mmseg's rule: 0 -> ignore, ignore stays, k -> k - 1
        seen = np.where((values == 0) | (values == IGNORE_INDEX), IGNORE_INDEX, values - 1)
    wrong = ((seen < 0) | (seen >= num_labels)) & (seen != IGNORE_INDEX)
    if not wrong.any():
        return None
    stored, bad = values[wrong], seen[wrong]
    reduced = " (stored; reduce_zero_label maps k to k - 1)" if reduce_zero_label else ""
    hint = ""
    if not reduce_zero_label and set(bad.tolist()) == {num_labels}:  # only K itself: maybe 1..K
        # one record is no proof: a stray K in 0-based masks looks the same, and this setting
        # would shift every correct label (data.check judges from all the masks)
        hint = ("; if the ids are 1-based with 0 = unlabelled, set data.reduce_zero_label=True "
                "(0 is then ignored and k trains as class k - 1)" if values.min() == 0 else
                "; if the ids are 1-based, set data.reduce_zero_label=True (k trains as class "
                "k - 1)")
    return (f"{where}: label value(s) {stored[:10].tolist()}{reduced} out of range: {num_labels} "
            f"classes, so labels must be 0..{num_labels - 1} or {IGNORE_INDEX} (ignore){hint}")


def record_label_problem(record: Mapping[str, Any], index: int, num_labels: int,
                         reduce_zero_label: bool) -> str | None:
    """``label_problem`` of one record's stored mask, naming the record and its file; None
    for a record without a mask (classification) or with every label in range. Costs one
    ``max`` of the mask when all is well, one more elementwise pass when it holds 255; the
    values are sorted (``np.unique``) only for a mask that is wrong."""
    mask = record.get("segmentation_mask") if isinstance(record, Mapping) else None
    if mask is None:
        return None
    mask = np.asarray(mask)
    top = num_labels if reduce_zero_label else num_labels - 1  # the largest good stored value
    if mask.size == 0 or (mask.max() <= top and (mask.dtype.kind == "u" or mask.min() >= 0)):
        return None
    # Above top: 255 (ignore) is fine, and most datasets have it; one more pass, no sort.
    if not (((mask > top) & (mask != IGNORE_INDEX)) | (mask < 0)).any():
        return None
    name = record.get("file_name", b"")
    name = name.decode() if isinstance(name, bytes) else str(name)
    problem = label_problem(np.unique(mask).tolist(), num_labels, f"record {int(index)} ({name})",
                            reduce_zero_label)
    return None if problem is None else (problem + "; run python -m segformer_jax.data.check "
                                         "for the whole dataset")


def preflight(source: Any, indices: Iterable[int], num_labels: int,
              reduce_zero_label: bool) -> None:
    """The trainer's cheap check: the stored masks of records ``indices`` (its first
    batches) hold no out-of-range label; raises ``DatasetError`` naming the file and value.
    (The input pipeline applies the same rule to every record it reads afterwards.)"""
    for i in indices:
        problem = record_label_problem(source[int(i)], int(i), num_labels, reduce_zero_label)
        if problem is not None:
            raise DatasetError(problem)


def class_pixel_statistics(source: Any, num_labels: int, reduce_zero_label: bool,
                           progress: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Over every record of ``source``: the pixels of each class (as trained: after
    ``reduce_zero_label``, ignored pixels left out) and the pixels of the images in which
    each class appears, the two inputs of median frequency balancing."""
    class_pixels = np.zeros(num_labels, np.int64)
    image_pixels = np.zeros(num_labels, np.int64)
    for i in range(len(source)):
        mask = np.asarray(source[i]["segmentation_mask"]).astype(np.int64).ravel()
        if reduce_zero_label:
            mask = np.where((mask == 0) | (mask == IGNORE_INDEX), IGNORE_INDEX, mask - 1)
        counts = np.bincount(mask[(mask >= 0) & (mask < num_labels)], minlength=num_labels)
        class_pixels += counts
        image_pixels += np.where(counts > 0, mask.size, 0)
        if progress is not None:
            progress(i + 1, len(source))
    return class_pixels, image_pixels


def _dataset_directory(source: Any) -> str | None:
    """The directory a TFDS data source reads (``dataset_info.data_dir``), if it is one."""
    info = getattr(source, "dataset_info", None)
    directory = getattr(info, "data_dir", None)
    return None if directory is None else str(directory)


def read_record(source: Any, index: int) -> Mapping[str, Any]:
    """``source[index]``; a record that cannot be read (a truncated or corrupted file of a
    built dataset) raises ``DatasetError`` naming the record and the dataset's directory."""
    try:
        return source[int(index)]
    except SegformerError:
        raise
    except Exception as e:  # noqa: BLE001 - ArrayRecord and TFDS raise RuntimeError, OSError, ...
        from segformer_jax.data.common import damaged_message
        directory = _dataset_directory(source)
        what = f"record {int(index)} cannot be read: {type(e).__name__}: {e}"
        raise DatasetError(damaged_message(directory, what, e) if directory else what) from None


def _train_example(source: Any, transform: Transform, index: int, seed: int, step: int,
                   position: int, labels: tuple[int, bool] | None = None) -> Mapping[str, Any]:
    rng = np.random.default_rng([seed, step, position])
    record = read_record(source, index)
    if labels is not None:
        problem = record_label_problem(record, index, *labels)
        if problem is not None:
            raise DatasetError(problem)
    return transform(as_example(record), rng)


def _collate(examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    shapes = {np.shape(e["image"]) for e in examples}
    if len(shapes) > 1:
        raise ValueError(f"the transform returned images of different sizes {sorted(shapes)}; "
                         f"a training transform must crop and pad to a fixed size")
    return {"image": np.stack([np.asarray(e["image"], np.float32) for e in examples]),
            "label": np.stack([np.asarray(e["label"]).astype(np.int32) for e in examples])}


def default_num_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class BatchOfStep:
    """Batch ``step`` of this process's ``rows``: ``(step) -> {"image", "label"}``, a pure
    function of (seed, step). A plain object of picklable parts, so that a worker process
    computes the very batch the calling process would."""

    def __init__(self, source: Any, transform: Transform, global_batch_size: int, seed: int,
                 rows: range, labels: tuple[int, bool] | None = None):
        self.source, self.transform = source, transform
        self.global_batch_size, self.seed, self.rows, self.labels = global_batch_size, seed, rows, labels

    def indices(self, step: int) -> np.ndarray:
        """The dataset indices this process reads for batch ``step``."""
        full = global_batch_indices(len(self.source), self.global_batch_size, self.seed, step)
        return full[self.rows.start:self.rows.stop]

    def example_args(self, step: int) -> list[tuple]:
        """``_train_example``'s arguments for each row of batch ``step``."""
        return [(self.source, self.transform, index, self.seed, step, position, self.labels)
                for position, index in zip(self.rows, self.indices(step))]

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        return _collate([_train_example(*args) for args in self.example_args(int(step))])


class TrainBatches:
    """Iterator over training batches ``{"image": f32 (b, H, W, 3), "label": i32 (b, H, W)}``.

    Each batch holds this process's rows of the global batch: ``rows`` when given (training
    takes them from the device mesh), else the ``process_index``-th of ``process_count`` equal
    slices. Iteration starts at ``start_step`` and runs for
    ``num_steps`` batches (endless if None); ``next_step`` is the step of the next batch (what
    a checkpoint stores). ``batch(step)`` computes any batch directly, without the pool.
    Close the iterator (or use it as a context manager) to stop its threads.

    ``num_labels`` (None: no check) and ``reduce_zero_label`` (how the stored values are
    read): every record's stored mask is checked against the classes as it is read, and a
    label out of range raises ``DatasetError`` (``record_label_problem``) when its batch is
    taken; the batches are the same with or without the check.
    """

    def __init__(self, source: Any, transform: Transform, global_batch_size: int, *,
                 seed: int = 0, start_step: int = 0, num_steps: int | None = None,
                 process_index: int = 0, process_count: int = 1, rows: range | None = None,
                 num_threads: int | None = None, prefetch: int = 2,
                 num_labels: int | None = None, reduce_zero_label: bool = False):
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be positive; got {global_batch_size}")
        if len(source) < 1:
            raise ValueError("the dataset split is empty")
        self.source = source
        self.transform = transform
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        # ``rows`` (from the device mesh, see sharding.process_rows) overrides the even split.
        self.rows = (process_rows(self.global_batch_size, process_index, process_count)
                     if rows is None else rows)
        if not 0 <= self.rows.start < self.rows.stop <= self.global_batch_size:
            raise ValueError(f"rows {self.rows} are not inside a batch of {self.global_batch_size}")
        if num_labels is not None and int(num_labels) < 1:
            raise ValueError(f"num_labels must be positive; got {num_labels}")
        self._labels = None if num_labels is None else (int(num_labels), bool(reduce_zero_label))
        self.batch_of_step = BatchOfStep(source, transform, self.global_batch_size, self.seed,
                                         self.rows, self._labels)
        self.next_step = int(start_step)
        self._stop = None if num_steps is None else int(start_step) + int(num_steps)
        self._prefetch = max(0, int(prefetch))
        self._pool = concurrent.futures.ThreadPoolExecutor(
            num_threads or default_num_threads(), thread_name_prefix="segformer-data")
        self._pending: collections.deque = collections.deque()
        self._scheduled = self.next_step
        self._closed = False

    @property
    def num_examples(self) -> int:
        return len(self.source)

    def indices(self, step: int) -> np.ndarray:
        """The dataset indices this process reads for batch ``step``."""
        return self.batch_of_step.indices(step)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """Batch ``step`` of this process, computed in the calling thread."""
        return self.batch_of_step(step)

    def _schedule(self) -> None:
        while (len(self._pending) <= self._prefetch
               and (self._stop is None or self._scheduled < self._stop)):
            step = self._scheduled
            futures = [self._pool.submit(_train_example, *args)
                       for args in self.batch_of_step.example_args(step)]
            self._pending.append((step, futures))
            self._scheduled += 1

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._closed or (self._stop is not None and self.next_step >= self._stop):
            self.close()
            raise StopIteration
        self._schedule()
        step, futures = self._pending.popleft()
        assert step == self.next_step
        try:
            examples = [f.result() for f in futures]
        except BaseException:
            self.close()
            raise
        self.next_step += 1
        self._schedule()
        return _collate(examples)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for _, futures in self._pending:
            for f in futures:
                f.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> TrainBatches:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _quiet_worker(index: int, count: int) -> None:
    """A worker process's start: TFDS's absl notes about the dataset's configuration, which
    the main process has already printed, are not printed again by every worker."""
    import logging
    logging.getLogger("absl").setLevel(logging.ERROR)


class ProcessBatches:
    """``TrainBatches``' batches made by ``num_workers`` worker processes (grain: a
    ``MapDataset`` of the steps mapped by ``BatchOfStep``, ``mp_prefetch``), in step order,
    bit-identical to the threads'. The same iterator interface: ``next_step``, ``batch``,
    ``close`` (also as a context manager). The workers start with the first batch and import
    the data stack then (seconds); an error in a worker stops the iteration with it."""

    # Steps of an endless run: grain's ranges are finite.
    ENDLESS = 1 << 50

    def __init__(self, source: Any, transform: Transform, global_batch_size: int, *,
                 num_workers: int, seed: int = 0, start_step: int = 0, num_steps: int | None = None,
                 process_index: int = 0, process_count: int = 1, rows: range | None = None,
                 prefetch: int = 2, num_labels: int | None = None, reduce_zero_label: bool = False):
        import grain
        from absl import flags
        if num_workers < 1:
            raise ValueError(f"num_workers must be positive; got {num_workers}")
        threads = TrainBatches(source, transform, global_batch_size, seed=seed, start_step=start_step,
                               num_steps=num_steps, process_index=process_index,
                               process_count=process_count, rows=rows, num_threads=1, prefetch=0,
                               num_labels=num_labels, reduce_zero_label=reduce_zero_label)
        threads.close()   # only its checks and its BatchOfStep are wanted
        self.batch_of_step, self.rows = threads.batch_of_step, threads.rows
        self.next_step = int(start_step)
        self._stop = self.next_step + (self.ENDLESS if num_steps is None else int(num_steps))
        if not flags.FLAGS.is_parsed():  # grain reads its own absl flags' defaults
            flags.FLAGS.mark_as_parsed()
        steps = grain.MapDataset.range(self.next_step, self._stop).map(self.batch_of_step)
        # One thread per worker and ``prefetch`` batches ahead: grain's defaults (16 threads,
        # 500 elements ahead) would hold hundreds of batches (gigabytes at 512²) per worker.
        read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=max(1, int(prefetch)))
        options = grain.MultiprocessingOptions(num_workers=int(num_workers),
                                               per_worker_buffer_size=max(1, int(prefetch)))
        self._iterator = iter(steps.to_iter_dataset(read).mp_prefetch(options, worker_init_fn=_quiet_worker))
        self._closed = False

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """Batch ``step`` of this process, computed in the calling process."""
        return self.batch_of_step(step)

    def __iter__(self) -> ProcessBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._closed or self.next_step >= self._stop:
            self.close()
            raise StopIteration
        try:
            batch = next(self._iterator)
        except BaseException:
            self.close()
            raise
        self.next_step += 1
        return batch

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> ProcessBatches:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def train_batches(source: Any, transform: Transform, global_batch_size: int, *,
                  seed: int = 0, start_step: int = 0, num_steps: int | None = None,
                  process_index: int = 0, process_count: int = 1,
                  num_threads: int | None = None, prefetch: int = 2,
                  num_labels: int | None = None, reduce_zero_label: bool = False) -> TrainBatches:
    """Training batches from ``start_step`` on; see :class:`TrainBatches` and the module doc."""
    return TrainBatches(source, transform, global_batch_size, seed=seed, start_step=start_step,
                        num_steps=num_steps, process_index=process_index,
                        process_count=process_count, num_threads=num_threads,
                        prefetch=prefetch, num_labels=num_labels,
                        reduce_zero_label=reduce_zero_label)


def _eval_example(source: Any, transform: Transform, index: int) -> dict[str, Any]:
    record = read_record(source, index)
    out = dict(transform(as_example(record)))
    name = record.get("file_name", b"")
    out["file_name"] = name.decode() if isinstance(name, bytes) else str(name)
    out["index"] = int(index)
    return out


def _collate_eval(examples: list[dict[str, Any]], pad_to: Sequence[int] | None
                  ) -> dict[str, np.ndarray]:
    extra = {"index": np.array([e["index"] for e in examples], np.int64),
             "file_name": np.array([e["file_name"] for e in examples], dtype=object)}
    if all(np.ndim(e["label"]) == 0 for e in examples):  # classification: one class id each
        return {"image": np.stack([np.asarray(e["image"], np.float32) for e in examples]),
                "label": np.array([e["label"] for e in examples], np.int32), **extra}
    image_sizes = np.array([e["image"].shape[:2] for e in examples], np.int32)
    label_sizes = np.array([e["label"].shape[:2] for e in examples], np.int32)
    if pad_to is None:
        height, width = image_sizes.max(axis=0)
    else:
        height, width = int(pad_to[0]), int(pad_to[1])
        too_big = [e["file_name"] for e, (h, w) in zip(examples, image_sizes)
                   if h > height or w > width]
        if too_big:
            raise ValueError(f"eval images larger than pad_to={tuple(pad_to)} after the "
                             f"transform: {too_big[:3]}")
    label_h, label_w = label_sizes.max(axis=0)
    images = np.zeros((len(examples), height, width, examples[0]["image"].shape[-1]), np.float32)
    labels = np.full((len(examples), label_h, label_w), IGNORE_INDEX, np.int32)
    for i, e in enumerate(examples):
        h, w = e["image"].shape[:2]
        images[i, :h, :w] = e["image"]
        lh, lw = e["label"].shape[:2]
        labels[i, :lh, :lw] = e["label"]
    return {"image": images, "label": labels, "image_size": image_sizes,
            "label_size": label_sizes, **extra}


def eval_batches(source: Any, transform: Transform = EvalTransform(), batch_size: int = 1, *,
                 pad_to: Sequence[int] | None = None, process_index: int = 0,
                 process_count: int = 1, num_threads: int | None = None,
                 prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
    """Every example of ``source`` once, in order (this process's contiguous share).

    Yields ``image`` f32 (b, h, w, 3) (transformed; padded with 0 to ``pad_to``, or to the
    largest image of the batch), ``label`` i32 (b, H, W) at the original resolution (padded
    with 255), ``image_size`` / ``label_size`` (b, 2) the valid (h, w) of each, ``index``
    (b,) and ``file_name`` (b,). The last batch may be smaller. Predictions are to be cropped
    to ``image_size``, resized to ``label_size`` and compared with the label's valid part.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size}")
    process_rows(process_count, process_index, process_count)  # validates the arguments
    shard = np.array_split(np.arange(len(source)), process_count)[process_index]
    batches = [shard[i:i + batch_size] for i in range(0, len(shard), batch_size)]
    pool = concurrent.futures.ThreadPoolExecutor(num_threads or default_num_threads(),
                                                 thread_name_prefix="segformer-eval")
    pending: collections.deque = collections.deque()
    try:
        next_batch = 0
        while next_batch < len(batches) or pending:
            while next_batch < len(batches) and len(pending) <= prefetch:
                pending.append([pool.submit(_eval_example, source, transform, i)
                                for i in batches[next_batch]])
                next_batch += 1
            futures = pending.popleft()
            yield _collate_eval([f.result() for f in futures], pad_to)
    finally:
        for futures in pending:
            for f in futures:
                f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
