"""The demo page: through Gradio's own client, and in a real headless Chromium.

Both compare with ``predict`` run on the same image file: the downloaded mask must equal
its mask PNG, and the legend must name exactly the classes its mask holds.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import PIL.Image
import pytest

import segformer_jax as sj
from experiments import serve_screenshot
from segformer_jax import predict, visualize
from segformer_jax.checkpoint import save_model

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gradio = pytest.importorskip("gradio")
serve = pytest.importorskip("segformer_jax.serve")

pytestmark = pytest.mark.slow

NAMES = ("road", "tree", "sky", "car", "person", "bicycle")
# .ci/run sets this after installing Chromium: there the browser test must run, not skip.
BROWSER_REQUIRED = os.environ.get("SEGFORMER_BROWSER_TESTS") == "1"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = sj.SegformerConfig.from_variant(
        "b0", num_labels=len(NAMES), hidden_sizes=(8, 16, 24, 32), num_attention_heads=(1, 2, 3, 4),
        depths=(1, 1, 1, 1), decoder_hidden_size=16, id2label=dict(enumerate(NAMES)))
    return save_model(tmp_path_factory.mktemp("serve") / "model", config,
                      sj.init_variables(config, seed=5))


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    """A smooth 90 x 130 picture (several classes under a random model) as a PNG file."""
    yy, xx = np.mgrid[:90, :130]
    image = np.stack([np.sin(xx / 11), np.cos(yy / 8), np.sin((xx - yy) / 15)], -1) * 110 + 128
    path = tmp_path_factory.mktemp("img") / "street.png"
    PIL.Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def predicted(model_dir, image_file, tmp_path_factory):
    """``predict``'s mask of the image, at --size 64 (the page's size below)."""
    out = tmp_path_factory.mktemp("pred")
    assert predict.main([str(image_file), "--checkpoint", str(model_dir), "--out", str(out),
                         "--size", "64"]) == 0
    mask = np.asarray(PIL.Image.open(out / f"{image_file.stem}{predict.MASK_SUFFIX}"))
    present = [NAMES[k] for k, _ in visualize.class_areas(mask, len(NAMES))]
    assert len(present) >= 2, present
    return mask, present


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    page = serve.Page(str(model_dir), size=64, workdir=tmp_path_factory.mktemp("work"))
    blocks = serve.build(page)
    port = serve_screenshot.free_port()
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                  quiet=True)
    yield f"http://127.0.0.1:{port}/"
    blocks.close()


def test_gradio_client_mask_equals_predict(server, image_file, predicted):
    from gradio_client import Client, handle_file
    mask, present = predicted
    client = Client(server, verbose=False)
    overlay, legend, mask_file, timing = client.predict(handle_file(str(image_file)),
                                                        api_name="/segment")
    got = np.asarray(PIL.Image.open(mask_file))
    np.testing.assert_array_equal(got, mask)
    assert np.asarray(PIL.Image.open(overlay)).shape[:2] == mask.shape
    names = [n for n in NAMES if f'class="legend-name">{n}<' in legend]
    assert sorted(names) == sorted(present)
    assert timing.startswith("inference ") and " ms " in timing


def test_page_refuses_no_image(model_dir, tmp_path):
    page = serve.Page(str(model_dir), size=64, workdir=tmp_path)
    with pytest.raises(sj.errors.InputError, match="upload an image"):
        page.segment(None)


def test_bad_checkpoint_one_error(tmp_path, capsys):
    assert serve.main(["--checkpoint", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "nothing" in err


@pytest.mark.skipif(not BROWSER_REQUIRED and serve_screenshot.chromium() is None,
                    reason="Chromium and chromedriver not installed (.ci/run installs them)")
def test_browser_upload_shows_overlay_and_legend(server, image_file, predicted, tmp_path):
    assert serve_screenshot.chromium() is not None, "Chromium and chromedriver are required here"
    shot = pathlib.Path(os.environ.get("SEGFORMER_SCREENSHOT", tmp_path / "page.png"))
    names = serve_screenshot.segment_in_browser(server, image_file, tmp_path / "profile", shot)
    assert sorted(names) == sorted(predicted[1])
    assert shot.stat().st_size > 10_000
