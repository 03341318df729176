"""The demo page: through Gradio's own client, and in a real headless Chromium.

Both compare with ``predict`` run on the same image file: the downloaded mask must equal
its mask PNG, and the legend must name exactly the classes its mask holds.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.request

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

ROOT = pathlib.Path(__file__).resolve().parent.parent
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


def _command_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False",
            "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _wait_listening(url: str, process: subprocess.Popen, log: pathlib.Path,
                    timeout_s: float = 120) -> None:
    """Until ``url`` answers 200; fails with the command's output if it exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve exited with {process.returncode} before listening:\n"
                        f"{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"serve did not listen on {url} within {timeout_s} s:\n{log.read_text()[-3000:]}")


def test_serve_command_serves_and_segments(model_dir, image_file, predicted, tmp_path):
    """``python -m segformer_jax.serve`` as a user starts it: it listens (gradio 6 refused
    the old ``launch(show_api=False)`` with a TypeError), its page has no API link in the
    footer, and a request through gradio_client segments an image into predict's mask."""
    from gradio_client import Client, handle_file
    port = serve_screenshot.free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "segformer_jax.serve", "--checkpoint", str(model_dir),
             "--port", str(port), "--size", "64"],
            stdout=out, stderr=subprocess.STDOUT, env=_command_env(), cwd=tmp_path)
    try:
        _wait_listening(url, process, log)
        with urllib.request.urlopen(url, timeout=30) as answer:
            page = answer.read().decode("utf-8", "replace")
        assert '"footer_links":["gradio","settings"]' in page.replace(" ", "")
        client = Client(url, verbose=False)
        overlay, legend, mask_file, timing = client.predict(handle_file(str(image_file)),
                                                            api_name="/segment")
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(mask_file)), predicted[0])
        assert sorted(n for n in NAMES if f'class="legend-name">{n}<' in legend) \
            == sorted(predicted[1])
        assert timing.startswith("inference ")
        assert process.poll() is None, log.read_text()
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
    assert "Traceback" not in log.read_text()


def test_serve_command_bad_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, "-m", "segformer_jax.serve", "--checkpoint",
                             str(tmp_path / "nothing"), "--port", str(serve_screenshot.free_port())],
                            capture_output=True, text=True, env=_command_env(), timeout=300)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nothing" in lines[0], lines


@pytest.mark.skipif(not BROWSER_REQUIRED and serve_screenshot.chromium() is None,
                    reason="Chromium and chromedriver not installed (.ci/run installs them)")
def test_browser_upload_shows_overlay_and_legend(server, image_file, predicted, tmp_path):
    assert serve_screenshot.chromium() is not None, "Chromium and chromedriver are required here"
    shot = pathlib.Path(os.environ.get("SEGFORMER_SCREENSHOT", tmp_path / "page.png"))
    names = serve_screenshot.segment_in_browser(server, image_file, tmp_path / "profile", shot)
    assert sorted(names) == sorted(predicted[1])
    assert shot.stat().st_size > 10_000
