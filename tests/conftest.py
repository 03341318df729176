"""Shared fixtures: transformers (PyTorch) SegFormer models built from a seed, the oracle.

No test reaches the network: HF_HUB_OFFLINE is set before transformers is imported.
"""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent XLA compilation cache for the session and every subprocess it starts: the
# same tiny train step is compiled by many command-line runs, 20-50 s each on XLA:CPU.
# Cached executables are the compiler's own output, so no test sees anything different.
# pytest-xdist's workers share one run id, hence one cache.
_run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"segformer-jax-xla-cache-{_run_id}"))

from experiments.torchvision_shim import allow_torchvision_without_extension  # noqa: E402

allow_torchvision_without_extension()  # before transformers is imported anywhere

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import segformer_jax as sj  # noqa: E402

# XLA:CPU's backend (LLVM) optimisation level 0: it changes only how fast the compiled code
# runs, and about halves the compile time of the tests' many small programs. For tests that
# compare programs compiled alike, or against an independent reference within its own
# tolerance; runs compared bit for bit with one at the default level keep the default.
FAST_COMPILE = {"xla_backend_optimization_level": 0}    # jax.jit(..., compiler_options=)
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"   # in a subprocess's XLA_FLAGS

# The files that take longest, longest first (their tests' seconds summed, from `--durations`
# on 2026-12-07). `pytest -n 2 --dist loadfile` hands whole files to the two workers in
# collection order, so sorting these first starts the long files while the other worker
# fills in with short ones (longest first, the classic greedy schedule). xdist's default
# order, by number of tests (--loadscope-reorder), started the longest (few tests each)
# last, and one worker ran them alone at the end.
SLOWEST_FILES = ("test_sweep.py", "test_scale.py", "test_classification.py", "test_reliability.py",
                 "test_export.py", "test_train.py", "test_robustness.py", "test_parity.py",
                 "test_ema.py", "test_ops.py", "test_channels.py", "test_model.py",
                 "test_evaluate_predict.py", "test_coco_stuff.py", "test_accelerator_forms.py",
                 "test_worker_processes.py")


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):   # pytest-xdist: keep the order below
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: files stay whole


def hf_config(config: sj.SegformerConfig):
    import transformers
    data = config.to_dict()
    data.pop("model_type")
    # Eager attention: the plain softmax(QK^T/sqrt(d))V, not a fused SDPA kernel.
    return transformers.SegformerConfig(**data, attn_implementation="eager")


def build_hf(config: sj.SegformerConfig, task: str = "semantic_segmentation", seed: int = 0):
    """A transformers model with random weights and non-trivial BatchNorm statistics."""
    import torch
    import transformers
    cls = {"semantic_segmentation": transformers.SegformerForSemanticSegmentation,
           "image_classification": transformers.SegformerForImageClassification}[task]
    torch.manual_seed(seed)
    model = cls(hf_config(config)).eval()
    with torch.no_grad():
        # transformers zero-inits biases and leaves BN at (0, 1): randomise them, so that a
        # bias or a statistic loaded into the wrong place cannot go unnoticed.
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
        if task == "semantic_segmentation":
            bn = model.decode_head.batch_norm
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model


def torch_forward(model, images: np.ndarray, hidden_states: bool = False):
    """Runs the torch model on NHWC numpy images; returns NHWC numpy outputs."""
    import torch
    with torch.no_grad():
        out = model(torch.from_numpy(images.transpose(0, 3, 1, 2)), output_hidden_states=hidden_states)
    logits = out.logits.numpy()
    logits = logits.transpose(0, 2, 3, 1) if logits.ndim == 4 else logits
    if not hidden_states:
        return logits
    return logits, [h.numpy().transpose(0, 2, 3, 1) for h in out.hidden_states]


@pytest.fixture(scope="session")
def b0_hub_dir(tmp_path_factory):
    """A b0 ADE-style (150 labels) checkpoint saved by transformers, and its torch model."""
    config = sj.SegformerConfig.from_variant("b0", num_labels=150)
    model = build_hf(config)
    path = tmp_path_factory.mktemp("b0_hub")
    model.save_pretrained(path)
    return path, model


def random_images(n: int, h: int, w: int, seed: int = 0, c: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, h, w, c), dtype=np.float32)
