"""``predict --format cityscapes`` and ``evaluate --cityscapes-results``: the test server's
files, scored by cityscapesScripts' own evaluation (``evalPixelLevelSemanticLabeling``),
equal to what ``evaluate`` reports for the same model on the same images; the test split
(labels all "unlabeled") evaluated into server files."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

import segformer_jax as sj
from segformer_jax import evaluate, predict
from segformer_jax.data import cityscapes_labels


def test_train_ids_and_label_ids_are_inverse_on_the_19_classes():
    from cityscapesscripts.helpers.labels import trainId2label
    train_ids = np.arange(19, dtype=np.uint8)
    label_ids = cityscapes_labels.train_ids_to_label_ids(train_ids)
    assert label_ids.tolist() == [trainId2label[t].id for t in range(19)]   # the official table
    np.testing.assert_array_equal(cityscapes_labels.label_ids_to_train_ids(label_ids), train_ids)
    assert cityscapes_labels.train_ids_to_label_ids(np.array([255, 19, -1])).tolist() == [0, 0, 0]


LABEL_IDS = [0, 1, 7, 8, 11, 21, 23, 24, 26, 33]   # unlabeled, ego vehicle and eight classes
FILES = {"train": [("aachen", "000000_000019")],
         "val": [("frankfurt", "000000_000294"), ("munster", "000001_000019")],
         "test": [("berlin", "000000_000019"), ("bielefeld", "000000_000321")]}


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    """A tiny Cityscapes in the release's extracted layout (``leftImg8bit/``, ``gtFine/``),
    which both the builder and the evaluation script read, and a 19-class b0."""
    root = tmp_path_factory.mktemp("cityscapes")
    rng = np.random.default_rng(0)
    for split, files in FILES.items():
        for city_name, frame in files:
            base = f"{city_name}_{frame}"
            for folder, suffix, array in (
                    ("leftImg8bit", "leftImg8bit", rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)),
                    ("gtFine", "gtFine_labelIds", np.zeros((32, 64), np.uint8) if split == "test"
                     else np.asarray(LABEL_IDS, np.uint8)[   # the release's test labels: all 0
                        rng.integers(0, len(LABEL_IDS), (4, 8))].repeat(8, 0).repeat(8, 1))):
                path = root / folder / split / city_name / f"{base}_{suffix}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                PIL.Image.fromarray(array).save(path)
    config = sj.SegformerConfig.from_variant("b0", num_labels=19)
    sj.save_pretrained(root / "model", config, sj.init_variables(config, seed=3))
    return root


def test_server_files_score_as_evaluate_does(city, monkeypatch):
    images = sorted((city / "leftImg8bit/val").rglob("*_leftImg8bit.png"))
    results = city / "results"
    # The test size of the 32 × 64 images at --size 32 is the image itself, as evaluate's
    # --img-scale 128,32 makes it: the same pixels go through the same model.
    assert predict.main([*map(str, images), "--checkpoint", str(city / "model"), "--out", str(results),
                         "--size", "32", "--mode", "whole", "--format", "cityscapes"]) == 0
    written = sorted(p.name for p in results.iterdir())
    assert written == [p.name for p in images]                     # one file per image, same name
    ids = np.asarray(PIL.Image.open(results / written[0]))
    assert ids.dtype == np.uint8 and set(np.unique(ids)) <= set(cityscapes_labels.TRAIN_ID_TO_LABEL_ID.values())

    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
    monkeypatch.setenv("CITYSCAPES_RESULTS", str(results))   # where getPrediction looks
    args = official.args
    args.predictionPath, args.predictionWalk = None, None
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    ground_truth = sorted(str(p) for p in (city / "gtFine/val").rglob("*_gtFine_labelIds.png"))
    scores = official.evaluateImgLists([official.getPrediction(args, g) for g in ground_truth],
                                       ground_truth, args)

    assert evaluate.main(["--checkpoint", str(city / "model"), "--dataset", "cityscapes",
                          "--manual-dir", str(city), "--data-dir", str(city / "tfds"), "--split",
                          "validation", "--mode", "whole", "--img-scale", "128,32",
                          "--json", str(city / "eval.json"),
                          "--cityscapes-results", str(city / "eval_results")]) == 0
    ours = json.loads((city / "eval.json").read_text())
    for name in written:   # evaluate's server files: predict's, pixel for pixel
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(city / "eval_results" / name)),
                                      np.asarray(PIL.Image.open(results / name)))
    per_class = {name: v["IoU"] for name, v in ours["per_class"].items()}
    assert len(per_class) == 19
    for name, mine in per_class.items():   # theirs also lists the ignored labels, as NaN
        iou = scores["classScores"][name]
        theirs_nan, ours_nan = np.isnan(iou), mine is None or np.isnan(mine)
        assert theirs_nan == ours_nan and (theirs_nan or abs(iou - mine) < 1e-12), name
    assert sum(not np.isnan(scores["classScores"][n]) for n in per_class) >= 8   # classes scored
    assert abs(scores["averageScoreClasses"] - ours["mIoU"]) < 1e-12


def test_the_server_format_refuses_what_the_server_cannot_match(city, tmp_path, capsys):
    plain = tmp_path / "street.png"
    PIL.Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(plain)
    with pytest.raises(SystemExit):
        predict.main([str(plain), "--checkpoint", str(city / "model"), "--out", str(tmp_path / "o"),
                      "--format", "cityscapes"])
    assert "street.png is not named as a Cityscapes image" in capsys.readouterr().err
    named = tmp_path / "aachen_000000_000019_leftImg8bit.png"
    PIL.Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(named)
    config = sj.SegformerConfig.from_variant("b0", num_labels=6)
    sj.save_pretrained(tmp_path / "six", config, sj.init_variables(config))
    assert predict.main([str(named), "--checkpoint", str(tmp_path / "six"), "--out", str(tmp_path / "o"),
                         "--format", "cityscapes"]) == 1
    assert "needs a model of Cityscapes' 19 classes" in capsys.readouterr().err
    assert not (tmp_path / "o" / named.name).exists()


def test_the_test_split_is_evaluated_into_server_files(city, tmp_path, capsys):
    common = ["--checkpoint", str(city / "model"), "--dataset", "cityscapes", "--manual-dir",
              str(city), "--data-dir", str(city / "tfds"), "--split", "test", "--mode", "whole",
              "--img-scale", "128,32"]
    with pytest.raises(SystemExit):   # nothing to score, nothing written: refused up front
        evaluate.main(common)
    assert "add --cityscapes-results DIR" in capsys.readouterr().err
    assert evaluate.main([*common, "--cityscapes-results", str(tmp_path / "server")]) == 0
    out = capsys.readouterr().out
    assert "cityscapes test: 2 images" in out and "no labelled pixels in cityscapes test: no scores" in out
    images = sorted((city / "leftImg8bit/test").rglob("*_leftImg8bit.png"))
    assert sorted(p.name for p in (tmp_path / "server").iterdir()) == sorted(p.name for p in images)
    assert predict.main([*map(str, images), "--checkpoint", str(city / "model"), "--out",
                         str(tmp_path / "predicted"), "--size", "32", "--mode", "whole",
                         "--format", "cityscapes"]) == 0
    for image in images:   # the same label ids as predict writes for the same images
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / "server" / image.name)),
                                      np.asarray(PIL.Image.open(tmp_path / "predicted" / image.name)))
