"""Writes a folder dataset as users' own data often arrives, for the README's "Your own
data" walk-through: the embedded shapes saved as JPEG images and PNG masks, with the
labels one-based (0 = "unlabelled", here a 3-pixel frame; class k stored as k + 1) while
``classes.txt`` names the classes from 0 — the commonest first-week mistake, which
``python -m segformer_jax.data.check`` finds::

    python -m experiments.own_data_example DIR [--train 64] [--validation 16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import PIL.Image

from segformer_jax.data.synthetic import CLASS_NAMES, generate_example

FRAME = 3  # pixels of "unlabelled" (0) around each mask


def write(root: Path, num_train: int, num_validation: int) -> None:
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"error: {root} exists and is not empty")
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    for split, count in (("train", num_train), ("validation", num_validation)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = generate_example(i, split)
            stored = mask.astype(np.uint8) + 1
            stored[:FRAME], stored[-FRAME:], stored[:, :FRAME], stored[:, -FRAME:] = 0, 0, 0, 0
            PIL.Image.fromarray(image).save(root / "images" / split / f"{i:04d}.jpg", quality=95)
            PIL.Image.fromarray(stored).save(root / "masks" / split / f"{i:04d}.png")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.own_data_example",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path)
    p.add_argument("--train", type=int, default=64)
    p.add_argument("--validation", type=int, default=16)
    args = p.parse_args(argv)
    write(args.root, args.train, args.validation)
    print(f"wrote {args.train} + {args.validation} pairs and classes.txt to {args.root}")


if __name__ == "__main__":
    main()
