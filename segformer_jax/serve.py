"""A local demo page for a segmentation model: upload an image, see what the model finds.

    python -m segformer_jax.serve --checkpoint PATH [--port 7860] [--host 127.0.0.1]
        [--size 512] [--alpha 0.5]

A Gradio page (the form of the Hugging Face Spaces demos of SegFormer) where a person
uploads an image or picks one of the examples (images of the embedded synthetic set) and
sees the overlay, a legend of the classes present with their share of the pixels, the
class-id mask as a PNG to download, and the inference time. ``PATH`` is anything
``predict`` loads, and the mask is ``predict``'s for the same file: the same reading of
the image, the same test scale (``--size``), the same sliding window for panoramas.

Needs the ``serve`` extra: ``pip install 'segformer_jax[serve]'``. Nothing is sent anywhere:
the page is served on ``--host`` (default: this machine only) and Gradio's analytics are
off.
"""

from __future__ import annotations

import argparse
import html
import os
import pathlib
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from segformer_jax.errors import InputError, SegformerError

EXAMPLE_COUNT = 3


def legend_html(mask: np.ndarray, colours: np.ndarray, names: Sequence[str]) -> str:
    """An HTML table of the classes in ``mask``, largest first: swatch, name, pixel share."""
    from segformer_jax import visualize
    rows = []
    for k, share in visualize.class_areas(mask, len(names)):
        r, g, b = (int(c) for c in colours[k])
        rows.append(f'<tr><td><span style="display:inline-block;width:1em;height:1em;'
                    f'background:rgb({r},{g},{b})"></span></td>'
                    f'<td class="legend-name">{html.escape(names[k])}</td>'
                    f'<td class="legend-share">{100 * share:.1f}%</td></tr>')
    return ('<table id="segformer-legend"><tr><th></th><th>class</th><th>pixels</th></tr>'
            + "".join(rows) + "</table>")


class Page:
    """What the page computes for one image, apart from Gradio: testable without a server.

    ``segment(path)`` returns ``(overlay, legend HTML, mask PNG path, timing text)`` for an
    image file, read as ``predict`` reads it (``read_image``: EXIF orientation, transparency
    onto white, 16-bit to 8-bit); the mask PNG is ``predict``'s file for it.
    """

    def __init__(self, checkpoint: str, size: int = 512, alpha: float = 0.5,
                 workdir: str | os.PathLike | None = None):
        from segformer_jax import visualize
        from segformer_jax.checkpoint import load_for_inference
        from segformer_jax.evaluators import scored_class_names
        from segformer_jax.segmenter import Segmenter
        config, variables = load_for_inference(checkpoint)
        if config.num_channels != 3:
            from segformer_jax.errors import InputError
            raise InputError(f"{checkpoint}: the demo page segments RGB uploads; this model takes "
                             f"{config.num_channels} bands (python -m segformer_jax.predict reads them)")
        self.segmenter = Segmenter(config, variables, size)
        self.names = list(scored_class_names(config.num_labels,
                                             [config.id2label[i] for i in range(config.num_labels)]))
        self.colours = visualize.palette_for(self.names)
        self.alpha = alpha
        self.workdir = pathlib.Path(workdir or tempfile.mkdtemp(prefix="segformer_serve_"))
        self.workdir.mkdir(parents=True, exist_ok=True)

    def segment(self, path: str | os.PathLike | None) -> tuple[np.ndarray, str, str, str]:
        from segformer_jax import visualize
        from segformer_jax.evaluators import logits_to_mask
        from segformer_jax.images import read_image, save_mask
        if path is None:
            raise InputError("upload an image first")
        rgb = read_image(path)
        start = time.perf_counter()
        logits, mode = self.segmenter.logits(rgb)
        mask = logits_to_mask(logits, rgb.shape[:2])[0]
        seconds = time.perf_counter() - start
        overlay = visualize.overlay(rgb, mask, self.colours, self.alpha)
        path = self.workdir / f"mask-{uuid.uuid4().hex[:8]}.png"
        save_mask(path, mask, len(self.names))
        scaled = self.segmenter.plan(*rgb.shape[:2])[0]
        timing = (f"inference {1000 * seconds:.0f} ms ({mode}, {rgb.shape[0]}×{rgb.shape[1]} "
                  f"image at {scaled[0]}×{scaled[1]}; the first call of a size compiles)")
        return overlay, legend_html(mask, self.colours, self.names), str(path), timing


def example_images(directory: pathlib.Path, count: int = EXAMPLE_COUNT) -> list[str]:
    """A few validation images of the embedded synthetic set, as PNG files to pick from."""
    import PIL.Image

    from segformer_jax.data.synthetic import generate_example
    paths = []
    for i in range(count):
        path = directory / f"example_{i}.png"
        PIL.Image.fromarray(generate_example(i, "validation")[0]).save(path)
        paths.append(str(path))
    return paths


def build(page: Page) -> Any:
    """The Gradio Blocks of the page; its ``segment`` endpoint is ``/segment``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    def run(image: str | None) -> tuple[Any, ...]:
        try:
            return page.segment(image)
        except InputError as e:
            raise gr.Error(str(e)) from None

    with gr.Blocks(title="SegFormer") as blocks:
        gr.Markdown("## SegFormer: semantic segmentation\nUpload an image or pick an example.")
        with gr.Row():
            image = gr.Image(type="filepath", label="image", elem_id="segformer-input")
            overlay = gr.Image(type="numpy", label="overlay", elem_id="segformer-overlay",
                               interactive=False)
        with gr.Row():
            legend = gr.HTML(elem_id="segformer-legend-box")
            with gr.Column():
                mask = gr.File(label="mask (PNG of class ids)", elem_id="segformer-mask")
                timing = gr.Markdown(elem_id="segformer-timing")
        button = gr.Button("Segment", variant="primary", elem_id="segformer-run")
        gr.Examples(example_images(page.workdir), inputs=image)
        button.click(run, inputs=image, outputs=[overlay, legend, mask, timing], api_name="segment")
    return blocks


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from segformer_jax.cli import ArgumentParser, positive_int
    parser = ArgumentParser(prog="python -m segformer_jax.serve", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="Hub directory / weight file, model checkpoint or training workdir")
    parser.add_argument("--port", type=positive_int, default=7860, help="default 7860")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--size", type=positive_int, default=512,
                        help="test-time short side, as predict's (default 512)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha must be in [0, 1], got {args.alpha}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import importlib.util
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    if importlib.util.find_spec("gradio") is None:
        print("error: the demo page needs gradio, which is not installed; "
              "pip install 'segformer_jax[serve]'", file=sys.stderr)
        return 1
    try:
        page = Page(args.checkpoint, args.size, args.alpha)
    except SegformerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        # No "Use via API" link in the footer (gradio 6's footer_links; gradio 5 called it
        # show_api=False). The /segment endpoint stays callable, as gradio_client needs it.
        build(page).launch(server_name=args.host, server_port=args.port,
                           footer_links=["gradio", "settings"])
    except OSError as e:  # the port is taken, the address is not this machine's
        print(f"error: cannot serve on {args.host}:{args.port} ({e})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
