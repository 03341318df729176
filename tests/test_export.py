"""Export: every format written by the command, reloaded in its own runtime, equal to the model.

The parity gate inside ``export`` compares the artefact with the jitted function it was made
from; these tests also compare a reloaded artefact with ``model.apply`` directly, on a size
the gate did not use, so a wrong gate cannot pass them.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import segformer_jax as sj
from segformer_jax import export
from segformer_jax.checkpoint import save_model
from segformer_jax.errors import InputError
from segformer_jax.evaluators import logits_to_mask
from segformer_jax.models.segformer import SegformerForSemanticSegmentation
from segformer_jax.processing import SegformerImageProcessor

pytestmark = pytest.mark.slow  # each format converts and compiles a model: 5-30 s apiece

NAMES = ("road", "tree", "sky", "car", "person")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config = sj.SegformerConfig.from_variant(
        "b0", num_labels=len(NAMES), hidden_sizes=(8, 16, 24, 32), num_attention_heads=(1, 2, 3, 4),
        depths=(1, 1, 1, 1), decoder_hidden_size=16, id2label=dict(enumerate(NAMES)))
    variables = sj.init_variables(config, seed=3)
    path = save_model(tmp_path_factory.mktemp("tiny") / "model", config, variables)
    return config, variables, path


def run(path, fmt, out, *flags):
    rc = export.main(["--checkpoint", str(path), "--format", fmt, "--out", str(out), *flags])
    return rc


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """``exported(fmt, *flags)``: the tiny model exported once per (format, flags) for the
    tests that only read the files (the plain StableHLO export serves three): (the output
    folder, what the command printed)."""
    _, _, path = tiny
    made = {}

    def get(fmt, *flags):
        if (fmt, *flags) not in made:
            out, printed = tmp_path_factory.mktemp(fmt) / "out", io.StringIO()
            with contextlib.redirect_stdout(printed):
                assert run(path, fmt, out, *flags) == 0
            made[(fmt, *flags)] = out, printed.getvalue()
        return made[(fmt, *flags)]
    return get


_APPLY = {}


def model_logits(config, variables, pixels):
    """``model.apply``, jitted: one compile per input shape (eager Flax compiles every op
    anew for each shape, about 4x the time here)."""
    if id(config) not in _APPLY:
        _APPLY[id(config)] = config, jax.jit(SegformerForSemanticSegmentation(config).apply)
    return np.asarray(_APPLY[id(config)][1](variables, pixels))


def model_masks(config, variables, images, size=None):
    """The serving function's masks computed the long way: the processor's normalisation and
    the host-side resize and argmax of ``predict``."""
    import jax.numpy as jnp

    from segformer_jax.models.ops import resize_bilinear
    x = jnp.asarray(images, jnp.float32) / 255
    if size is not None:
        x = resize_bilinear(x, size)
    processor = SegformerImageProcessor()
    pixels = (x - np.asarray(processor.image_mean, np.float32)) / np.asarray(processor.image_std,
                                                                             np.float32)
    return logits_to_mask(model_logits(config, variables, pixels), images.shape[1:3])


CASES = [  # format, flags, the input shapes a reloaded file is tried on beyond the gate's
    ("stablehlo", [], [(3, 70, 50, 3)]),
    ("savedmodel", [], [(3, 70, 50, 3)]),
    ("onnx", ["--size", "64,96"], [(3, 64, 96, 3)]),
    ("tflite", ["--size", "64,96"], [(1, 64, 96, 3)]),
]


@pytest.mark.parametrize("fmt,flags,shapes", CASES, ids=[c[0] for c in CASES])
def test_logits_export_matches_model(tiny, exported, fmt, flags, shapes):
    config, variables, _ = tiny
    out, printed = exported(fmt, *flags)
    meta = json.loads((out / "export.json").read_text())
    gate = export.FORMATS[fmt]
    # Two batch sizes where the batch is dynamic, two odd sizes where H and W are.
    assert len(meta["parity"]) == (2 if gate.dynamic_batch or gate.dynamic_size else 1)
    if gate.dynamic_size:
        assert {tuple(r["input_shape"][1:3]) for r in meta["parity"]} == set(export.CHECK_SIZES)
    assert all(r["passed"] and r["max_abs_diff"] <= export.LOGIT_TOLERANCE for r in meta["parity"])
    assert printed.count(f"parity {fmt}") == len(meta["parity"]) and "wrote" in printed
    assert meta["id2label"]["3"] == "car" and meta["input"]["name"] == "pixel_values"
    runner = export.load_runner(fmt, out)
    rng = np.random.default_rng(7)
    for shape in shapes:
        x = rng.standard_normal(shape, dtype=np.float32)
        got, want = runner(x), model_logits(config, variables, x)
        assert got.shape == want.shape == (shape[0], -(-shape[1] // 4), -(-shape[2] // 4), len(NAMES))
        np.testing.assert_allclose(got, want, rtol=0, atol=export.LOGIT_TOLERANCE)


PRE_CASES = [  # format, flags, image shapes, the model size inside (None: the image's own)
    ("stablehlo", [], [(2, 61, 83, 3)], None),
    ("stablehlo", ["--size", "64,64"], [(1, 200, 150, 3), (2, 33, 47, 3)], (64, 64)),
    ("savedmodel", ["--size", "64,64"], [(1, 120, 90, 3)], (64, 64)),
    ("onnx", ["--size", "64,96", "--batch", "2"], [(2, 64, 96, 3)], (64, 96)),
    ("tflite", ["--size", "64,96"], [(1, 64, 96, 3)], (64, 96)),
]


@pytest.mark.parametrize("fmt,flags,shapes,size", PRE_CASES,
                         ids=[f"{c[0]}-{c[3]}" for c in PRE_CASES])
def test_preprocessing_export_gives_the_models_masks(tiny, tmp_path, fmt, flags, shapes, size):
    config, variables, path = tiny
    out = tmp_path / fmt
    assert run(path, fmt, out, "--with-preprocessing", *flags) == 0
    meta = json.loads((out / "export.json").read_text())
    # Behind a resize to a fixed size any image size goes in; at the image's own size, 32 up.
    dynamic = export.FORMATS[fmt].dynamic_size
    minimum = (1, 1) if size and dynamic else size or (export.MIN_DYNAMIC_SIZE,) * 2
    assert meta["input"] == {"name": "images", "dtype": "uint8", "layout": "NHWC",
                             "shape": meta["input"]["shape"], "min_size": list(minimum),
                             "size_rule": meta["input"]["size_rule"]}
    assert all(r["passed"] and r["mismatched_pixels"] == 0 for r in meta["parity"])
    runner = export.load_runner(fmt, out)
    rng = np.random.default_rng(11)
    for shape in shapes:
        # A smooth image: class regions larger than a pixel, so the masks have structure.
        yy, xx = np.mgrid[:shape[1], :shape[2]]
        base = np.stack([np.sin(xx / 9), np.cos(yy / 7), np.sin((xx + yy) / 13)], -1)
        images = np.stack([((base + rng.normal(0, 0.1, base.shape)) * 100 + 128).clip(0, 255)
                           for _ in range(shape[0])]).astype(np.uint8)
        got, want = runner(images), model_masks(config, variables, images, size)
        assert got.shape == shape[:3] and got.dtype == np.int32
        assert len(np.unique(want)) > 1
        np.testing.assert_array_equal(got, want)


def test_stablehlo_runs_without_this_package(tiny, exported, tmp_path):
    config, variables, _ = tiny
    out, _ = exported("stablehlo")
    x = np.random.default_rng(0).standard_normal((1, 40, 72, 3), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np\n"
        "from jax import export\n"
        f"exp = export.deserialize(bytearray(open(r'{out / 'model.stablehlo'}', 'rb').read()))\n"
        f"np.save(r'{tmp_path / 'y.npy'}', np.asarray(exp.call(np.load(r'{tmp_path / 'x.npy'}'))))\n"
        "assert not any(m.startswith('segformer_jax') for m in sys.modules), 'package imported'\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model_logits(config, variables, x),
                               rtol=0, atol=export.LOGIT_TOLERANCE)


def test_stablehlo_records_and_enforces_its_minimum_size(tiny, exported, tmp_path):
    """A dynamic-size StableHLO export called below 32 px failed with only "Error refining
    shapes" (the constraint h, w >= 32 is inside the artefact, nowhere else): export.json now
    records it, the command prints it, and load_runner refuses a smaller image by name."""
    config, variables, _ = tiny
    shared, printed = exported("stablehlo")
    out = tmp_path / "hlo"
    shutil.copytree(shared, out)  # its export.json is rewritten below
    assert "height and width at least 32" in printed
    meta = json.loads((out / "export.json").read_text())
    assert meta["input"]["min_size"] == [32, 32]
    assert "at least 32" in meta["input"]["size_rule"] and "not only multiples" in meta["input"]["size_rule"]
    runner = export.load_runner("stablehlo", out)
    x = np.random.default_rng(1).standard_normal((1, 32, 33, 3), dtype=np.float32)  # the smallest
    np.testing.assert_allclose(runner(x), model_logits(config, variables, x), rtol=0,
                               atol=export.LOGIT_TOLERANCE)
    small = np.zeros((1, 16, 40, 3), np.float32)
    with pytest.raises(InputError, match=r"16 x 40 pixels is too small.*at least 32"):
        runner(small)
    with pytest.raises(InputError, match=r"1x40x40x4.*band count is fixed at 3"):
        runner(np.zeros((1, 40, 40, 4), np.float32))
    # An export.json written before min_size existed: the rule of its dynamic shape still holds.
    del meta["input"]["min_size"], meta["input"]["size_rule"]
    (out / "export.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"31 x 40 pixels is too small.*at least 32"):
        export.load_runner("stablehlo", out)(np.zeros((1, 31, 40, 3), np.float32))


def test_savedmodel_serving_signature(tiny, tmp_path):
    import tensorflow as tf
    config, variables, path = tiny
    out = tmp_path / "sm"
    assert run(path, "savedmodel", out, "--with-preprocessing", "--no-check") == 0
    assert "parity" not in json.loads((out / "export.json").read_text())
    loaded = tf.saved_model.load(str(out))
    serve = loaded.signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["images"]
    images = np.random.default_rng(0).integers(0, 256, (2, 50, 66, 3), dtype=np.uint8)
    masks = serve(images=tf.constant(images))["masks"].numpy()
    np.testing.assert_array_equal(masks, model_masks(config, variables, images))


def test_the_gate_fails_and_nothing_is_written(tiny, tmp_path, monkeypatch):
    config, variables, _ = tiny
    signature = export.Signature(None, None, False)
    real = export.load_runner
    monkeypatch.setattr(export, "load_runner",
                        lambda fmt, out, meta=None: (lambda x, run=real(fmt, out, meta): run(x) + 2e-4))
    out = tmp_path / "off"
    lines = []
    with pytest.raises(InputError, match="does not match the model.*nothing written"):
        export.export(config, variables, "stablehlo", signature, out, log=lines.append)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert len(lines) == 2 and all("FAILED" in line and "2.00e-04" in line for line in lines)


def test_parity_counts_mask_pixels():
    want = np.zeros((1, 4, 5), np.int32)
    got = want.copy()
    got[0, 1, 2] = 3
    rows = export.parity(lambda x: want, lambda x: got, [np.zeros((1, 4, 5, 3), np.uint8)], True)
    assert rows[0]["mismatched_pixels"] == 1 and not rows[0]["passed"]
    rows = export.parity(lambda x: want, lambda x: want[:, :3], [np.zeros((1, 4, 5, 3), np.uint8)], True)
    assert not rows[0]["passed"] and "output shape" in rows[0]["error"]


@pytest.mark.parametrize("flags,message", [
    (["--format", "onnx", "--size", "dynamic"], "--size dynamic: onnx has a fixed height and width"),
    (["--format", "tflite", "--batch", "dynamic"], "--batch dynamic: tflite has a fixed batch"),
    (["--format", "stablehlo", "--size", "16,64"], "at least 32"),
    (["--format", "stablehlo", "--opset", "17"], "--opset is for --format onnx"),
    (["--format", "keras"], "invalid choice: 'keras'"),
    (["--format", "onnx", "--batch", "0"], "expected a positive integer or 'dynamic'"),
    (["--format", "onnx", "--size", "64x"], "expected H,W"),
])
def test_bad_flags_one_error(tiny, tmp_path, capsys, flags, message):
    _, _, path = tiny
    try:
        rc = export.main(["--checkpoint", str(path), "--out", str(tmp_path / "o"), *flags])
    except SystemExit as e:
        rc = e.code
    assert rc in (1, 2)
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_not_a_model_and_a_classifier_are_refused(tiny, tmp_path, capsys):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    assert run(junk, "stablehlo", tmp_path / "o") == 1
    assert "not a checkpoint" in capsys.readouterr().err
    config = sj.SegformerConfig.from_variant("b0", num_labels=3, hidden_sizes=(8, 16, 24, 32),
                                             num_attention_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1))
    classifier = sj.save_pretrained(tmp_path / "cls", config,
                                    sj.init_variables(config, task="image_classification"),
                                    task="image_classification")
    assert run(classifier, "stablehlo", tmp_path / "o") == 1
    assert "not a semantic segmentation one" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_existing_output_is_kept(tiny, tmp_path, capsys):
    _, _, path = tiny
    out = tmp_path / "o"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"an earlier export")
    assert run(path, "stablehlo", out) == 1
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert (out / "model.onnx").read_bytes() == b"an earlier export"


def test_missing_optional_dependency_names_the_extra(tiny, tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "jax2onnx" else real(name, *a))
    _, _, path = tiny
    assert run(path, "onnx", tmp_path / "o", "--size", "64,64") == 1
    err = capsys.readouterr().err
    assert "needs jax2onnx" in err and "pip install 'segformer_jax[export]'" in err
