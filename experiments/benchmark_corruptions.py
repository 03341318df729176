"""The cost of each corruption on one image, ours against the ``imagecorruptions`` package, in
one process on the same photograph (scikit-image's ``coffee``, resized to ``--size``; default
Cityscapes' 1024 x 2048), with the outputs compared::

    python -m experiments.benchmark_corruptions                       # every corruption, severity 3
    python -m experiments.benchmark_corruptions --size 512,1024 --corruptions glass_blur,fog

Prints a Markdown table: seconds per image of each (the median of ``--repeats``, one draw
each), the speed-up (package / ours) and whether the two images are equal. A robustness
evaluation corrupts every image once per (corruption, severity), in the input pipeline's
threads; this is the work those threads do. Time on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from experiments.imagecorruptions_shim import imagecorruptions
from segformer_jax.data import corruptions as C
from segformer_jax.tables import markdown_table


def photo(size: tuple[int, int]) -> np.ndarray:
    from PIL import Image
    from skimage import data
    return np.asarray(Image.fromarray(data.coffee()).resize((size[1], size[0]), Image.BILINEAR))


def timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1024,2048", help="H,W of the image (default 1024,2048)")
    parser.add_argument("--corruptions", default="all", help="all or names, comma-separated")
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-package", action="store_true", help="time ours only")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split(","))
    names = C.ALL if args.corruptions == "all" else tuple(args.corruptions.split(","))
    image = photo(size)
    rows = []
    with imagecorruptions() as package:
        for name in names:
            key = (0, 0, name, args.severity)

            def ours(name=name, key=key):
                return C.corrupt(image, name, args.severity, C.image_rng(*key))

            def theirs(name=name, key=key):
                np.random.set_state(C.image_rng(*key).get_state())
                return package.corrupt(image, severity=args.severity, corruption_name=name)

            ours_s, result = timed(ours, args.repeats)
            if args.skip_package:
                rows.append([name, f"{ours_s:.3f}", "–", "–", "–"])
                continue
            theirs_s, reference = timed(theirs, args.repeats)
            rows.append([name, f"{ours_s:.3f}", f"{theirs_s:.3f}", f"**{theirs_s / ours_s:.2f}×**",
                         "yes" if np.array_equal(result, reference) else "NO"])
            print(" | ".join(rows[-1]), flush=True)
    print(f"\n{size[0]}×{size[1]} photograph, severity {args.severity}, median of {args.repeats}\n")
    print(markdown_table(["corruption", "ours s", "imagecorruptions s", "speed-up", "equal"], rows))


if __name__ == "__main__":
    main()
