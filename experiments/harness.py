"""What the benchmarks share: their command line, timing (interleaved rounds, medians), the
machine report, memory figures, the CPU's stated peak, and transformers + torch as the
oracle (the model built from a config, converted to ours, run and trained).

A benchmark imports this module and ``train_steps`` (our step, compiled and timed), never
another benchmark.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never touch the network

import argparse
import dataclasses
import pathlib
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax

import segformer_jax
from experiments import xla_stats
from segformer_jax import SegformerConfig

NUM_LABELS = 150  # ADE20K


# Table of the paper (Xie et al. 2021), ADE20K, reported as "GFLOPs" but counted as
# multiply-accumulates (mmcv's counter): (GMACs, input side). B5's ADE20K figure is for its
# 640x640 crop (the analytic count below gives 111.5 G at 512x512 and 183.1 G at 640x640).
PAPER_GMACS = {"b0": (8.4, 512), "b1": (15.9, 512), "b2": (62.4, 512), "b3": (79.0, 512),
               "b4": (95.7, 512), "b5": (183.3, 640)}


def parse_size(text: str) -> tuple[int, int]:
    """``512`` -> (512, 512); ``512x1024`` -> (512, 1024) as (height, width)."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}")
    return sizes[0], sizes[1]


def benchmark_parser(module: str, doc: str, batch: int, repeats: int,
                     warmup_help: str) -> argparse.ArgumentParser:
    """The flags of both single benchmarks (this one and benchmark_train): variant, batch,
    size, repeats, warmup, torch threads, --skip-torch."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="b0", choices=sorted(PAPER_GMACS))
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--size", type=parse_size, default=(512, 512), help="N or HxW (default 512)")
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed runs (default {repeats})")
    p.add_argument("--warmup", type=int, default=2, help=f"{warmup_help} (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--skip-torch", action="store_true",
                   help="time JAX only, with freshly initialised weights (no transformers)")
    return p


def parse_checked(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``p``'s arguments, with counts that cannot be run refused."""
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--batch and --repeats must be >= 1, --warmup >= 0")
    return args


@dataclasses.dataclass(frozen=True)
class Timing:
    seconds: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.seconds)

    def __str__(self) -> str:
        return (f"median {self.median_ms:9.1f} ms   min {1e3 * min(self.seconds):9.1f} ms   "
                f"max {1e3 * max(self.seconds):9.1f} ms   ({len(self.seconds)} runs)")


def time_calls(call: Callable[[], Any], warmup: int, repeats: int) -> Timing:
    """Runs ``call`` ``warmup`` times untimed, then ``repeats`` times timed (wall clock)."""
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return Timing(tuple(seconds))


def time_interleaved(calls: Mapping[str, Callable[[], Any]], warmup: int,
                     repeats: int) -> dict[str, Timing]:
    """Like ``time_calls`` for several calls, run in turn: round r times each call once
    (in reversed order on odd rounds), so that a machine whose speed drifts over minutes
    (this project's shared 2-core VM: up to 1.8x between runs) slows all of them alike,
    and a ratio of their medians compares them under the same conditions."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(repeats):
        for name in (list(calls) if r % 2 == 0 else list(reversed(calls))):
            start = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - start)
    return {name: Timing(tuple(s)) for name, s in seconds.items()}


def build_torch_model(config: SegformerConfig, task: str = "semantic_segmentation") -> Any:
    """transformers' SegFormer for ``task`` (``SegformerForSemanticSegmentation`` or
    ``SegformerForImageClassification``) with our config and torch's seeded random init,
    eval mode."""
    import torch
    import transformers

    cfg_dict = config.to_dict()
    cfg_dict.pop("model_type")
    torch_config = transformers.SegformerConfig(**cfg_dict, attn_implementation="eager")
    torch.manual_seed(0)
    cls = {"semantic_segmentation": transformers.SegformerForSemanticSegmentation,
           "image_classification": transformers.SegformerForImageClassification}[task]
    return cls(torch_config).eval()


def convert(torch_model: Any) -> tuple[SegformerConfig, dict[str, Any]]:
    """Our variables for ``torch_model``, through a Hub-layout checkpoint and our converter."""
    with tempfile.TemporaryDirectory() as directory:
        torch_model.save_pretrained(directory)
        return segformer_jax.from_pretrained(directory)


def run_torch(torch_model: Any, images: Any) -> Any:
    import torch

    with torch.inference_mode():
        return torch_model(pixel_values=images).logits


def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def paper_style_macs(config: SegformerConfig, height: int, width: int) -> int:
    """Multiply-accumulates of one image through the unfolded network, as the paper counts.

    Patch-embedding convs; per block q/k/v/output Dense, the sr conv, QK^T and PV; Mix-FFN
    dense1, 3x3 depthwise conv, dense2; the head's linear_c_i at each stage's resolution,
    linear_fuse 4D->D and the classifier D->K at 1/4 resolution. Norms, activations,
    softmax, biases and the bilinear upsampling are not counted.
    """
    macs = 0
    h, w, c_in = height, width, config.num_channels
    stage_tokens: list[tuple[int, int]] = []  # (tokens, channels) of each stage's output
    for i, c in enumerate(config.hidden_sizes):
        k, s = config.patch_sizes[i], config.strides[i]
        h, w = conv_out(h, k, s, k // 2), conv_out(w, k, s, k // 2)
        n = h * w
        macs += n * k * k * c_in * c  # overlapping patch embedding
        sr = config.sr_ratios[i]
        n_kv = (h // sr) * (w // sr) if sr > 1 else n
        hidden = int(c * config.mlp_ratios[i])
        block = (2 * n * c * c            # query and output projections
                 + 2 * n_kv * c * c       # key and value projections
                 + 2 * n * n_kv * c)      # QK^T and PV (summed over heads)
        if sr > 1:
            block += n_kv * sr * sr * c * c  # spatial-reduction conv
        block += 2 * n * c * hidden + n * hidden * 9  # Mix-FFN: dense1, dense2, 3x3 dwconv
        macs += config.depths[i] * block
        stage_tokens.append((n, c))
        c_in = c
    d = config.decoder_hidden_size
    n_quarter = stage_tokens[0][0]
    macs += sum(n * c * d for n, c in stage_tokens)                 # linear_c_i
    macs += n_quarter * len(stage_tokens) * d * d                   # linear_fuse 4D -> D
    macs += n_quarter * d * config.num_labels                       # classifier D -> K
    return macs


def process_peak_rss_bytes() -> int:
    """Peak resident set of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def import_torch(skip: bool, threads: int | None) -> Any | None:
    """torch (with ``threads`` intra-op threads when given), or None when it is skipped."""
    if skip:
        return None
    from experiments.torchvision_shim import allow_torchvision_without_extension
    allow_torchvision_without_extension()  # transformers imports torchvision when installed
    import torch
    if threads is not None:
        torch.set_num_threads(threads)
    return torch


def print_machine(torch_module: Any | None) -> None:
    print("machine")
    print(f"  cpu          {platform.processor() or '?'} / {platform.machine()}, "
          f"os.cpu_count() = {os.cpu_count()}")
    device = jax.devices()[0]
    print(f"  jax          {jax.__version__}, backend {jax.default_backend()}, "
          f"device {device.device_kind} (x{jax.device_count()})")
    if torch_module is not None:
        print(f"  torch        {torch_module.__version__}, "
              f"threads {torch_module.get_num_threads()}")
    print(f"  python       {platform.python_version()}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"  load (1 min) {load:.2f}")
    cpus = os.cpu_count() or 1
    threads = torch_module.get_num_threads() if torch_module is not None else 0
    if threads > 1 and load + threads > cpus + 0.5:
        print(f"  WARNING: load {load:.1f} + {threads} torch threads > "
              f"{cpus} CPUs; torch's spin-waiting OpenMP threads")
        print("           can run many times slower on a busy machine: try --threads 1 "
              "or OMP_WAIT_POLICY=PASSIVE")


def cpu_peak_flops() -> tuple[float, str] | None:
    """The float32 peak this process's CPUs are stated at, and how: cores × clock × 2 FMA
    units × SIMD lanes (16 with AVX-512, 8 with AVX2) × 2 FLOPs per FMA. Zen 4 runs AVX-512
    on two 256-bit pipes, so half that is reached at best there. None off Linux."""
    try:
        info = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)
    if mhz is None:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    lanes = 16 if re.search(r"\bavx512f\b", info) else 8 if re.search(r"\bavx2\b", info) else 4
    ghz = float(mhz.group(1)) / 1000
    peak = cores * ghz * 1e9 * 2 * lanes * 2
    return peak, f"{cores} cores × {ghz:.2f} GHz × 2 FMA × {lanes} lanes × 2"


@dataclasses.dataclass
class TorchStep:
    first_step_s: float
    first_loss: float
    one_step: Callable[[], Any]


def torch_device(requested: str | None) -> Any:
    import torch
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_eval_loss(torch_model: Any, pixel_values: Any, labels: Any) -> float:
    import torch
    torch_model.eval()
    with torch.inference_mode():
        return float(torch_model(pixel_values=pixel_values, labels=labels).loss)


def torch_train_step(torch_model: Any, pixel_values: Any, labels: Any) -> TorchStep:
    """zero_grad -> fwd + CE on upsampled logits -> bwd -> AdamW, in train mode: run once."""
    import torch

    torch_model.train()
    opt = torch.optim.AdamW(torch_model.parameters(), lr=6e-5, weight_decay=0.01)
    sync = torch.cuda.synchronize if pixel_values.device.type == "cuda" else (lambda: None)

    def one_step() -> Any:
        opt.zero_grad(set_to_none=True)
        loss = torch_model(pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        opt.step()
        sync()
        return loss

    start = time.perf_counter()
    first_loss = float(one_step().detach())  # also allocates AdamW's moments
    first_step_s = time.perf_counter() - start
    return TorchStep(first_step_s, first_loss, one_step)


def images_per_s(batch: int, timing: Timing) -> float:
    return batch / (timing.median_ms / 1e3)


def print_torch_rounds(batch: int, ours: Timing, theirs: Timing) -> None:
    """torch's timing line, then the per-round ratios of two step timings taken in turn."""
    print(f"torch          {theirs}   {images_per_s(batch, theirs):7.2f} img/s")
    per_round = [t / j for t, j in zip(theirs.seconds, ours.seconds)]
    print(f"rounds         torch/jax per round: median {statistics.median(per_round):.2f}x, "
          f"min {min(per_round):.2f}x, max {max(per_round):.2f}x")


def print_memory(compiled: Any, rss_after_jax: int) -> None:
    fields = xla_stats.memory_fields(compiled)
    print("memory")
    if fields is None:
        print("  XLA program                          not reported by this backend")
    else:
        for label, value in fields.items():
            print(f"  XLA {label:<33}{mib(value) if value is not None else 'not reported'}")
        total = xla_stats.program_bytes(compiled)
        print(f"  XLA args + temps + outputs - aliased "
              f"{mib(total) if total is not None else 'not reported'}"
              "  (donated state: outputs reuse the arguments' buffers)")
    print(f"  process peak RSS after the jax steps {mib(rss_after_jax)}")
    print(f"  process peak RSS at the end          {mib(process_peak_rss_bytes())}"
          "  (ru_maxrss of the whole process: both frameworks and models)")
