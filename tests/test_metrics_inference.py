"""mIoU as mmseg computes it, and mmseg's whole / sliding-window / multi-scale+flip inference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_images

import segformer_jax as sj
from segformer_jax import inference, metrics
from segformer_jax.inference import Window
from segformer_jax.models.ops import resize_bilinear

K = 6


# ----------------------------------------------------------------------------- metrics


def mmseg_reference(preds, labels, num_classes, ignore_index=255):
    """mmseg's intersect_and_union per image (np.bincount for histc), summed over the split."""
    total = {key: np.zeros(num_classes, np.int64) for key in ("inter", "union", "pred", "label")}
    for pred, label in zip(preds, labels):
        mask = label != ignore_index
        pred, label = pred[mask], label[mask]
        inter = np.bincount(pred[pred == label], minlength=num_classes)
        area_pred = np.bincount(pred, minlength=num_classes)
        area_label = np.bincount(label, minlength=num_classes)
        for key, value in (("inter", inter), ("pred", area_pred), ("label", area_label),
                           ("union", area_pred + area_label - inter)):
            total[key] += value
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = total["inter"] / total["union"]
        acc = total["inter"] / total["label"]
        return dict(total, IoU=iou, Acc=acc, mIoU=np.nanmean(iou), mAcc=np.nanmean(acc),
                    aAcc=total["inter"].sum() / total["label"].sum())


@pytest.fixture(scope="module")
def split():
    """Predictions and labels of 7 images: class 4 appears nowhere, class 5 is only predicted,
    and about a fifth of the pixels are ignored (255)."""
    rng = np.random.default_rng(0)
    shape = (7, 23, 31)
    labels = rng.choice(np.array([0, 1, 2, 3], np.uint8), size=shape, p=[0.4, 0.3, 0.2, 0.1])
    labels[rng.random(shape) < 0.2] = 255
    # Predictions agree with the label half of the time, otherwise a random class but 4.
    preds = rng.choice(np.array([0, 1, 2, 3, 5], np.int32), size=shape)
    agree = (rng.random(shape) < 0.5) & (labels != 255)
    preds[agree] = labels[agree]
    return preds, labels


def test_miou_matches_mmseg_reference(split):
    preds, labels = split
    ref = mmseg_reference(preds, labels, K)
    cm = metrics.confusion_matrix(preds, labels, K)
    assert cm.shape == (K, K) and jnp.issubdtype(cm.dtype, jnp.integer)
    assert int(cm.sum()) == int((labels != 255).sum())
    res = metrics.summarize(metrics.update(metrics.zeros(K), cm))
    np.testing.assert_array_equal(res["area_intersect"], ref["inter"])
    np.testing.assert_array_equal(res["area_union"], ref["union"])
    np.testing.assert_array_equal(res["area_pred"], ref["pred"])
    np.testing.assert_array_equal(res["area_label"], ref["label"])
    np.testing.assert_array_equal(res["IoU"], ref["IoU"])  # NaN at the same places
    np.testing.assert_array_equal(res["Acc"], ref["Acc"])
    for key in ("mIoU", "mAcc", "aAcc"):
        assert res[key] == ref[key], key
    # Class 4 (nowhere): NaN IoU, out of the mean. Class 5 (only predicted): IoU 0, Acc NaN.
    assert np.isnan(res["IoU"][4]) and np.isnan(res["Acc"][4])
    assert res["IoU"][5] == 0 and np.isnan(res["Acc"][5])
    assert res["mIoU"] == pytest.approx(np.mean(res["IoU"][[0, 1, 2, 3, 5]]))
    assert res["mAcc"] == pytest.approx(np.mean(res["Acc"][:4]))


def test_accumulating_batches_equals_the_whole_split(split):
    preds, labels = split
    once = metrics.update(metrics.zeros(K), metrics.confusion_matrix(preds, labels, K))
    total = metrics.zeros(K)
    for start, stop in ((0, 1), (1, 4), (4, 6), (6, 7)):
        before = total.copy()
        total = metrics.update(total, metrics.confusion_matrix(preds[start:stop],
                                                               labels[start:stop], K))
        np.testing.assert_array_equal(before, total - metrics.confusion_matrix(
            preds[start:stop], labels[start:stop], K))  # update is pure
    assert total.dtype == np.int64
    np.testing.assert_array_equal(total, once)
    a, b = metrics.summarize(total), metrics.summarize(once)
    assert a["mIoU"] == b["mIoU"] and a["aAcc"] == b["aAcc"] and a["mAcc"] == b["mAcc"]


def test_confusion_matrix_rows_are_ground_truth_and_strays_do_not_spill():
    pred = np.array([[0, 1, 1, 2, 3, -1, 2, 0]])
    label = np.array([[0, 0, 1, 2, 0, 1, 255, 7]])
    cm = np.asarray(metrics.confusion_matrix(pred, label, 3))
    # Counted: (0,0), (0,1), (1,1), (2,2). Pred 3 / -1 are out of range, label 255 ignored,
    # label 7 out of range: none may land in a neighbouring bin.
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [0, 0, 1]])


def test_reduce_zero_label_follows_mmseg():
    label = np.array([[0, 1, 2, 255, 3]], np.uint8)
    pred = np.array([[0, 0, 1, 2, 2]])
    cm = np.asarray(metrics.confusion_matrix(pred, label, 3, reduce_zero_label=True))
    # Labels become 255, 0, 1, 255, 2: the first and fourth pixels are ignored.
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])


def test_summarize_and_table():
    cm = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 0]], np.int64)
    res = metrics.summarize(cm, ["road", "sky", "car"])
    np.testing.assert_array_equal(res["IoU"], [5 / 8, 0.0, 0.0])
    assert np.isnan(res["Acc"][1]) and res["Acc"][2] == 0 and res["aAcc"] == 5 / 8
    table = metrics.format_table(res)
    assert "road" in table and "62.50" in table and "nan" in table and "mIoU 20.83" in table
    empty = metrics.summarize(metrics.zeros(2))
    assert np.isnan(empty["mIoU"]) and np.isnan(empty["aAcc"])
    with pytest.raises(TypeError):
        metrics.summarize(cm.astype(np.float32))


# ----------------------------------------------------------------------------- inference

TINY = sj.SegformerConfig.from_variant("b0", num_labels=5, hidden_sizes=(8, 16, 24, 32),
                                       num_attention_heads=(1, 2, 3, 4), decoder_hidden_size=16)


@pytest.fixture(scope="module")
def tiny():
    model = sj.SegformerForSemanticSegmentation(TINY)
    return jax.jit(model.apply), sj.init_variables(TINY, seed=0)


def test_slide_windows_follow_mmseg_formula():
    # Cityscapes: h_grids = max(1024-1024+767, 0)//768+1 = 1, w_grids = 1791//768+1 = 3;
    # the third window starts at 1536, ends past 2048 and is shifted back to 1024.
    assert inference.slide_windows(1024, 2048, 1024, 768) == [
        Window(0, 0, 1024, 1024), Window(0, 768, 1024, 1792), Window(0, 1024, 1024, 2048)]
    # 100×150, crop 64, stride 48: h_grids = 83//48+1 = 2 (y1 = 0, 48→36),
    # w_grids = 133//48+1 = 3 (x1 = 0, 48, 96→86).
    ys, xs = (0, 36), (0, 48, 86)
    assert inference.slide_windows(100, 150, (64, 64), (48, 48)) == [
        Window(y, x, y + 64, x + 64) for y in ys for x in xs]
    # Smaller than the crop along an axis: the window is the image along it.
    assert inference.slide_windows(40, 150, 64, 48) == [
        Window(0, x, 40, x + 64) for x in xs]
    assert inference.slide_windows(40, 50, (64, 96), (32, 48)) == [Window(0, 0, 40, 50)]


@pytest.mark.parametrize("size,crop,stride", [((100, 150), 64, 48), ((97, 211), (40, 64), (31, 50)),
                                              ((1024, 2048), 1024, 768), ((30, 20), 64, 48),
                                              ((129, 65), 64, 64)])
def test_every_pixel_is_covered(size, crop, stride):
    count = inference.window_count(*size, crop, stride)
    windows = inference.slide_windows(*size, crop, stride)
    assert count.shape == size and count.min() >= 1
    area = (windows[0].y2 - windows[0].y1) * (windows[0].x2 - windows[0].x1)
    assert count.sum() == len(windows) * area
    assert all(0 <= w.y1 < w.y2 <= size[0] and 0 <= w.x1 < w.x2 <= size[1] for w in windows)


def fake_apply(variables, images):
    """A stand-in model for the algorithm tests: logits at ceil(H/4) × ceil(W/4) that depend on
    content and position (stride-4 sampling, a linear map, tanh), compiled in milliseconds
    where the tiny SegFormer takes seconds per input shape."""
    return jnp.tanh(images[:, ::4, ::4, :] @ variables["w"] + variables["b"])


FAKE = {"w": np.random.default_rng(7).standard_normal((3, 5), dtype=np.float32),
        "b": np.linspace(-1, 1, 5, dtype=np.float32)}
FAKE_INFERENCE = inference.Inference(fake_apply)  # one object: one compilation per shape


def test_inference_objects_keep_their_own_model():
    """Programs belong to the object built over a model: no module-level cache keyed on the
    apply function, so two models never see each other's compilations."""
    def other_apply(variables, images):
        return -fake_apply(variables, images)

    images = random_images(1, 16, 20, seed=5)
    ours = FAKE_INFERENCE.whole(FAKE, images)
    theirs = inference.Inference(other_apply).whole(FAKE, images)
    np.testing.assert_allclose(theirs, -ours, rtol=1e-6, atol=1e-6)
    assert not [name for name, value in vars(inference).items()
                if callable(value) and hasattr(value, "lower")]  # no module-level jax.jit


def test_whole_is_resized_logits():
    images = random_images(2, 37, 50, seed=1)
    out = FAKE_INFERENCE.whole(FAKE, images)
    assert out.shape == (2, 37, 50, 5) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, resize_bilinear(fake_apply(FAKE, images), (37, 50)),
                               rtol=1e-6, atol=1e-6)


def test_slide_on_one_window_equals_whole(tiny):
    apply_fn, variables = tiny
    images = random_images(2, 32, 48, seed=2)
    model = inference.Inference(apply_fn)
    whole = model.whole(variables, images)
    assert whole.shape == (2, 32, 48, 5)
    # h_grids = (32-32+15)//16+1 = 1, w_grids = (48-48+15)//16+1 = 1.
    slide = model.slide(variables, images, crop=(32, 48), stride=(16, 16), num_classes=5)
    np.testing.assert_allclose(slide, whole, rtol=1e-5, atol=1e-5)


def test_slide_on_an_image_smaller_than_the_crop_equals_whole():
    images = random_images(2, 40, 56, seed=3)
    np.testing.assert_allclose(FAKE_INFERENCE.slide(FAKE, images, 64, 48),
                               FAKE_INFERENCE.whole(FAKE, images),
                               rtol=1e-6, atol=1e-6)


def test_slide_matches_a_loop_over_windows():
    images = random_images(2, 100, 150, seed=4)
    canvas = np.zeros((2, 100, 150, 5), np.float32)
    for win in inference.slide_windows(100, 150, 64, 48):
        crop = images[:, win.y1:win.y2, win.x1:win.x2]
        canvas[:, win.y1:win.y2, win.x1:win.x2] += np.asarray(
            resize_bilinear(fake_apply(FAKE, crop), (64, 64)))
    ref = canvas / inference.window_count(100, 150, 64, 48)[None, :, :, None]
    out = FAKE_INFERENCE.slide(FAKE, images, crop=(64, 64), stride=(48, 48))
    assert out.shape == (2, 100, 150, 5)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    # Several crops per forward pass (6 windows: the last pass is padded) changes nothing.
    for per_step in (4, 6, 10):
        batched = FAKE_INFERENCE.slide(FAKE, images, 64, 48,
                                            batch_windows=per_step)
        np.testing.assert_allclose(batched, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="classes"):
        FAKE_INFERENCE.slide(FAKE, images, 64, 48, num_classes=7)


def test_multiscale_single_scale_is_softmax_of_whole(tiny):
    apply_fn, variables = tiny
    images = random_images(2, 32, 48, seed=2)
    model = inference.Inference(apply_fn)
    probs = model.multiscale_flip(variables, images, scales=(1.0,))
    ref = jax.nn.softmax(model.whole(variables, images), axis=-1)
    np.testing.assert_allclose(probs, ref, rtol=1e-6, atol=1e-6)


def test_multiscale_flip_averages_softmax():
    images = random_images(2, 32, 48, seed=5)
    probs = FAKE_INFERENCE.multiscale_flip(FAKE, images,
                                                scales=(0.5, 1.0), flip=True)
    softmax = lambda x: jax.nn.softmax(x, axis=-1)  # noqa: E731
    whole = lambda x: FAKE_INFERENCE.whole(FAKE, x)  # noqa: E731
    half = resize_bilinear(images, (16, 24))  # mmcv: factor min(24/48, 16/32) = 0.5
    flipped = images[:, :, ::-1]
    parts = [softmax(resize_bilinear(whole(half), (32, 48))),
             softmax(resize_bilinear(whole(half[:, :, ::-1]), (32, 48)))[:, :, ::-1],
             softmax(whole(images)),
             softmax(whole(flipped))[:, :, ::-1]]
    ref = (((parts[0] + parts[1]) + parts[2]) + parts[3]) / 4  # mmseg: scales outer, flip inner
    assert probs.shape == (2, 32, 48, 5)
    np.testing.assert_allclose(probs, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.sum(probs, axis=-1), 1.0, rtol=1e-5)
    # Flipping matters for this model, so the check above is not vacuous.
    assert not np.allclose(parts[2], parts[3], atol=1e-3)


def test_multiscale_slide_mode_and_aligned_sizes():
    images = random_images(1, 30, 45, seed=6)
    # AlignedResize to multiples of 16: 30×45 → 32×48, then slide with crop 32, stride 16.
    probs = FAKE_INFERENCE.multiscale_flip(FAKE, images, scales=(1.0,),
                                                size_divisor=16, mode="slide", crop=32, stride=16)
    aligned = resize_bilinear(images, (32, 48))
    logits = FAKE_INFERENCE.slide(FAKE, aligned, 32, 16)
    ref = jax.nn.softmax(resize_bilinear(logits, (30, 45)), axis=-1)
    np.testing.assert_allclose(probs, ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="crop"):
        FAKE_INFERENCE.multiscale_flip(FAKE, images, mode="slide")


def test_a_stride_larger_than_the_crop_is_refused():
    """Crop 32, stride 60 on a 90-pixel side: windows at 0-32 and 58-90 leave 32-58 to no
    window; the canvas was divided by a count of 0 there (NaN logits, argmax class 0, and a
    silently wrong mIoU). Every entry point refuses it, naming both values."""
    images = random_images(1, 90, 130, seed=8)
    message = r"stride 60 is larger than the crop 32 \(--stride > --crop\)"
    with pytest.raises(sj.errors.InputError, match=message):
        inference.slide_windows(90, 130, 32, 60)
    with pytest.raises(sj.errors.InputError, match=message):
        inference.window_count(90, 130, 32, 60)
    with pytest.raises(sj.errors.InputError, match=message):
        FAKE_INFERENCE.slide(FAKE, images, crop=32, stride=60)
    with pytest.raises(sj.errors.InputError, match=message):
        FAKE_INFERENCE.multiscale_flip(FAKE, images, mode="slide", crop=32, stride=60)
    with pytest.raises(sj.errors.InputError, match=r"stride 20x60 is larger than the crop 32"):
        FAKE_INFERENCE.slide(FAKE, images, crop=32, stride=(20, 60))
    # Equal to the crop: windows side by side, every pixel once (mmseg allows it).
    assert inference.window_count(90, 130, 32, 32).min() == 1


def test_an_uncovered_pixel_is_an_error_not_a_division_by_zero(monkeypatch):
    """Whatever produces the windows, ``slide`` checks every pixel's count before dividing:
    windows that leave a gap (here from a stand-in for slide_windows) raise, naming the pixel."""
    gappy = [Window(0, 0, 32, 32), Window(0, 40, 32, 72)]   # columns 32-39 in no window
    monkeypatch.setattr(inference, "slide_windows", lambda *args: gappy)
    with pytest.raises(sj.errors.InputError, match=r"leave pixel \(0, 32\) of a 32x72 image uncovered"):
        inference.Inference(fake_apply).slide(FAKE, random_images(1, 32, 72, seed=9), 32, 32)
    with pytest.raises(sj.errors.InputError, match="uncovered"):
        inference.check_covered(np.array([[1, 0], [1, 1]]), 32, 32)


def test_aligned_test_size():
    # 512×683: factor min(2048/683, 512/512) = 1 → 512×683;
    # then 683 → ceil(683/32)·32 = 22·32 = 704 (21·32 = 672 < 683).
    assert inference.aligned_test_size(512, 683) == (512, 704)
    # 375×500 (a typical ADE20K image): factor 512/375 → int(500·512/375 + 0.5) = int(683.17)
    # = 683 → 512×704.
    assert inference.rescale_size(375, 500, (2048, 512)) == (512, 683)
    assert inference.aligned_test_size(375, 500) == (512, 704)
    # Portrait 1000×300: factor min(2048/1000, 512/300) = 1.7067 → 1707×512 → 1728×512.
    assert inference.aligned_test_size(1000, 300) == (1728, 512)
    # Panorama 100×1000: the long side binds, factor 2.048 → int(205.3) = 205 → 224×2048.
    assert inference.aligned_test_size(100, 1000) == (224, 2048)
    # Multi-scale sizes: ratio 0.5 of (2048, 512) is (1024, 256) → 256×341 → 256×352.
    assert inference.augmentation_sizes(375, 500, (0.5, 1.0), (2048, 512), 32) == [
        ((256, 341), (256, 352)), ((512, 683), (512, 704))]
