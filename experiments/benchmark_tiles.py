"""Memory of large-image prediction: ``predict --mode tiled`` against whole-image sliding.

For each scene side S (square, uncompressed RGB TIFF, a random b0 with 19 classes, crop 512,
stride 384, the model at the scene's own resolution), one fresh process runs:

* ``tiled``: ``Segmenter.tiled`` on the memory-mapped TIFF, the mask written into a
  memory-mapped TIFF (``tiles.write_mask_tiff``): what ``predict --mode tiled`` does;
* ``slide``: ``Segmenter`` in ``slide`` mode on the decoded image (``Inference.slide``: one
  canvas of the whole scene), for the sides where it fits in this machine's memory.

Memory is the process's anonymous resident memory (``RssAnon`` in ``/proc/self/status``:
the heap, numpy's and XLA's buffers; not the file pages of the memory-mapped scene and
mask, which the kernel may drop at will), sampled every 20 ms; the figure is its peak minus
its value after the model was built and compiled on one window. Where both ran, the masks
are compared. Run it from the repository root, on an otherwise idle machine::

    python -m experiments.benchmark_tiles --sizes 2048,4096,10000 --slide-up-to 4096 --stripe 2048
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

CROP, STRIDE, CLASSES = 512, 384, 19


def rss_anon_mib() -> float:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


class PeakSampler:
    """The peak of ``rss_anon_mib`` while it runs, sampled in a thread."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak, self._stop = every, rss_anon_mib(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, rss_anon_mib())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_mib())


def write_scene(path: pathlib.Path, side: int) -> None:
    """A smooth random RGB scene as an uncompressed TIFF, written strip by strip."""
    import PIL.Image
    import tifffile
    scene = tifffile.memmap(path, shape=(side, side, 3), dtype=np.uint8, photometric="rgb")
    rng = np.random.default_rng(side)
    for y in range(0, side, 1024):
        rows = min(1024, side - y)
        small = rng.integers(0, 256, (rows // 32 + 1, side // 32 + 1, 3), np.uint8)
        scene[y:y + rows] = np.stack([np.asarray(PIL.Image.fromarray(small[..., k]).resize(
            (side, rows), PIL.Image.Resampling.BILINEAR)) for k in range(3)], -1)
    scene.flush()
    del scene


def child(mode: str, scene: pathlib.Path, out: pathlib.Path, stripe: int) -> dict:
    import segformer_jax as sj
    from segformer_jax.segmenter import Segmenter
    from segformer_jax.tiles import open_image, write_mask_tiff
    config = sj.SegformerConfig.from_variant("b0", num_labels=CLASSES)
    image = open_image(scene, 3)
    side = image.shape[0]
    segmenter = Segmenter(config, sj.init_variables(config, seed=0), size=side, mode="slide",
                          crop=CROP, stride=STRIDE)
    warm = np.zeros((1, CROP, CROP, 3), np.float32)
    np.asarray(segmenter.inference.windows(segmenter.variables, warm))  # compiled, like a run
    if mode == "slide":
        image = np.asarray(image)  # decoded, as predict reads a PNG or JPEG
    baseline = rss_anon_mib()
    start = time.perf_counter()
    with PeakSampler() as sampler:
        if mode == "tiled":
            write_mask_tiff(out, segmenter.tiled(image, stripe=stripe), side, side)
        else:
            np.save(out, segmenter(image).astype(np.uint8))
    return {"mode": mode, "side": side, "seconds": time.perf_counter() - start,
            "baseline_mib": baseline, "peak_mib": sampler.peak, "extra_mib": sampler.peak - baseline}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark_tiles",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="2048,4096,10000")
    p.add_argument("--slide-up-to", type=int, default=4096)
    p.add_argument("--stripe", type=int, default=4096, help="predict --stripe (its default 4096)")
    p.add_argument("--child", choices=("tiled", "slide"), help=argparse.SUPPRESS)
    p.add_argument("--scene", type=pathlib.Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=pathlib.Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.scene, args.out, args.stripe)))
        return
    import tifffile

    from segformer_jax.inference import slide_windows
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in (int(s) for s in args.sizes.split(",")):
            scene = pathlib.Path(tmp) / f"scene{side}.tif"
            write_scene(scene, side)
            result = {"side": side, "windows": len(slide_windows(side, side, CROP, STRIDE))}
            for mode in ("tiled", "slide") if side <= args.slide_up_to else ("tiled",):
                out = pathlib.Path(tmp) / (f"{mode}{side}.tif" if mode == "tiled" else f"{mode}{side}.npy")
                done = subprocess.run([sys.executable, "-m", "experiments.benchmark_tiles", "--child", mode,
                                       "--scene", str(scene), "--out", str(out), "--stripe", str(args.stripe)],
                                      capture_output=True, text=True, check=True)
                result[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            if "slide" in result:
                result["equal"] = bool(np.array_equal(tifffile.imread(pathlib.Path(tmp) / f"tiled{side}.tif"),
                                                      np.load(pathlib.Path(tmp) / f"slide{side}.npy")))
            rows.append(result)
            print(json.dumps(result), flush=True)
    print(f"\nb0, {CLASSES} classes, crop {CROP}, stride {STRIDE}, stripe {args.stripe}; memory: peak "
          "RssAnon above the compiled model's")
    print("| scene | windows | tiled: extra memory (MiB) | tiled (s) | slide: extra memory (MiB) | "
          "slide (s) | masks equal |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        t, s = r["tiled"], r.get("slide")
        print(f"| {r['side']}² | {r['windows']} | {t['extra_mib']:.0f} | {t['seconds']:.0f} | "
              + (f"{s['extra_mib']:.0f} | {s['seconds']:.0f} | {'yes' if r['equal'] else 'NO'} |"
                 if s else "— | — | — |"))


if __name__ == "__main__":
    main()
