"""One prepared accelerator report: every form set's training step on the chip it runs on.

    python -m experiments.accelerator_report --out DIR [--tiny] [--timeout-s 450]

On one GPU or TPU, in a few minutes including compiles, for each configuration and each op
form set (``models/ops.py`` FORM_SETS: the CPU forms an accelerator was handed before, and
the XLA forms it gets now):

* segmentation b0 512², batch 16, bfloat16; b2 512², batch 8, bfloat16; b0 512², batch 2,
  float32; classification b0 224², batch 128, bfloat16 (the ImageNet recipe);
* the trainer's own step (``train.jit_train_step`` through ``experiments.train_steps``):
  compile time, step time (median of 20 after 3 warm-ups), images/s, MFU, the program's
  device memory (XLA's) and the device's peak, and the first step's loss (the same batch,
  the same initial state: equal across form sets up to their rounding);
* each op's forms forward and backward (``experiments.ops_benchmark``).

MFU is one model-FLOP count per configuration, XLA's cost analysis of the XLA-form step,
over (step time × the chip's dense peak for the step's dtype): H100 SXM and H200 bf16 989
TFLOP/s, float32 matmuls at the default precision (TF32) 495; H100 PCIe 756 and 378; TPU v4
275 bf16, v5e 197, v5p 459 (float32 at the default precision runs as bfloat16 passes). Other
chips: no MFU, said so. Writes ``DIR/report.json`` and ``DIR/report.md``; stops starting new
measurements past ``--timeout-s`` and says what it left out. ``--tiny`` runs the same code
at tiny sizes (a test does, on a CPU, so the report cannot rot before its first real run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from segformer_jax.tables import markdown_table

FORMS = ("cpu", "xla")


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    task: str
    variant: str
    side: int
    batch: int
    dtype: str


SETTINGS = (
    Setting("segmentation b0 512², batch 16, bf16", "semantic_segmentation", "b0", 512, 16, "bfloat16"),
    Setting("segmentation b2 512², batch 8, bf16", "semantic_segmentation", "b2", 512, 8, "bfloat16"),
    Setting("segmentation b0 512², batch 2, float32", "semantic_segmentation", "b0", 512, 2, "float32"),
    Setting("classification b0 224², batch 128, bf16", "image_classification", "b0", 224, 128, "bfloat16"),
)
TINY = (
    Setting("segmentation tiny 64², batch 2, float32", "semantic_segmentation", "tiny", 64, 2, "float32"),
    Setting("classification tiny 32², batch 4, float32", "image_classification", "tiny", 32, 4, "float32"),
)
TINY_MODEL = {"hidden_sizes": (8, 16, 24, 32), "num_attention_heads": (1, 2, 3, 4),
              "depths": (1, 1, 1, 1), "decoder_hidden_size": 16}

# Dense peaks (FLOP/s) by the device kind's words, for bfloat16 and for float32 matmuls at
# the default precision (TF32 on NVIDIA tensor cores, bfloat16 passes on a TPU).
PEAKS = (("H200", 989e12, 495e12), ("H100 PCIe", 756e12, 378e12), ("H100", 989e12, 495e12),
         ("TPU v5p", 459e12, 459e12), ("TPU v5 lite", 197e12, 197e12), ("TPU v5e", 197e12, 197e12),
         ("TPU v4", 275e12, 275e12))


def peak(device_kind: str, dtype: str) -> float | None:
    for words, bf16, f32 in PEAKS:
        if words.lower() in device_kind.lower():
            return bf16 if dtype == "bfloat16" else f32
    return None


def run_config(setting: Setting, forms: str) -> Any:
    from segformer_jax import run_config as rc
    config = rc.default_config()
    if setting.task == "image_classification":
        rc.use_imagenet_recipe(config, "b0", batch=setting.batch)
        config.data.name = "synthetic_classification"
    elif setting.variant != "tiny":
        rc.use_variant(config, setting.variant)
    if setting.variant == "tiny":
        for key, value in TINY_MODEL.items():
            config.model.overrides[key] = value
    config.batch_size = setting.batch
    config.model.op_forms = forms
    config.model.dtype = setting.dtype
    return config


def batch_for(setting: Setting, classes: int, mesh: Any) -> dict[str, jax.Array]:
    from experiments.train_steps import device_batch
    rng = np.random.default_rng(0)
    images = rng.standard_normal((setting.batch, setting.side, setting.side, 3), dtype=np.float32)
    shape = (setting.batch, setting.side, setting.side) if setting.task == "semantic_segmentation" \
        else (setting.batch,)
    labels = rng.integers(0, classes, shape).astype(np.int32)
    return device_batch(images, labels, mesh)


def measure_step(setting: Setting, forms: str, warmup: int, repeats: int) -> dict[str, Any]:
    """One configuration's step with one form set, from a fresh state: the figures."""
    from experiments import train_steps, xla_stats
    from segformer_jax import run_config as rc
    config = run_config(setting, forms)
    classes = 150 if setting.task == "semantic_segmentation" else 1000
    seg_config = rc.model_config(config, classes)
    step = train_steps.build(config, seg_config)
    batch = batch_for(setting, classes, step.mesh)
    timed = train_steps.time_steps(step, batch, warmup, repeats)
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    seconds = timed.timing.median_ms / 1000
    return {"setting": setting.name, "forms": forms, "compile_s": round(timed.lower_s + timed.compile_s, 2),
            "step_ms": round(timed.timing.median_ms, 3), "images_per_s": round(setting.batch / seconds, 2),
            "flops": xla_stats.flops(timed.compiled), "program_bytes": xla_stats.program_bytes(timed.compiled),
            "peak_device_bytes": (stats or {}).get("peak_bytes_in_use"),
            "first_loss": timed.first_loss}


def with_mfu(rows: list[dict[str, Any]], device_kind: str) -> list[dict[str, Any]]:
    """MFU of each row: the XLA-form step's FLOPs of its configuration (one count for every
    form set) over its step time times the chip's peak."""
    model_flops = {r["setting"]: r["flops"] for r in rows if r["forms"] == "xla" and r["flops"]}
    for r in rows:
        setting = next(s for s in (*SETTINGS, *TINY) if s.name == r["setting"])
        chip = peak(device_kind, setting.dtype)
        flops = model_flops.get(r["setting"])
        r["model_flops"] = flops
        r["mfu"] = (round(flops / (r["step_ms"] / 1000 * chip), 4) if flops and chip else None)
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Accelerator report: {report['device']} ({report['platform']}), jax {report['jax']}, "
             f"{report['date']}", ""]
    if report["peak_note"]:
        lines += [report["peak_note"], ""]
    mib = lambda b: "n/a" if b is None else f"{b / 2**20:.0f}"  # noqa: E731
    rows = [[r["setting"], r["forms"], f"{r['compile_s']:.1f}", f"{r['step_ms']:.1f}",
             f"{r['images_per_s']:.1f}", "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %",
             mib(r["program_bytes"]), mib(r["peak_device_bytes"]), f"{r['first_loss']:.6f}"]
            for r in report["steps"]]
    lines.append(markdown_table(["configuration", "forms", "compile (s)", "step (ms)", "images/s", "MFU",
                                 "program memory (MiB)", "device peak (MiB)", "first loss"], rows, numbers_from=2))
    if report["ops"]:
        ops = [[o["op"], o["form"], f"{o['forward_ms']:.3f}", f"{o['backward_ms']:.3f}"] for o in report["ops"]]
        lines += ["", markdown_table(["op", "form", "forward (ms)", "backward (ms)"], ops, numbers_from=2)]
    if report["left_out"]:
        lines += ["", f"Left out after {report['timeout_s']} s: {', '.join(report['left_out'])}."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.accelerator_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for a check on any machine")
    parser.add_argument("--timeout-s", type=float, default=450.0,
                        help="no new measurement starts after this many seconds (default 450)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    device = jax.devices()[0]
    settings = TINY if args.tiny else SETTINGS
    warmup, repeats = (1, 3) if args.tiny else (3, 20)
    steps, left_out = [], []
    for setting in settings:
        for forms in FORMS:
            label = f"{setting.name} ({forms})"
            if time.monotonic() - start > args.timeout_s:
                left_out.append(label)
                continue
            steps.append(measure_step(setting, forms, warmup, repeats))
            print(f"{label}: {steps[-1]['step_ms']:.1f} ms", flush=True)
    ops = []
    if time.monotonic() - start <= args.timeout_s:
        from experiments.ops_benchmark import all_rows
        size = 64 if args.tiny else 512
        ops = [{"op": op, "form": form, "forward_ms": f, "backward_ms": b}
               for op, form, f, b in all_rows(1 if args.tiny else 2, size, warmup, repeats)]
    else:
        left_out.append("the ops' forms")
    known = peak(device.device_kind, "bfloat16") is not None
    report = {"device": device.device_kind, "platform": device.platform, "jax": jax.__version__,
              "date": time.strftime("%Y-%m-%d"), "timeout_s": args.timeout_s,
              "peak_note": "" if known else (f"No dense peak is known here for {device.device_kind!r}: "
                                             "MFU is left out (experiments/accelerator_report.py PEAKS)."),
              "steps": with_mfu(steps, device.device_kind), "ops": ops, "left_out": left_out,
              "seconds": round(time.monotonic() - start, 1)}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
