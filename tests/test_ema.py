"""EMA of the weights (``optimizer.ema_decay``, timm's ``ModelEmaV3``): the decay against
timm's, the average against one computed by hand, once per optimiser step under gradient
accumulation, both scores logged, exact resume after SIGKILL, and the export transformers
loads."""

from __future__ import annotations

import json
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAST_COMPILE
from test_train import _final_state, _kill_once_saved, _run

import segformer_jax as sj
from segformer_jax import tasks
from segformer_jax.optim import Recipe, ema_decay, make_optimizer
from segformer_jax.run_config import default_config
from segformer_jax.train import initial_state, make_train_step

TINY = dict(hidden_sizes=(8, 16, 24, 32), num_attention_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1),
            decoder_hidden_size=16)


@pytest.mark.parametrize("warmup", [False, True])
def test_decay_equals_timms(warmup):
    """``ModelEmaV3(decay=0.9998, use_warmup=...).get_decay(step)`` for the updates after
    optimiser steps 1…2000 (float32 here, float64 in timm: 1e-6)."""
    import torch
    from timm_oracle import import_timm
    import_timm()
    from timm.utils.model_ema import ModelEmaV3
    oracle = ModelEmaV3(torch.nn.Linear(1, 1), decay=0.9998, use_warmup=warmup)
    recipe = Recipe(ema_decay=0.9998, ema_warmup=warmup)
    steps = np.arange(1, 2001)
    ours = np.asarray(jax.vmap(lambda s: ema_decay(s, recipe))(jnp.asarray(steps)))
    np.testing.assert_allclose(ours, [oracle.get_decay(int(s)) for s in steps], rtol=0, atol=1e-6)
    assert ours[0] == 0.0   # the first update copies the weights


def _tiny_steps(n: int, accumulate: int = 1, decay: float = 0.5):
    config = sj.SegformerConfig.from_variant("b0", num_labels=3, **TINY)
    model = sj.SegformerForSemanticSegmentation(config)
    recipe = Recipe(learning_rate=1e-2, warmup_steps=0, total_steps=100, ema_decay=decay)
    tx = make_optimizer(recipe, accumulate)
    state = initial_state(config, tx, seed=0, ema=True)
    step = jax.jit(make_train_step(model, tx, 0, tasks.objective(default_config(), 3, 255), recipe, accumulate),
                   compiler_options=FAST_COMPILE)
    rng = np.random.default_rng(0)
    history = []
    for _ in range(n):
        images = rng.standard_normal((2, 32, 32, 3), dtype=np.float32)
        labels = rng.integers(0, 3, (2, 32, 32)).astype(np.int32)
        state, _ = step(state, {"image": images, "label": labels})
        history.append(jax.tree.map(np.asarray, {"params": state["params"],
                                                 "batch_stats": state["batch_stats"]}))
    return state, history


def test_the_average_equals_one_computed_by_hand():
    """Three steps at decay 0.5: e1 = w1 (the first update copies), e2 = e1 + ½(w2 − e1),
    e3 = e2 + ½(w3 − e2), for every parameter and BatchNorm statistic. float32 on both
    sides, the same two operations per element: to 1e-7 of values O(1)."""
    state, (w1, w2, w3) = _tiny_steps(3)
    expected = jax.tree.map(lambda a, b, c: (lambda e2: e2 + np.float32(0.5) * (c - e2))(
        a + np.float32(0.5) * (b - a)), w1, w2, w3)
    got = jax.tree.map(np.asarray, state["ema"])
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)
    assert not np.allclose(jax.tree.leaves(got)[0], jax.tree.leaves(w3)[0])   # it is an average


def test_the_average_moves_once_per_optimiser_step_under_accumulation():
    """accumulate_steps=2: the weights change on micro-steps 2 and 4 only, and so does the
    average (its first update, at optimiser step 1, copies the weights)."""
    state, history = _tiny_steps(4, accumulate=2)
    weights = [jax.tree.leaves(h["params"])[0] for h in history]
    assert not np.array_equal(weights[0], weights[1]) and np.array_equal(weights[1], weights[2])
    first, second = weights[1], weights[3]          # after optimiser steps 1 and 2
    final = jax.tree.leaves(state["ema"]["params"])[0]
    np.testing.assert_allclose(final, first + np.float32(0.5) * (second - first), rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ema")
    done = _run(root / "a", root / "tfds", "--config.optimizer.ema_decay=0.9")
    assert done.returncode == 0, done.stderr[-3000:]
    return root, _final_state(root / "a", 12), done.stdout


def test_both_scores_are_logged_and_the_export_is_the_average(ema_run, tmp_path):
    root, state, stdout = ema_run
    assert "validation, EMA of the weights" in stdout
    last = json.loads((root / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "val/mIoU" in last and "val_ema/mIoU" in last
    from segformer_jax import convert
    assert convert.main(["to-hub", str(root / "a"), str(tmp_path / "hub"), "--ema"]) == 0
    assert convert.main(["to-hub", str(root / "a"), str(tmp_path / "raw")]) == 0
    import torch
    import transformers
    loaded = transformers.SegformerForSemanticSegmentation.from_pretrained(tmp_path / "hub").eval()
    raw = transformers.SegformerForSemanticSegmentation.from_pretrained(tmp_path / "raw").eval()
    key = "segformer.stages.0.patch_embeddings.proj.weight"   # transformers 5 names
    kernel = np.asarray(state["ema"]["params"]["encoder"]["patch_embeddings_0"]["proj"]["kernel"])
    np.testing.assert_array_equal(loaded.state_dict()[key].numpy(), kernel.transpose(3, 2, 0, 1))
    assert not torch.equal(loaded.state_dict()[key], raw.state_dict()[key])
    mean = "decode_head.batch_norm.running_mean"
    np.testing.assert_array_equal(loaded.state_dict()[mean].numpy(),
                                  np.asarray(state["ema"]["batch_stats"]["decode_head"]["batch_norm"]["mean"]))


def test_ema_needs_a_run_that_kept_one(tmp_path, capsys):
    from segformer_jax import convert
    config = sj.SegformerConfig.from_variant("b0", num_labels=3, **TINY)
    sj.save_pretrained(tmp_path / "hub", config, sj.init_variables(config))
    assert convert.main(["to-hub", str(tmp_path / "hub"), str(tmp_path / "out"), "--ema"]) == 1
    assert "--ema reads a training workdir" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_sigkill_is_exact_with_the_average(ema_run):
    root, reference, _ = ema_run
    proc = _run(root / "b", root / "tfds", "--config.optimizer.ema_decay=0.9", wait=False,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _kill_once_saved(proc, root / "b" / "checkpoints" / "4")
    done = _run(root / "b", root / "tfds", "--config.optimizer.ema_decay=0.9")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout
    resumed = _final_state(root / "b", 12)
    assert "ema" in resumed and jax.tree.structure(resumed) == jax.tree.structure(reference)
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    # Switching the average off on a resume is refused, naming the setting.
    refused = _run(root / "b", root / "tfds", "--config.optimizer.ema_decay=0.0", total=16)
    assert refused.returncode != 0 and "optimizer.ema_decay" in refused.stderr
