"""Image classification as the trainer's second task: the datasets, the evaluator, a tiny
run end to end, exact resume after SIGKILL, and the refusals."""

import io
import json
import os
import subprocess
import sys
import tarfile

import jax
import numpy as np
import PIL.Image
import pytest
from test_train import _kill_once_saved

import segformer_jax as sj
from segformer_jax import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.overrides.hidden_sizes=(8, 16, 24, 32)",
        "--config.model.overrides.num_attention_heads=(1, 2, 3, 4)",
        "--config.model.overrides.depths=(1, 1, 1, 1)"]


def jpeg(rng, size=(40, 56)) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- datasets


def test_synthetic_classification_is_deterministic(tmp_path):
    from segformer_jax.data.synthetic import generate_classification_example
    split = data.load_split("synthetic_classification", "validation", data_dir=tmp_path,
                            num_train=3, num_validation=4)
    assert split.task == "image_classification" and split.class_names == (
        "disc", "box", "triangle", "ring", "stripes")
    for i in range(4):
        image, label = generate_classification_example(i, "validation")
        record = split.source[i]
        np.testing.assert_array_equal(record["image"], image)  # PNG: lossless
        assert int(record["label"]) == label


def test_image_folder_classes_and_bad_input(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "pets"
    for split, classes in (("train", ("dog", "cat", "emu")), ("val", ("cat", "dog"))):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for k in range(2):
                (root / split / c / f"{k}.jpg").write_bytes(jpeg(rng))
    train = data.load_split("image_folder", "train", data_dir=tmp_path / "tfds", manual_dir=root)
    assert train.class_names == ("cat", "dog", "emu")  # sorted over all splits: torchvision's ids
    assert [int(train.source[i]["label"]) for i in range(len(train))] == [0, 0, 1, 1, 2, 2]
    val = data.load_split("image_folder", "val", data_dir=tmp_path / "tfds", manual_dir=root)
    assert [int(val.source[i]["label"]) for i in range(len(val))] == [0, 0, 1, 1]

    (root / "train" / "fox").mkdir()
    with pytest.raises(data.DatasetError, match="fox: empty class folder"):
        data.load_split("image_folder", "train", data_dir=tmp_path / "tfds", manual_dir=root)
    (root / "train" / "fox" / "notes.txt").write_text("hi")
    with pytest.raises(data.DatasetError, match="notes.txt: not an image file"):
        data.load_split("image_folder", "train", data_dir=tmp_path / "tfds", manual_dir=root)
    (root / "train" / "fox" / "notes.txt").unlink()
    (root / "train" / "fox" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(data.DatasetError, match="broken.jpg: cannot decode the image"):
        data.load_split("image_folder", "train", data_dir=tmp_path / "tfds", manual_dir=root)


def test_tfds_imagenet2012_from_manual_tars(tmp_path):
    """TFDS's own builder on tiny tars in ILSVRC2012's layout: per-class tars inside the
    train tar, validation JPEGs named as TFDS's bundled label file lists them (its first
    lines: n01751748, n09193705)."""
    rng = np.random.default_rng(1)
    manual = tmp_path / "manual"
    manual.mkdir()

    def add(archive, name, payload):
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))

    with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in ("n01440764", "n01751748"):
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
                for k in range(2):
                    add(inner, f"{wnid}_{k}.JPEG", jpeg(rng))
            add(outer, f"{wnid}.tar", inner_bytes.getvalue())
    with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as val:
        for k in (1, 2):
            add(val, f"ILSVRC2012_val_{k:08d}.JPEG", jpeg(rng))
    train = data.load_split("imagenet2012", "train", data_dir=tmp_path / "tfds", manual_dir=manual)
    names = train.class_names
    assert len(names) == 1000 and names[0] == "n01440764"
    labels = sorted(int(train.source[i]["label"]) for i in range(len(train)))
    assert labels == [0, 0, names.index("n01751748"), names.index("n01751748")]
    val = data.load_split("imagenet2012", "validation", data_dir=tmp_path / "tfds", manual_dir=manual)
    by_name = {val.source[i]["file_name"]: int(val.source[i]["label"]) for i in range(len(val))}
    by_name = {(k.decode() if isinstance(k, bytes) else k): v for k, v in by_name.items()}
    assert by_name == {"ILSVRC2012_val_00000001.JPEG": names.index("n01751748"),
                       "ILSVRC2012_val_00000002.JPEG": names.index("n09193705")}


# ----------------------------------------------------------------------------- evaluator


def test_evaluator_counts_are_exact_with_a_partial_batch(tmp_path):
    """Top-1 / top-5 / per-class over this process's devices, with a partial last batch, equal the
    image-by-image computation."""
    from segformer_jax.data.augment import ClassifyEvalTransform
    from segformer_jax.evaluators import ClassificationEvaluator

    split = data.load_split("synthetic_classification", "validation", data_dir=tmp_path,
                            num_train=1, num_validation=21)
    config = sj.SegformerConfig.from_variant("b0", num_labels=5, hidden_sizes=(8, 16, 24, 32),
                                             num_attention_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1))
    model = sj.SegformerForImageClassification(config)
    variables = sj.init_variables(config, task="image_classification", seed=3)
    evaluator = ClassificationEvaluator(model, split, (32, 32), batch_size=4)
    assert evaluator.rows % len(jax.local_devices()) == 0
    result = evaluator(variables)
    transform = ClassifyEvalTransform((32, 32))
    hits1 = hits5 = 0
    for i in range(len(split)):
        example = transform(split.source[i])
        logits = np.asarray(jax.jit(model.apply)(variables, example["image"][None]))[0]
        order = np.argsort(-logits, kind="stable")
        hits1 += int(order[0] == example["label"])
        hits5 += int(example["label"] in order[:5])
    assert result["num_examples"] == 21
    assert result["top1"] == hits1 / 21 and result["top5"] == hits5 / 21 == 1.0
    assert "top-1" in evaluator.table(result) and evaluator.best_metric == "top1"


# ----------------------------------------------------------------------------- training


def train_args(workdir, data_dir, total):
    return ["--config", os.path.join(ROOT, "configs/classification_quickstart.py"),
            "--workdir", str(workdir), f"--config.total_steps={total}", "--config.batch_size=8",
            "--config.checkpoint_every=4", "--config.eval_every=1000", "--config.log_every=1",
            "--config.data.crop_size=(32, 32)", f"--config.data.data_dir={data_dir}",
            "--config.data.options.num_train=24", "--config.data.options.num_validation=6",
            "--config.classification.mixup_alpha=0.8", "--config.classification.cutmix_alpha=1.0",
            "--config.classification.eval_batch_size=8", "--config.optimizer.warmup_steps=2",
            "--config.data.num_workers=1", *TINY]


def _run(workdir, data_dir, *overrides, total=10, wait=True, **popen):
    args = [sys.executable, "-m", "segformer_jax.train", *train_args(workdir, data_dir, total), *overrides]
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if wait:
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    return subprocess.Popen(args, env=env, text=True, **popen)


def _state(workdir, step):
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as c:
        return c.restore(workdir / "checkpoints" / str(step) / "state")


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    done = _run(root / "a", root / "tfds")
    assert done.returncode == 0, done.stderr[-3000:]
    return root, _state(root / "a", 10), done.stdout


def test_classification_run_logs_and_scores(classification_run):
    root, state, stdout = classification_run
    assert "validation top-1" in stdout and "top-5" in stdout and "stripes" in stdout
    records = [json.loads(line) for line in (root / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 11))
    assert "val/top1" in records[-1] and all(np.isfinite(r["train/loss"]) for r in records)
    assert state["batch_stats"] == {} and "classifier" in state["params"]
    resolved = json.loads((root / "a" / "config.json").read_text())
    assert resolved["task"] == "image_classification"


@pytest.mark.slow
def test_classification_resume_after_sigkill_is_exact(classification_run):
    root, reference, _ = classification_run
    proc = _run(root / "b", root / "tfds", wait=False, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _kill_once_saved(proc, root / "b" / "checkpoints" / "4")
    done = _run(root / "b", root / "tfds")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout
    leaves_a, tree_a = jax.tree.flatten(reference)
    leaves_b, tree_b = jax.tree.flatten(_state(root / "b", 10))
    assert tree_a == tree_b
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(a, b)  # same batches, same mixing draws, same dropout


def test_segmentation_workdir_refused_by_a_classification_resume(classification_run, tmp_path):
    root, _, _ = classification_run
    seg = subprocess.run(
        [sys.executable, "-m", "segformer_jax.train", "--config", os.path.join(ROOT, "configs/quickstart.py"),
         "--workdir", str(root / "a"), "--config.total_steps=12", f"--config.data.data_dir={root / 'tfds'}",
         "--config.data.options.num_train=4", "--config.data.options.num_validation=1", *TINY],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": ROOT})
    assert seg.returncode == 1
    assert "a checkpoint of the image_classification task, and this config trains semantic_segmentation" in seg.stderr
    assert "Traceback" not in seg.stderr
    assert (root / "a" / "checkpoints" / "10").is_dir()  # nothing saved is lost


@pytest.mark.parametrize("override, message", [
    ("--config.classification.label_smoothing=1.0", "classification.label_smoothing must be in [0.0, 1.0)"),
    ("--config.classification.mixup_alpha=-0.5", "classification.mixup_alpha must be >= 0"),
    ("--config.classification.mixup_prob=1.5", "classification.mixup_prob must be in [0.0, 1.0]"),
    ("--config.classification.randaugment=rand-z3", "classification.randaugment: RandAugment config"),
    ("--config.data.name=synthetic", "data.name='synthetic' is a semantic_segmentation dataset"),
])
def test_bad_classification_config_is_one_clear_error(override, message, tmp_path):
    done = _run(tmp_path / "w", tmp_path / "tfds", override)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "w").exists()


def test_a_classification_workdir_initialises_a_segmentation_run(classification_run, tmp_path):
    """The pretrained encoder is kept bit for bit, a decode head is initialised, and the
    segmentation run trains from it."""
    from segformer_jax.checkpoint import encoder_init
    from segformer_jax.models.segformer import SegformerForSemanticSegmentation

    root, state, _ = classification_run
    seg_config = sj.SegformerConfig.from_variant("b0", num_labels=6, hidden_sizes=(8, 16, 24, 32),
                                                 num_attention_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1))
    init = encoder_init(root / "a", seg_config, "semantic_segmentation", seed=0)
    for a, b in zip(jax.tree.leaves(init["params"]["encoder"]), jax.tree.leaves(state["params"]["encoder"])):
        np.testing.assert_array_equal(a, b)
    expected = jax.eval_shape(SegformerForSemanticSegmentation(seg_config).init, jax.random.key(0),
                              jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
    assert jax.tree.structure(init) == jax.tree.structure(expected)
    done = subprocess.run(
        [sys.executable, "-m", "segformer_jax.train", "--config", os.path.join(ROOT, "configs/quickstart.py"),
         "--workdir", str(tmp_path / "seg"), "--config.total_steps=2", "--config.batch_size=2",
         "--config.data.crop_size=(32, 32)", "--config.data.img_scale=(64, 32)",
         "--config.data.eval_scale=(64, 32)", f"--config.data.data_dir={root / 'tfds'}",
         "--config.data.options.num_train=4", "--config.data.options.num_validation=1",
         f"--config.model.init={root / 'a'}", "--config.model.overrides.decoder_hidden_size=16", *TINY],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "encoder kept; the decode_head (semantic_segmentation) freshly initialised" in done.stderr
    bad = sj.SegformerConfig.from_variant("b0", num_labels=6)
    with pytest.raises(Exception, match="its encoder differs from the configured one"):
        encoder_init(root / "a", bad, "semantic_segmentation")

    # The reverse refusal: a classification config resuming that segmentation workdir.
    before = sorted(p.name for p in (tmp_path / "seg" / "checkpoints").iterdir())
    done = _run(tmp_path / "seg", root / "tfds", total=12)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "a checkpoint of the semantic_segmentation task, and this config trains image_classification" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in (tmp_path / "seg" / "checkpoints").iterdir()) == before


def _command(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "PYTHONPATH": ROOT})


def test_evaluate_command_scores_a_classification_workdir(classification_run, tmp_path):
    """``evaluate`` on the workdir gives the training run's own final validation figures."""
    root, _, _ = classification_run
    data_args = ["--dataset", "synthetic_classification", "--data-dir", root / "tfds",
                 "--data-option", "num_train=24", "--data-option", "num_validation=6"]
    done = _command("segformer_jax.evaluate", "--checkpoint", root / "a", *data_args,
                    "--crop-size", 32, "--batch-size", 4, "--json", tmp_path / "r.json")
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "r.json").read_text())
    last = json.loads((root / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["top1"] == pytest.approx(last["val/top1"], abs=1e-12)
    assert record["top5"] == pytest.approx(last["val/top5"], abs=1e-12)
    assert record["num_examples"] == 6 and set(record["per_class_top1"]) >= {"stripes"}
    assert "top-1" in done.stdout and "stripes" in done.stdout

    for extra, message in [(["--flip"], "--flip is a segmentation test option"),
                           (["--crop-pct", "1.5"], "expected a fraction in (0, 1]")]:
        bad = _command("segformer_jax.evaluate", "--checkpoint", root / "a", *data_args, *extra)
        assert bad.returncode in (1, 2) and message in bad.stderr and "Traceback" not in bad.stderr
    bad = _command("segformer_jax.evaluate", "--checkpoint", root / "a", "--dataset", "synthetic",
                   "--data-dir", tmp_path / "unused")
    assert bad.returncode == 1 and "a model of the image_classification task, and --dataset synthetic" in bad.stderr
    assert not (tmp_path / "unused").exists()  # refused before any dataset is built


def test_a_pretraining_workdir_exports_to_the_hub_for_transformers(classification_run, tmp_path):
    """``convert to-hub`` of a classification workdir writes nvidia/mit-bX's layout
    (SegformerForImageClassification) with the run's class names; transformers' own
    loader reads it and computes the same logits (1e-4, as test_parity argues)."""
    import transformers
    from conftest import random_images, torch_forward

    from segformer_jax.checkpoint import load_checkpoint
    root, _, _ = classification_run
    done = _command("segformer_jax.convert", "to-hub", root / "a", tmp_path / "hub")
    assert done.returncode == 0, done.stderr[-3000:]
    written = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert written["architectures"] == ["SegformerForImageClassification"]
    assert "stripes" in written["id2label"].values()
    torch_model = transformers.SegformerForImageClassification.from_pretrained(
        tmp_path / "hub", attn_implementation="eager").eval()
    config, variables, task = load_checkpoint(root / "a")
    assert task == "image_classification"
    images = random_images(3, 45, 61, seed=5)
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(jax.jit(sj.SegformerForImageClassification(config).apply)(variables, images))
    assert np.abs(ours - torch_forward(torch_model, images)).max() <= 1e-4


def test_a_hub_classifier_fine_tunes_with_another_label_count(tmp_path):
    """A Hub mit-bX (SegformerForImageClassification, here 10 classes, saved by
    transformers) as ``model.init`` of a 5-class run: the encoder kept tensor for tensor, a
    new classifier initialised and named in the log."""
    from conftest import build_hf

    from segformer_jax.hub import from_pretrained
    tiny = sj.SegformerConfig.from_variant("b0", num_labels=10, hidden_sizes=(8, 16, 24, 32),
                                           num_attention_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1))
    build_hf(tiny, "image_classification").save_pretrained(tmp_path / "mit")
    _, full = from_pretrained(tmp_path / "mit")
    config, variables, report = from_pretrained(tmp_path / "mit", task="image_classification",
                                                num_labels=5, report=True)
    assert config.num_labels == 5 and variables["params"]["classifier"]["kernel"].shape == (32, 5)
    assert report.initialised == ("classifier.weight", "classifier.bias")
    jax.tree.map(np.testing.assert_array_equal, variables["params"]["encoder"], full["params"]["encoder"])

    done = _run(tmp_path / "w", tmp_path / "tfds", f"--config.model.init={tmp_path / 'mit'}", total=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "freshly initialised 2 tensors" in done.stderr and "classifier.weight" in done.stderr
    assert "dropped 2 tensors" in done.stderr  # the 10-class classifier


def test_resume_refuses_a_folder_dataset_whose_classes_changed(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "pets"
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for k in range(2):
                (root / split / c / f"{k}.jpg").write_bytes(jpeg(rng))
    def run(total):
        args = [a for a in train_args(tmp_path / "w", tmp_path / "tfds", total)
                if not a.startswith("--config.data.options.")]
        return _command("segformer_jax.train", *args, "--config.data.name=image_folder",
                        f"--config.data.manual_dir={root}", "--config.data.train_split=train",
                        "--config.data.eval_split=val", "--config.data.options={}",
                        "--config.batch_size=4")

    done = run(4)
    assert done.returncode == 0, done.stderr[-3000:]
    (root / "train" / "emu").mkdir()
    (root / "train" / "emu" / "0.jpg").write_bytes(jpeg(rng))
    done = run(8)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "trained on other classes than the image_folder dataset has (2 in the checkpoint, 3 " \
           "in the dataset; only in the dataset: emu)" in done.stderr
    assert "Traceback" not in done.stderr
    assert (tmp_path / "w" / "checkpoints" / "4").is_dir()  # nothing saved is lost
