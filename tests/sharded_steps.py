"""Runs the same train steps on several meshes; tests/test_scale.py starts it in a process
with 8 simulated CPU devices (XLA_FLAGS must be set before jax is imported).

    python tests/sharded_steps.py OUT_DIR

Writes OUT_DIR/results.pkl: for each mesh, the losses, the BN
statistics after the first step, the final state (numpy) and the leaves' partition specs;
plus the checkpoint round trips between meshes.
"""

import pickle
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segformer_jax import run_config, sharding
from segformer_jax.checkpoint import TrainCheckpoints
from segformer_jax.config import SegformerConfig
from segformer_jax.models.segformer import SegformerForSemanticSegmentation
from segformer_jax.optim import make_optimizer
from segformer_jax.train import create_state, jit_train_step

STEPS = 3
FSDP_MIN_SIZE = 64  # the tiny model has no leaf of 2**14 elements; shard nearly all of them
CONFIG = SegformerConfig.from_variant("b0", num_labels=3, hidden_sizes=(8, 16, 24, 32),
                                      num_attention_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1),
                                      decoder_hidden_size=16, drop_path_rate=0.1)


def batches() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(STEPS):
        images = rng.standard_normal((8, 32, 32, 3), dtype=np.float32)
        labels = (images[..., 0] > 0).astype(np.int32) + (images[..., 1] > 1)
        labels[:, :4] = 255  # some ignored pixels: the valid-pixel mean must be global too
        out.append({"image": images, "label": labels})
    return out


def run_settings() -> ml_collections.ConfigDict:
    """The run config of these steps: seed 0, valid-pixel mean, lr 1e-3 without warmup."""
    config = run_config.default_config()
    config.seed = 0
    config.loss_reduction = "valid"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 0
    config.total_steps = 100
    return config


def run(mesh, dtype=jnp.float32) -> dict:
    """``train``'s own step (``jit_train_step``: shardings, donation) for STEPS batches."""
    config = run_settings()
    model = SegformerForSemanticSegmentation(CONFIG, dtype=dtype)
    tx = make_optimizer(run_config.recipe(config))
    state, shardings = create_state(CONFIG, tx, config.seed, mesh, pretrained=None,
                                    fsdp_min_size=FSDP_MIN_SIZE)
    step = jit_train_step(model, tx, config, CONFIG, mesh, shardings)
    images = sharding.batch_sharding(mesh)
    data = [sharding.global_batch(b, images) for b in batches()]
    losses, bn_after_first = [], None
    for batch in data:
        state, out = step(state, batch)
        losses.append(float(out["loss"]))
        if bn_after_first is None:
            bn_after_first = jax.device_get(state["batch_stats"])
    specs = jax.tree.map(lambda s: tuple(s.spec), shardings)
    shard_shapes = jax.tree.map(lambda x: x.addressable_shards[0].data.shape, state["params"])
    return {"losses": losses, "bn_after_first": bn_after_first,
            "state": jax.device_get(state), "specs": specs, "shard_shapes": shard_shapes,
            "live_state": state, "shardings": shardings}


def round_trip(source: dict, target_mesh, directory) -> dict:
    """Saves ``source``'s state from its mesh, restores it laid out for ``target_mesh``."""
    checkpoints = TrainCheckpoints(directory, every=1, best_metric=None)
    checkpoints.save(STEPS, source["live_state"], {"step": STEPS}, force=True)
    checkpoints.wait()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), source["state"])
    target = sharding.state_shardings(abstract, target_mesh, FSDP_MIN_SIZE)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            abstract, target)
    restored = checkpoints.restore(STEPS, abstract)
    checkpoints.close()
    mismatched = [jax.tree_util.keystr(p) for (p, x), s in
                  zip(jax.tree.leaves_with_path(restored), jax.tree.leaves(target))
                  if x.sharding != s]
    return {"state": jax.device_get(restored), "mismatched_shardings": mismatched,
            "devices": len(target_mesh.devices.flat)}


def main(out_dir: str) -> None:
    assert jax.device_count() == 8, "start with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    meshes = {"1 device": sharding.make_mesh(devices=jax.devices()[:1]),
              "data 8": sharding.make_mesh(8, 1),
              "data 4 x fsdp 2": sharding.make_mesh(4, 2)}
    runs = {}
    for name, mesh, dtype in [(*m, jnp.float32) for m in meshes.items()] + [
            ("bf16 1 device", meshes["1 device"], jnp.bfloat16)]:
        start = time.perf_counter()
        runs[name] = run(mesh, dtype)
        print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
    trips = {
        "fsdp 4x2 -> 1 device": round_trip(runs["data 4 x fsdp 2"], meshes["1 device"], f"{out_dir}/a"),
        "1 device -> fsdp 1x8": round_trip(runs["1 device"], sharding.make_mesh(1, 8), f"{out_dir}/b"),
    }
    for r in runs.values():
        del r["live_state"], r["shardings"]
    with open(f"{out_dir}/results.pkl", "wb") as f:
        pickle.dump({"runs": runs, "trips": trips}, f)


if __name__ == "__main__":
    main(sys.argv[1])
