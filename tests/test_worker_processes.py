"""The input pipeline on worker processes (``data.worker_processes``): the threads' batches,
bit for bit, from any start step; a bad label in a worker stops the run with its message;
a training run on worker processes ends where the threads' run ends."""

import numpy as np
import pytest
from test_train import _final_state, _run

from experiments.benchmark_input import ArraySource, make_records
from segformer_jax.data import pipeline
from segformer_jax.data import transforms as T
from segformer_jax.errors import DatasetError

# Picklable (a worker process unpickles it): an importable class over generated records.
SOURCE = ArraySource(make_records(12, seed=0))
TRANSFORM = T.train_transform("ade20k", 64, reduce_zero_label=True)


def test_worker_processes_make_the_threads_batches():
    with pipeline.TrainBatches(SOURCE, TRANSFORM, 4, seed=5, start_step=3, num_steps=5, num_threads=2) as threads:
        expected = list(threads)
    with pipeline.ProcessBatches(SOURCE, TRANSFORM, 4, num_workers=2, seed=5, start_step=3, num_steps=5) as workers:
        got = list(workers)
        assert workers.next_step == 8
    assert len(got) == len(expected) == 5
    for a, b in zip(expected, got):
        for key in ("image", "label"):
            np.testing.assert_array_equal(a[key], b[key])   # bit for bit, from step 3 on


def test_a_bad_label_in_a_worker_stops_with_its_message():
    """ADE-like masks hold ids up to 150: with 10 classes, the first batch has a bad one."""
    with pytest.raises(DatasetError, match=r"record \d+ .*label value\(s\) \[.*\] out of range: 10 classes"):
        with pipeline.ProcessBatches(SOURCE, TRANSFORM, 4, num_workers=1, seed=0, num_steps=2,
                                     num_labels=10) as workers:
            list(workers)


@pytest.mark.slow
def test_a_run_on_worker_processes_ends_where_the_threads_run_ends(tmp_path):
    threads = _run(tmp_path / "threads", tmp_path / "tfds", total=6)
    assert threads.returncode == 0, threads.stderr[-2000:]
    workers = _run(tmp_path / "workers", tmp_path / "tfds", "--config.data.worker_processes=2", total=6)
    assert workers.returncode == 0, workers.stderr[-2000:]
    a, b = _final_state(tmp_path / "threads", 6), _final_state(tmp_path / "workers", 6)
    import jax
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
