"""predict / evaluate / visualize: every checkpoint kind, image files of any mode, exact mIoU.

One tiny model throughout; the test images are sized so that (almost) every forward pass has
the same (32, 64) test shape, which keeps the number of XLA compilations (the cost on a CPU)
small.
"""

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

import segformer_jax as sj
from segformer_jax import checkpoint as ck
from segformer_jax import evaluate as ev
from segformer_jax import evaluators
from segformer_jax import images as img
from segformer_jax import predict as pr
from segformer_jax import segmenter as sg
from segformer_jax import visualize as vis
from segformer_jax.checkpoint import save_model
from segformer_jax.data.synthetic import CLASS_NAMES
from segformer_jax.errors import EvaluationError, InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_LABELS = len(CLASS_NAMES)  # 6


def _close_trees(a, b):
    import jax
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config = sj.SegformerConfig.from_variant(
        "b0", num_labels=NUM_LABELS, hidden_sizes=(8, 16, 24, 32), num_attention_heads=(1, 2, 3, 4),
        depths=(1, 1, 1, 1), decoder_hidden_size=16, id2label=dict(enumerate(CLASS_NAMES)))
    variables = sj.init_variables(config, seed=1)
    root = tmp_path_factory.mktemp("tiny")
    hub_dir = sj.save_pretrained(root / "hub", config, variables)
    model_dir = save_model(root / "model", config, variables)
    return config, variables, hub_dir, model_dir


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Image files of several sizes and modes; all but 'wide' have the test shape (32, 64)
    at --size 32, 'wide' (more than twice as wide as tall) goes through the sliding window."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)

    def pixels(h, w, c=3):
        yy, xx = np.mgrid[:h, :w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
        return np.clip(base[..., :c] + rng.normal(0, 20, (h, w, c)), 0, 255).astype(np.uint8)

    files = {}
    files["rgb"] = d / "rgb.png"
    PIL.Image.fromarray(pixels(50, 70)).save(files["rgb"])
    files["gray"] = d / "gray.jpg"
    PIL.Image.fromarray(pixels(40, 60)[..., 0], "L").save(files["gray"], quality=90)
    files["rgba"] = d / "rgba.png"
    rgba = np.concatenate([pixels(45, 80), rng.integers(0, 256, (45, 80, 1), dtype=np.uint8)], -1)
    PIL.Image.fromarray(rgba, "RGBA").save(files["rgba"])
    files["palette"] = d / "palette.png"
    PIL.Image.fromarray(pixels(50, 70)).convert("P").save(files["palette"])
    files["sixteen"] = d / "sixteen.png"
    PIL.Image.fromarray(pixels(50, 70)[..., 1].astype(np.uint16) * 257).save(files["sixteen"])
    files["wide"] = d / "wide.png"
    PIL.Image.fromarray(pixels(30, 200)).save(files["wide"])
    files["broken"] = d / "broken.png"
    files["broken"].write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return files


# --------------------------------------------------------------------------------------
# Loading


def test_load_for_inference_reads_every_checkpoint_kind(tiny, tmp_path):
    import jax.numpy as jnp

    from segformer_jax.checkpoint import TrainCheckpoints
    from segformer_jax.optim import Recipe, make_optimizer
    config, variables, hub_dir, model_dir = tiny
    for path in (hub_dir, hub_dir / "model.safetensors", model_dir):
        got_config, got = ck.load_for_inference(path)
        assert got_config == config
        _close_trees(got, variables)

    # A training workdir: the latest step's params + batch_stats, the config from its meta.
    tx = make_optimizer(Recipe(learning_rate=1e-3, warmup_steps=0, total_steps=10))
    params = variables["params"]
    checkpoints = TrainCheckpoints(tmp_path / "run", every=1, best_metric=None)
    for step in (2, 4):
        state = {"step": jnp.int32(step), "params": params, "batch_stats": variables["batch_stats"],
                 "opt_state": tx.init(params)}
        checkpoints.save(step, state, {"step": step, "model": config.to_dict()}, force=True)
    checkpoints.wait()
    checkpoints.close()
    for path in (tmp_path / "run", tmp_path / "run" / "checkpoints",
                 tmp_path / "run" / "checkpoints" / "2"):
        got_config, got = ck.load_for_inference(path)
        assert got_config == config
        _close_trees(got, variables)
    assert ck.training_step_dir(tmp_path / "run").name == "4"

    with pytest.raises(sj.CheckpointError, match="nowhere"):
        ck.load_for_inference(tmp_path / "nowhere")
    (tmp_path / "photo.jpg").write_bytes(b"not weights")
    with pytest.raises(sj.CheckpointError, match="photo.jpg: not a weight file"):
        ck.load_for_inference(tmp_path / "photo.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(sj.CheckpointError, match="empty.*not a checkpoint"):
        ck.load_for_inference(tmp_path / "empty")
    (tmp_path / "run2" / "checkpoints").mkdir(parents=True)
    with pytest.raises(sj.CheckpointError, match="run2.*without a finished checkpoint"):
        ck.load_for_inference(tmp_path / "run2")


# --------------------------------------------------------------------------------------
# Pure parts


def test_visualize_palette_overlay_legend():
    p = vis.palette(300)
    assert p.shape == (300, 3) and p.dtype == np.uint8
    assert len({tuple(c) for c in p}) == 300                 # distinct
    np.testing.assert_array_equal(vis.palette(7), p[:7])     # colour k does not depend on n
    assert vis.palette_for(vis.CITYSCAPES_CLASSES)[0].tolist() == [128, 64, 128]

    image = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), np.int32)
    mask[:, 20:] = 2
    mask[0, 0] = 255                                          # no colour: left as it is
    colours = vis.palette(3)
    np.testing.assert_array_equal(vis.overlay(image, mask, colours, 0.0), image)
    full = vis.overlay(image, mask, colours, 1.0)
    assert full[5, 5].tolist() == colours[0].tolist() and full[5, 25].tolist() == colours[2].tolist()
    assert full[0, 0].tolist() == [100, 100, 100]
    assert [k for k, _ in vis.class_areas(mask, 3)] == [0, 2]

    side = vis.overlay_with_legend(image, mask, colours, ["a", "b", "c"], position="right")
    assert side.shape[0] >= 20 and side.shape[1] > 30 and side.dtype == np.uint8
    np.testing.assert_array_equal(side[:20, :30], vis.overlay(image, mask, colours, 0.5))
    below = vis.overlay_with_legend(image, mask, colours, ["a", "b", "c"], position="bottom")
    assert below.shape[0] > 20 and below.shape[1] >= 30
    assert vis.legend_position(30, 200) == "bottom" and vis.legend_position(50, 70) == "right"


def test_banded_logits_to_mask_equals_the_full_resize():
    from segformer_jax.models.ops import resize_bilinear
    logits = np.random.default_rng(0).standard_normal((2, 7, 9, 5), dtype=np.float32)
    full = resize_bilinear(logits, (50, 70)).argmax(-1)
    np.testing.assert_array_equal(evaluators.logits_to_mask(logits, (50, 70)), full)
    np.testing.assert_array_equal(evaluators.logits_to_mask(logits, (50, 70), chunk_elements=999), full)
    same_h = resize_bilinear(logits, (7, 40)).argmax(-1)
    np.testing.assert_array_equal(evaluators.logits_to_mask(logits, (7, 40), chunk_elements=99), same_h)


def test_test_size_and_plan(tiny):
    config, variables, _, _ = tiny
    assert sg.inference_size(50, 70, 32) == (32, 64)
    assert sg.inference_size(375, 500, 512) == (512, 704)           # ADE's aligned test size
    seg = sg.Segmenter(config, variables, size=32)
    assert seg.plan(50, 70)[1] == "whole"
    # Long side capped at 4 x size (mmcv's rescale into (128, 32)), as evaluate does.
    assert seg.plan(30, 200) == ((32, 128), "slide", 32, 24)
    assert sg.Segmenter(config, variables, size=32, crop=16).plan(50, 70)[1:] == ("slide", 16, 12)
    with pytest.raises(InputError):
        sg.Segmenter(config, variables, mode="whole", crop=16)
    assert pr.output_stems(["a/x.png", "b/x.jpg", "y.png"]) == ["x", "x-1", "y"]


# --------------------------------------------------------------------------------------
# predict


def test_predict_writes_masks_and_overlays(tiny, images, tmp_path, capsys):
    config, variables, _, model_dir = tiny
    order = ["rgb", "gray", "broken", "rgba", "palette", "sixteen", "wide"]
    out = tmp_path / "out"
    rc = pr.main(["--checkpoint", str(model_dir), *[str(images[k]) for k in order],
                  "--out", str(out), "--size", "32"])
    captured = capsys.readouterr()
    assert rc == 1                                            # the broken file
    errors = [line for line in captured.err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and str(images["broken"]) in errors[0]
    assert "(slide)" in captured.out and "(whole)" in captured.out
    assert not (out / "broken_mask.png").exists()

    segmenter = sg.Segmenter(config, variables, size=32)
    for key in order:
        if key == "broken":
            continue
        with PIL.Image.open(images[key]) as source:
            width, height = source.size
        mask_img = PIL.Image.open(out / f"{key}_mask.png")
        overlay = PIL.Image.open(out / f"{key}_overlay.png")
        assert mask_img.mode == "L" and mask_img.size == (width, height)
        mask = np.asarray(mask_img)
        assert mask.max() < NUM_LABELS
        np.testing.assert_array_equal(mask, segmenter(img.read_image(images[key])))
        assert overlay.mode == "RGB"
        if key == "wide":                                     # legend below
            assert overlay.size[0] >= width and overlay.size[1] > height
        else:                                                 # legend to the right
            assert overlay.size[0] > width and overlay.size[1] >= height
        np.testing.assert_array_equal(
            np.asarray(overlay)[:height, :width],
            vis.overlay(img.read_image(images[key]), mask, vis.palette(NUM_LABELS), 0.5))


def test_predict_command_line(tiny, images, tmp_path):
    """A subprocess run (Hub checkpoint) gives the masks of the in-process run (Orbax one)."""
    _, _, hub_dir, _ = tiny
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "-m", "segformer_jax.predict", "--checkpoint",
                             str(hub_dir), str(images["rgb"]), str(images["gray"]), "--out",
                             str(out), "--size", "32", "--legend", "none"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    for key in ("rgb", "gray"):
        mask = np.asarray(PIL.Image.open(out / f"{key}_mask.png"))
        assert mask.shape == np.asarray(PIL.Image.open(images[key])).shape[:2]
        overlay = PIL.Image.open(out / f"{key}_overlay.png")
        assert overlay.size == PIL.Image.open(images[key]).size   # --legend none
    # same weights, same masks as the model checkpoint gives in-process
    config, variables = ck.load_for_inference(hub_dir)
    expected = sg.Segmenter(config, variables, size=32)(img.read_image(images["rgb"]))
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(out / "rgb_mask.png")), expected)


def test_predict_errors(tiny, images, tmp_path, capsys):
    _, _, hub_dir, _ = tiny
    assert pr.main(["--checkpoint", str(tmp_path / "nope"), str(images["rgb"]),
                    "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nope" in err[0]
    assert pr.main(["--checkpoint", str(hub_dir), str(tmp_path / "missing.jpg"),
                    "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.jpg" in err[0]
    with pytest.raises(SystemExit) as exit_info:
        pr.main(["--checkpoint", str(hub_dir), str(images["rgb"]), "--out", "o", "--size", "-3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    with pytest.raises(InputError, match="broken.png"):
        img.read_image(images["broken"])


def test_predict_names_an_image_past_pils_pixel_limit(tiny, images, tmp_path, capsys, monkeypatch):
    """A 20000 x 20000 scene is past PIL's decompression-bomb limit: one line saying what
    to do with it (the limit lowered here so that a small file stands for it)."""
    _, _, hub_dir, _ = tiny
    width, height = PIL.Image.open(images["rgb"]).size
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", width * height // 4)
    assert pr.main(["--checkpoint", str(hub_dir), str(images["rgb"]), "--out", str(tmp_path / "o")]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {images['rgb']}: {width}x{height} pixels") and "predict --mode tiled" in line


def test_predict_and_evaluate_choose_the_same_test_size():
    """predict --size 512 and evaluate's ADE20K preset give every image the same test size."""
    from segformer_jax.data.transforms import EvalTransform
    settings = evaluators.eval_settings("ade20k")
    transform = EvalTransform(img_scale=settings.img_scale, size_divisor=settings.size_divisor)
    for h, w in ((375, 500), (512, 683), (100, 1000), (1000, 300), (30, 200), (2000, 2000)):
        image = np.zeros((h, w, 3), np.uint8)
        evaluated = transform({"image": image, "segmentation_mask": image[..., :1]})["image"].shape[:2]
        assert sg.inference_size(h, w, 512) == evaluated, (h, w)


def test_binary_model_is_thresholded_and_scored_on_two_classes(tmp_path):
    """num_labels == 1: class 1 where the sigmoid logit is above 0, a 2 x 2 confusion matrix."""
    import jax

    from segformer_jax.data import SplitData
    from segformer_jax.inference import Inference
    from segformer_jax.models.ops import resize_bilinear
    config = sj.SegformerConfig.from_variant(
        "b0", num_labels=1, hidden_sizes=(8, 16, 24, 32), num_attention_heads=(1, 2, 3, 4),
        depths=(1, 1, 1, 1), decoder_hidden_size=16, id2label={0: "crack"})
    variables = sj.init_variables(config, seed=3)
    rng = np.random.default_rng(4)
    records = []
    for h, w in ((32, 64), (40, 48)):
        mask = rng.integers(0, 2, (h, w, 1), dtype=np.uint8)
        mask[0] = 255
        records.append({"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                        "segmentation_mask": mask, "file_name": b"x"})
    split = SplitData(source=records, class_names=("crack",), reduce_zero_label=False,
                      name="folder", split="validation")
    summary = evaluators.evaluate_split(config, variables, split, img_scale=None, size_divisor=32)
    assert summary["class_names"] == ("background", "crack")

    from segformer_jax.constants import MEAN_RGB, STD_RGB, round_up
    from segformer_jax.data.transforms import resize_image
    inference = Inference(sj.SegformerForSemanticSegmentation(config).apply)
    cm = np.zeros((2, 2), np.int64)
    for r in records:
        h, w = r["image"].shape[:2]
        x = resize_image(r["image"], (round_up(h), round_up(w)))
        x = ((x.astype(np.float32) - np.float32(MEAN_RGB)) / np.float32(STD_RGB))[None]
        logit = resize_bilinear(np.asarray(inference.whole(jax.device_put(variables), x)),
                                (h, w))[0, ..., 0]
        label = r["segmentation_mask"][..., 0].astype(np.int64)
        valid = label != 255
        cm += np.bincount(label[valid] * 2 + (logit[valid] > 0), minlength=4).reshape(2, 2)
    np.testing.assert_array_equal(summary["confusion_matrix"], cm)
    assert 0 < cm[:, 1].sum() < cm.sum()   # the random head predicts both classes here
    # Multi-scale/flip averages the sigmoid (not a softmax over one channel, which is 1):
    # at one scale it is the whole-image prediction (the first image is already aligned).
    whole = evaluators.evaluate_split(config, variables, split, img_scale=None, size_divisor=32,
                                max_examples=1)
    single = evaluators.evaluate_split(config, variables, split, img_scale=None, size_divisor=32,
                                 max_examples=1, scales=(1.0,))
    np.testing.assert_array_equal(single["confusion_matrix"], whole["confusion_matrix"])
    flipped = evaluators.evaluate_split(config, variables, split, img_scale=None, size_divisor=32,
                                  max_examples=1, flip=True)["confusion_matrix"]
    assert 0 < flipped[:, 1].sum() < flipped.sum()
    mask = evaluators.logits_to_mask(np.array([[[[-0.5], [0.0]], [[2.0], [1e-3]]]], np.float32),
                                     (2, 2))
    assert mask.tolist() == [[[0, 0], [1, 1]]]


def test_uint16_masks_for_many_classes(tmp_path):
    mask = np.array([[0, 300], [299, 7]])
    img.save_mask(tmp_path / "m.png", mask, num_labels=301)
    back = PIL.Image.open(tmp_path / "m.png")
    assert np.asarray(back).tolist() == mask.tolist() and back.mode.startswith("I")


# --------------------------------------------------------------------------------------
# evaluate


def _reference_confusion(config, variables, split, img_scale, divisor):
    """Independently: resize, normalise, whole-image logits, resize, argmax, np.bincount."""
    from segformer_jax.data.transforms import MEAN_RGB, STD_RGB, rescale_size, resize_image
    from segformer_jax.inference import Inference, aligned_test_size
    from segformer_jax.models.ops import resize_bilinear
    inference = Inference(sj.SegformerForSemanticSegmentation(config).apply)
    k = config.num_labels
    cm = np.zeros(k * k, np.int64)
    for i in range(len(split.source)):
        record = split.source[i]
        image, label = np.asarray(record["image"]), np.asarray(record["segmentation_mask"])[..., 0]
        h, w = image.shape[:2]
        x = resize_image(resize_image(image, rescale_size(h, w, img_scale)),
                         aligned_test_size(h, w, img_scale, divisor))
        x = (x.astype(np.float32) - np.float32(MEAN_RGB)) / np.float32(STD_RGB)
        logits = np.asarray(inference.whole(variables, x[None].astype(np.float32)))
        pred = resize_bilinear(logits, (h, w))[0].argmax(-1)
        valid = label != 255
        cm += np.bincount(label[valid].astype(np.int64) * k + pred[valid], minlength=k * k)
    return cm.reshape(k, k)


def test_evaluate_matches_an_independent_computation(tiny, tmp_path):
    from segformer_jax.data import load_split
    config, variables, _, _ = tiny
    split = load_split("synthetic", "validation", data_dir=tmp_path, num_train=2,
                       num_validation=3, size_range=(48, 64))
    seen = []
    summary = evaluators.evaluate_split(config, variables, split, img_scale=(64, 32), size_divisor=32,
                          progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)] and summary["num_examples"] == 3
    assert summary["settings"]["mode"] == "whole"

    cm = _reference_confusion(config, variables, split, (64, 32), 32)
    np.testing.assert_array_equal(summary["confusion_matrix"], cm)
    inter = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
        acc = inter / cm.sum(1)
    np.testing.assert_allclose(summary["IoU"], iou, rtol=1e-12, equal_nan=True)
    assert summary["mIoU"] == pytest.approx(np.nanmean(iou), rel=1e-12)
    assert summary["mAcc"] == pytest.approx(np.nanmean(acc), rel=1e-12)
    assert summary["aAcc"] == pytest.approx(inter.sum() / cm.sum(), rel=1e-12)
    assert summary["class_names"] == CLASS_NAMES

    first = evaluators.evaluate_split(config, variables, split, img_scale=(64, 32), size_divisor=32,
                        max_examples=1)
    assert first["num_examples"] == 1 and first["confusion_matrix"].sum() < cm.sum()
    wrong = sj.SegformerConfig.from_variant("b0", num_labels=4)
    with pytest.raises(EvaluationError, match="4 classes"):
        evaluators.evaluate_split(wrong, variables, split)
    with pytest.raises(EvaluationError, match="crop"):
        evaluators.evaluate_split(config, variables, split, mode="slide")


def _folder_dataset(root):
    rng = np.random.default_rng(3)
    (root / "images" / "validation").mkdir(parents=True)
    (root / "masks" / "validation").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    for name, (h, w) in (("a", (40, 60)), ("b", (44, 70))):
        PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "images" / "validation" / f"{name}.png")
        mask = rng.integers(0, NUM_LABELS, (h, w), dtype=np.uint8)
        mask[:3] = 255
        PIL.Image.fromarray(mask, "L").save(root / "masks" / "validation" / f"{name}.png")


def test_evaluate_command_line(tiny, tmp_path, capsys):
    from segformer_jax.data import load_split
    _, _, hub_dir, model_dir = tiny
    _folder_dataset(tmp_path / "folder")
    out = tmp_path / "results" / "eval.json"
    common = ["--dataset", "folder", "--manual-dir", str(tmp_path / "folder"),
              "--data-dir", str(tmp_path / "tfds"), "--img-scale", "64,32", "--size-divisor", "32"]
    rc = ev.main(["--checkpoint", str(model_dir), *common, "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "mIoU" in captured.out and "stripes" in captured.out
    record = json.loads(out.read_text())
    assert record["num_examples"] == 2 and record["dataset"] == "folder"
    assert record["img_scale"] == [64, 32] and record["mode"] == "whole"
    assert set(record["per_class"]) == set(CLASS_NAMES)
    cm = np.array(record["confusion_matrix"])
    assert cm.shape == (NUM_LABELS, NUM_LABELS) and cm.sum() == 40 * 60 + 44 * 70 - 3 * (60 + 70)

    config, variables = ck.load_for_inference(hub_dir)
    split = load_split("folder", "validation", data_dir=tmp_path / "tfds",
                       manual_dir=tmp_path / "folder")
    summary = evaluators.evaluate_split(config, variables, split, img_scale=(64, 32), size_divisor=32)
    np.testing.assert_array_equal(summary["confusion_matrix"], cm)
    assert record["mIoU"] == pytest.approx(summary["mIoU"], rel=1e-12)


def test_evaluate_errors(tiny, tmp_path, capsys):
    _, _, hub_dir, _ = tiny
    assert ev.main(["--checkpoint", str(tmp_path / "nope"), "--dataset", "synthetic"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nope" in err[0]
    for argv in (["--dataset", "imagenet"], ["--dataset", "folder"],
                 ["--dataset", "synthetic", "--mode", "slide"],
                 ["--dataset", "ade20k", "--mode", "whole", "--crop", "512"],
                 ["--dataset", "synthetic", "--scales", "0.5,x"],
                 ["--dataset", "synthetic", "--data-option", "novalue"],
                 ["--dataset", "folder", "--manual-dir", str(tmp_path / "absent")]):
        with pytest.raises(SystemExit) as exit_info:
            ev.main(["--checkpoint", str(hub_dir), *argv])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (argv, err)


def test_evaluate_refuses_classification_options_for_a_segmentation_model(tiny, tmp_path, capsys):
    _, _, hub_dir, _ = tiny
    argv = ["--checkpoint", str(hub_dir), "--dataset", "synthetic", "--data-dir", str(tmp_path / "d")]
    assert ev.main([*argv, "--crop-pct", "0.9"]) == 1
    err = capsys.readouterr().err
    assert "--crop-pct is a classification test option" in err and "semantic segmentation model" in err
    assert ev.main([*argv[:3], "synthetic_classification"]) == 1
    assert "a model of the semantic_segmentation task, and --dataset synthetic_classification" \
        in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before any dataset is built


def test_a_stride_larger_than_the_crop_is_refused_before_any_work(tiny, images, tmp_path, capsys):
    """``--crop 32 --stride 60`` left pixels in no sliding window: predict wrote them as class
    0 and evaluate scored them so (exit status 0). Both commands now refuse it while parsing
    their arguments: one error line naming --stride and --crop with their values, exit 2,
    nothing read or written."""
    _, _, hub_dir, _ = tiny
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "segformer_jax.predict", str(images["wide"]),
                             "--checkpoint", str(hub_dir), "--out", str(out), "--size", "32",
                             "--crop", "32", "--stride", "60"],
                            capture_output=True, text=True, env=env, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: --stride 60 is larger than --crop 32: ")
    assert not out.exists()
    cases = [  # the command, its arguments, the message
        (pr.main, [str(images["rgb"]), "--checkpoint", str(hub_dir), "--out", str(out),
                   "--mode", "tiled", "--crop", "32", "--stride", "60"],
         "--stride 60 is larger than --crop 32: "),
        (pr.main, [str(images["rgb"]), "--checkpoint", str(hub_dir), "--out", str(out),
                   "--size", "32", "--stride", "40"],
         "--stride 40 is larger than --crop 32 (the crop defaults to --size): "),
        (ev.main, ["--checkpoint", str(hub_dir), "--dataset", "synthetic", "--data-dir",
                   str(tmp_path / "tfds"), "--crop", "32", "--stride", "60"],
         "--stride 60 is larger than --crop 32: "),
        (ev.main, ["--checkpoint", str(hub_dir), "--dataset", "cityscapes", "--data-dir",
                   str(tmp_path / "tfds"), "--stride", "2000"],
         "--stride 2000 is larger than --crop 1024 (the cityscapes preset's): "),
    ]
    for main, argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: " + message), err
    assert not out.exists() and not (tmp_path / "tfds").exists()
    with pytest.raises(InputError, match="stride 60 is larger than the crop 32"):
        sg.Segmenter(*tiny[:2], size=64, crop=32, stride=60)
    with pytest.raises(EvaluationError, match="--stride 60 is larger than --crop 32"):
        evaluators.eval_settings("synthetic", crop=32, stride=60)


def test_data_options_are_typed_and_checked_before_any_work(tiny, tmp_path, capsys):
    """``--data-option num_train=abc`` compared a str with an int inside the builder; each
    option is now typed as the builder's option (int, float, bool, str, a pair) and checked
    before anything is built: one error line naming the option and the value, exit 2."""
    _, _, hub_dir, _ = tiny
    common = ["--checkpoint", str(hub_dir), "--data-dir", str(tmp_path / "tfds")]
    cases = [
        (["--dataset", "synthetic", "--data-option", "num_train=abc"],
         "--data-option num_train=abc: expected an integer"),
        (["--dataset", "synthetic", "--data-option", "num_validation=2.5"],
         "--data-option num_validation=2.5: expected an integer"),
        (["--dataset", "synthetic", "--data-option", "size_range=48"],
         "--data-option size_range=48: expected 2 values"),
        (["--dataset", "synthetic", "--data-option", "size_range=(48,x)"],
         "--data-option size_range=(48,x): expected an integer in each place"),
        (["--dataset", "synthetic", "--data-option", "colour=red"],
         "--data-option colour=red: dataset 'synthetic' has no option 'colour'; its options are"),
        (["--dataset", "synthetic", "--data-option", "num_train=0"], "--data-option num_train=0: "),
        (["--dataset", "folder", "--manual-dir", str(tmp_path), "--data-option", "num_train=3"],
         "--data-option num_train=3: dataset 'folder' has no option 'num_train'; it takes no options"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            ev.main([*common, *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1, (argv, err)
        assert err[0].startswith("error: " + message), (argv, err)
    assert not (tmp_path / "tfds").exists()
    # Typed as the builder's options: the same numbers as Python literals gave before.
    args = ev.parse_args([*common, "--dataset", "synthetic", "--data-option", "num_train=4",
                          "--data-option", "size_range=(48,64)", "--data-option", "seed=3"])
    assert args.data_option == [("num_train", 4), ("size_range", (48, 64)), ("seed", 3)]
    assert ev.parse_args([*common, "--dataset", "synthetic", "--data-option",
                          "size_range=48,64"]).data_option == [("size_range", (48, 64))]


def test_typed_values():
    from segformer_jax.cli import typed_value
    assert typed_value(" 8 ", 1000) == 8 and typed_value("8", 0.5) == 8.0
    assert typed_value("yes", False) is True and typed_value("0", True) is False
    assert typed_value("abc", "x") == "abc" and typed_value("[1, 2]", (0, 0)) == (1, 2)
    assert typed_value("(1, 2)", None) == (1, 2) and typed_value("abc", None) == "abc"
    for text, default in (("abc", 1), ("1.5", 1), ("maybe", True), ("x", 0.5), ("1,2,3", (0, 0))):
        with pytest.raises(ValueError):
            typed_value(text, default)
