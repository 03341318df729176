"""Sweeps (python -m experiments.sweep): two tiny points end to end, a restart after SIGKILL
runs only the missing point, and malformed sweep files are refused before anything runs."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import FAST_COMPILE_FLAG

from experiments import sweep_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = [sys.executable, "-m", "experiments.sweep"]
TINY = {"hidden_sizes": (8, 16, 24, 32), "num_attention_heads": (1, 2, 3, 4),
        "depths": (1, 1, 1, 1), "decoder_hidden_size": 16}


def _write_sweep(path, data_dir, body, measure=""):
    """A sweep file over a tiny model, 32² crops, 3 steps, a 16 + 2 image synthetic dataset."""
    base = {"total_steps": 3, "batch_size": 4, "checkpoint_every": 2, "eval_every": 1000,
            "log_every": 1, "data.crop_size": (32, 32), "data.img_scale": (64, 32),
            "data.eval_scale": (64, 32), "data.data_dir": str(data_dir), "data.num_workers": 1,
            # square 64² images: every validation image is 32² after the eval rescale (one compile)
            "data.options": {"num_train": 16, "num_validation": 2, "size_range": (64, 64)},
            "optimizer.warmup_steps": 1, "model.overrides": TINY}
    path.write_text(f"BASE = {os.path.join(ROOT, 'configs', 'quickstart.py')!r}\n"
                    f"BASE_OVERRIDES = {base!r}\n"
                    "MEASURE = {'size': (32, 32), 'warmup': 0, 'repeats': 2, "
                    f"'train_warmup': 0, 'train_repeats': 1{measure}}}\n" + body)
    return path




def _env():
    return {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", "HF_HUB_OFFLINE": "1",
            "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAG}".strip()}


def _run(command, **kwargs):
    """The sweep command from another directory: ``-m experiments.sweep`` finds the package
    through PYTHONPATH, and so must the point processes it starts."""
    return subprocess.run(command, env=_env(), cwd=os.path.dirname(ROOT), capture_output=True,
                          text=True, **kwargs)


# Both points train the same programs (photometric distortion is host-side augmentation), so the
# second one is served by the sweep's compilation cache: XLA:CPU compiles cost most of the time.
TWO_POINTS = "POINTS = [{'name': 'a'}, {'name': 'b', 'data.photometric': False}]\n"
# Robustness columns: two corruptions at severity 5 on the 2 validation images.
ROBUST = ", 'robustness': {'corruptions': 'fog,contrast', 'severities': [5]}"


def test_sweep_runs_two_points_and_a_restart_after_sigkill_runs_only_the_missing_one(tmp_path):
    sweep_file_path = _write_sweep(tmp_path / "tiny.py", tmp_path / "tfds", TWO_POINTS, ROBUST)
    workdir = tmp_path / "sweep"
    cache = tmp_path / "xla-cache"  # its own, not the session's: its entries are counted below
    command = [*SWEEP, str(sweep_file_path), "--workdir", str(workdir), "--compilation-cache", str(cache)]
    a, b = workdir / "points" / "a", workdir / "points" / "b"

    # First run: killed (the sweep and its point process, no chance to clean up) as soon as
    # point a is finished, while point b is starting.
    proc = subprocess.Popen(command, env=_env(), cwd=os.path.dirname(ROOT),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, text=True)
    deadline = time.monotonic() + 600
    while not (a / "result.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the sweep ended before it was killed:\n{stderr[-3000:]}"
    assert (a / "result.json").exists() and not (b / "result.json").exists()
    result_a = (a / "result.json").read_bytes()
    mtime_a = (a / "result.json").stat().st_mtime_ns
    metrics_a = (a / "metrics.jsonl").read_bytes()

    # Second run: a is skipped (neither retrained nor re-measured), b runs.
    done = _run(command, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[a] finished, skipped" in done.stdout
    assert "[b] starting" in done.stdout or "[b] resuming" in done.stdout
    assert (a / "result.json").read_bytes() == result_a
    assert (a / "result.json").stat().st_mtime_ns == mtime_a
    assert (a / "metrics.jsonl").read_bytes() == metrics_a  # no training step of a was re-run

    table = json.loads((workdir / "results.json").read_text())
    assert [p["name"] for p in table["points"]] == ["a", "b"]
    for point in table["points"]:
        for key in ("params", "gflops", "infer_images_per_s", "train_images_per_s",
                    "train_memory_bytes", "mIoU", "aAcc"):
            assert isinstance(point[key], (int, float)) and math.isfinite(point[key]), (key, point)
            assert point[key] > 0 or key in ("mIoU", "aAcc"), (key, point)
        assert 0.0 <= point["mIoU"] <= 1.0 and len(point["IoU"]) == 6  # the synthetic classes
        assert point["total_steps"] == 3 and point["machine"]["cpu_count"] >= 1
    assert table["points"][0]["params"] == table["points"][1]["params"]
    # The measured training step is the program train() ran: one compile, shared by both
    # points' training and measurement through the sweep's compilation cache.
    assert len(list(cache.glob("jit_train_step-*"))) == 1
    assert table["points"][1]["changes"] == {"data.photometric": False}

    csv_lines = (workdir / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("name,group,seed,variant,")
    assert csv_lines[0].endswith(",robust/clean,robust/mean,robust/fog,robust/contrast")
    for point in table["points"]:
        report = point["robustness"]
        assert report["model"] == point["name"] and list(report["corruptions"]) == ["fog", "contrast"]
        assert report["clean"]["mIoU"] == pytest.approx(point["mIoU"], abs=1e-9)  # train()'s evaluator
        assert all(math.isfinite(report["corruptions"][c]["severities"]["5"]["mIoU"]) for c in ("fog", "contrast"))
    robust_rows = (workdir / "robustness" / "robustness.csv").read_text().splitlines()
    assert robust_rows[0] == "model,clean,fog,contrast,mean"
    assert [r.split(",")[0] for r in robust_rows[1:]] == ["a", "b"]
    assert (workdir / "robustness" / "robustness.png").is_file()
    saved = sorted(p.name for p in (a / "robustness" / "runs").iterdir())
    assert saved == ["clean.json", "contrast-5.json", "fog-5.json"]
    markdown = (workdir / "results.md").read_text()
    assert "| a | b0 |" in markdown and "| b | b0 | data.photometric=False |" in markdown
    assert "Robustness: mIoU (%)" in markdown and "| model | clean | fog | contrast | mean |" in markdown
    from PIL import Image
    with Image.open(workdir / "plot.png") as image:
        assert image.format == "PNG" and image.size == (1500, 680)
        assert len(image.convert("RGB").getcolors(1 << 20)) > 10  # axes, markers and text drawn
    assert (a / "point_config.json").is_file() and (a / "log.txt").is_file()
    assert "-m experiments.sweep" in (a / "log.txt").read_text()

    # A point killed between its last checkpoint and its saved summary: the final evaluation
    # is made again from the workdir's last checkpoint, and it is the one train() made.
    from experiments import sweep as sweep_cli
    saved = json.loads((a / "train_summary.json").read_text())
    (a / "train_summary.json").unlink()
    again = sweep_cli._final_summary(sweep_file.load_sweep(sweep_file_path).points[0], a, {})
    assert again["class_names"] == saved["class_names"]
    assert again["mIoU"] == pytest.approx(saved["mIoU"], abs=1e-6)
    assert json.loads((a / "train_summary.json").read_text()) == again


@pytest.mark.parametrize("body, message", [
    ("POINTS = [{'name': 'x', 'model.decoder_size': 128}]",
     "model.decoder_size: unknown key; valid keys: model.binary, model.dtype, model.init"),
    ("POINTS = [{'model.overrides.decoder_size': 128}]",
     "model.overrides.decoder_size: unknown key; valid keys: model.overrides."),
    ("POINTS = [{'name': 'x', 'model.overrides': {'decoder_size': 128}}]",
     "model.overrides.decoder_size: unknown key; valid keys: model.overrides."),
    ("GRID = {'model.variant': ['b0', 'b9']}", "model.variant='b9' is not a SegFormer variant"),
    ("POINTS = [{'name': 'x', 'total_steps': '100'}]",
     "total_steps='100' is a str; total_steps takes an int like"),
    ("POINTS = [{'name': 'x', 'model.overrides.mix_ffn_conv': 0}]",
     "mix_ffn_conv=0 is an int; model.overrides.mix_ffn_conv takes a bool"),
    ("POINTS = [{'name': 'x', 'model.overrides': {'mix_ffn_conv': 0}}]",
     "mix_ffn_conv=0 is an int; model.overrides.mix_ffn_conv takes a bool"),
    ("POINTS = [{'name': 'x', 'model.overrides.sr_ratios': (8, 4, 2)}]", "sr_ratios=(8, 4, 2)"),
    ("POINTS = [{'name': 'x', 'model.overrides.sr_ratios': (8, 4, 2)}]",
     "'sr_ratios' has 3 entries but num_encoder_blocks is 4"),
    ("POINTS = [{'name': 'x', 'data.crop_size': 64}]",
     "data.crop_size=64 is an int; data.crop_size takes a list of 2"),
    ("POINTS = [{'name': 'x', 'model.overrides.hidden_sizes': (8, 16, 24, 30)}]",
     "hidden size 30 is not a multiple of its 4 attention heads"),
    ("POINTS = [{'name': 'x'}, {'name': 'x', 'seed': 1}]", "the name 'x' is already used"),
    ("AXES = {'model.variant': ['b0']}", "unknown name(s) ['AXES']"),
    ("SEEDS = [0, 0]\nPOINTS = [{'name': 'x'}]", "SEEDS must be a non-empty list of distinct"),
    ("SEEDS = [0, 1]\nPOINTS = [{'name': 'x', 'seed': 3}]", "sets seed, and SEEDS runs every point"),
    ("POINTS = [{'name': 'x', 'pretrain': True}]", "True needs a PRETRAIN config"),
    ("PRETRAIN = {'config': 'configs/quickstart.py'}\nPOINTS = [{'name': 'x', 'pretrain': True}]",
     "PRETRAIN: configs/quickstart.py trains semantic_segmentation; the pretraining stage is"),
    ("PRETRAIN = {'config': 'configs/classification_quickstart.py', 'classification.mixup_alpha': -1.0}"
     "\nPOINTS = [{'name': 'x', 'pretrain': True}]", "classification.mixup_alpha must be >= 0"),
    ("", "defines no points"),
    ("MEASURE = {'robustness': {'corruptions': 'fog,rain'}}\nPOINTS = [{'name': 'x'}]",
     "MEASURE['robustness']['corruptions']: unknown corruption 'rain'; choose from gaussian_noise"),
    ("MEASURE = {'robustness': {'severities': [3, 7]}}\nPOINTS = [{'name': 'x'}]",
     "MEASURE['robustness']['severities']: severity 7 is outside 1-5"),
    ("MEASURE = {'robustness': {'images': 3}}\nPOINTS = [{'name': 'x'}]",
     "unknown MEASURE['robustness'] key 'images'; valid: corruptions, severities, max_examples, seed"),
])
def test_malformed_sweeps_are_refused_naming_the_key(tmp_path, body, message):
    path = _write_sweep(tmp_path / "bad.py", tmp_path / "tfds", body + "\n")
    with pytest.raises(sweep_file.SweepError) as error:
        sweep_file.load_sweep(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("key, value", [("model.overrides.decoder_width", 128),
                                        ("optimizer.lr", 1e-3), ("total_steps", 1.5),
                                        ("model.overrides.depths", "1,1,1,1")])
def test_a_point_with_an_unknown_key_or_a_wrong_type_is_refused_naming_the_point_and_key(
        tmp_path, key, value):
    path = _write_sweep(tmp_path / "bad.py", tmp_path / "tfds",
                        f"POINTS = [{{'name': 'ok'}}, {{'name': 'bad', {key!r}: {value!r}}}]\n")
    with pytest.raises(sweep_file.SweepError) as error:
        sweep_file.load_sweep(path)
    assert f"{path}: point 'bad' (POINTS[1]): " in str(error.value)
    assert f"{key}: unknown key; valid keys: " in str(error.value) or f"{key}={value!r} is " in str(error.value)


def test_a_dict_for_a_section_sets_its_keys_and_data_options_is_replaced_whole(tmp_path):
    path = _write_sweep(tmp_path / "ok.py", tmp_path / "tfds",
                        "POINTS = [{'name': 'x', 'model.overrides': {'sr_ratios': [1, 1, 1, 1]},"
                        " 'data.options': {'num_train': 4}}]\n")
    config = sweep_file.load_sweep(path).points[0].config
    overrides = {k: v for k, v in config.model.overrides.items() if v is not None}
    assert overrides == {**TINY, "sr_ratios": (1, 1, 1, 1)}  # TINY kept, typed as tuples
    assert dict(config.data.options) == {"num_train": 4}


def test_the_command_refuses_a_malformed_sweep_before_creating_anything(tmp_path):
    path = _write_sweep(tmp_path / "bad.py", tmp_path / "tfds",
                              "GRID = {'model.variant': ['b0', 'b9']}\n")
    workdir = tmp_path / "sweep"
    done = _run([*SWEEP, str(path), "--workdir", str(workdir)], timeout=300)
    assert done.returncode == 2
    assert "model.variant='b9' is not a SegFormer variant; choose one of b0, b1, b2, b3, b4, b5" \
        in done.stderr
    assert not workdir.exists() and not (tmp_path / "tfds").exists()


def test_the_shipped_sweeps_are_valid():
    quick = sweep_file.load_sweep(os.path.join(ROOT, "experiments", "variants_quickstart.py"))
    assert [p.config.model.variant for p in quick.points][:3] == ["b0", "b1", "b2"]
    assert any(p.config.model.overrides.get("mix_ffn_conv") is False for p in quick.points)
    full = sweep_file.load_sweep(os.path.join(ROOT, "experiments", "ade20k_full.py"))
    assert [p.name for p in full.points] == ["b0", "b1", "b2", "b3", "b4", "b5"]
    assert all(p.config.total_steps == 160_000 and p.config.data.name == "ade20k" for p in full.points)
    assert full.points[5].config.data.crop_size == (640, 640)
    encoder = sweep_file.load_sweep(os.path.join(ROOT, "experiments", "encoder_quickstart.py"))
    pretrained = [p for p in encoder.points if p.pretrain is not None]
    assert len(pretrained) == 9 and len(encoder.points) == 18  # 3 seeds
    assert [p.pretrain.model.overrides.sr_ratios for p in pretrained[::3]] == [None, (1, 1, 1, 1), None]
    assert pretrained[6].pretrain.model.overrides.mix_ffn_conv is False and pretrained[7].pretrain.seed == 1


def test_a_launcher_submits_one_job_per_unfinished_point_once(tmp_path):
    path = _write_sweep(tmp_path / "tiny.py", tmp_path / "tfds", TWO_POINTS)
    workdir, jobs = tmp_path / "sweep", tmp_path / "jobs.txt"
    command = [*SWEEP, str(path), "--workdir", str(workdir),
               "--launcher", f"echo {{name}} {{log}} :: {{cmd}} >> {jobs}"]
    done = _run(command, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = jobs.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["a", "b"]
    for line, name in zip(lines, "ab"):
        assert f"{workdir / 'points' / name / 'log.txt'} ::" in line
        assert f"env PYTHONPATH={ROOT}" in line  # the job may start in any directory
        assert f"-m experiments.sweep {path} --workdir {workdir} --point {name}" in line
        assert (workdir / "points" / name / "submitted.json").is_file()
    again = _run(command, timeout=300)
    assert again.returncode == 0 and "[a] submitted before, skipped" in again.stdout
    assert jobs.read_text().splitlines() == lines  # nothing submitted twice


def _kill_when(command, path, timeout=600):
    """Starts the sweep and SIGKILLs it (and its point process) once ``path`` exists."""
    proc = subprocess.Popen(command, env=_env(), cwd=os.path.dirname(ROOT), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, text=True)
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the sweep ended before it was killed:\n{stderr[-3000:]}"


@pytest.mark.slow
def test_a_two_stage_sweep_over_seeds_resumes_in_either_stage(tmp_path):
    """A point pretrained on the classification set, then fine-tuned from its own encoder,
    beside the same from scratch, over two seeds: killed in the pretraining stage, then in
    the fine-tuning stage, each resumes from its own checkpoint; the report gives mean ± sd."""
    pretrain = {"config": os.path.join(ROOT, "configs", "classification_quickstart.py"),
                "total_steps": 6, "batch_size": 8, "checkpoint_every": 2, "eval_every": 1000,
                "log_every": 1, "data.crop_size": (32, 32), "data.data_dir": str(tmp_path / "tfds"),
                "data.num_workers": 1, "data.options": {"num_train": 24, "num_validation": 6},
                "classification.eval_batch_size": 8, "optimizer.warmup_steps": 1}
    # Both points fine-tune 6 steps: total_steps is a constant of the compiled step, so the
    # scratch and fine-tuning runs of a seed share one program through the compilation cache.
    body = (f"PRETRAIN = {pretrain!r}\nSEEDS = [0, 1]\n"
            "POINTS = [{'name': 'scratch', 'total_steps': 6}, {'name': 'pt', 'pretrain': True, 'total_steps': 6}]\n")
    path = _write_sweep(tmp_path / "two_stage.py", tmp_path / "tfds", body)
    sweep = sweep_file.load_sweep(path)
    assert [p.name for p in sweep.points] == ["scratch-seed0", "scratch-seed1", "pt-seed0", "pt-seed1"]
    pt = sweep.points[2]
    assert pt.pretrain.task == "image_classification" and pt.pretrain.seed == 0
    assert pt.pretrain.model.overrides.hidden_sizes == TINY["hidden_sizes"]
    assert sweep.points[3].config.seed == 1 and sweep.points[0].pretrain is None

    workdir = tmp_path / "sweep"
    command = [*SWEEP, str(path), "--workdir", str(workdir), "--only", "pt-seed0"]
    point = workdir / "points" / "pt-seed0"
    _kill_when(command, point / "pretrain" / "checkpoints" / "2")
    assert not (point / "pretrain" / "result.json").exists()
    _kill_when(command, point / "checkpoints" / "2")
    log = (point / "log.txt").read_text()
    assert f"resuming from {point / 'pretrain' / 'checkpoints'}" in log
    assert "encoder kept; the decode_head (semantic_segmentation) freshly initialised" in log
    pretrain_result = (point / "pretrain" / "result.json").read_bytes()

    done = _run([*SWEEP, str(path), "--workdir", str(workdir)], timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (point / "log.txt").read_text()
    assert f"resuming from {point / 'checkpoints' / '2'}" in log
    # Stage 1 started, then resumed (and finished); the third process went straight to stage 2.
    assert log.count("stage 1: pretraining") == 2 and log.count("stage 2: fine-tuning") == 2
    assert (point / "pretrain" / "result.json").read_bytes() == pretrain_result
    steps = [json.loads(line)["step"] for line in (point / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))  # the fine-tune stage, no step twice

    table = json.loads((workdir / "results.json").read_text())["points"]
    assert [p["group"] for p in table] == ["scratch", "scratch", "pt", "pt"]
    assert [p["seed"] for p in table] == [0, 1, 0, 1]
    assert table[0]["pretrain"] is None and 0 <= table[2]["pretrain"]["top1"] <= 1
    from experiments import sweep_report
    rows = sweep_report.over_seeds(table)
    miou = [p["mIoU"] for p in table[2:]]
    assert rows[1]["mIoU"] == pytest.approx(sum(miou) / 2)
    assert rows[1]["mIoU_sd"] == pytest.approx(abs(miou[0] - miou[1]) / math.sqrt(2))
    markdown = (workdir / "results.md").read_text()
    assert "| point | pretrained (top-1 %) | seeds | mIoU (%) | aAcc (%) |" in markdown
    assert "| scratch | no | 0, 1 |" in markdown and "| pt | yes (" in markdown
    assert (workdir / "plot.png").stat().st_size > 10_000
