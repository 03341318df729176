"""Every shipped config file loads for every variant and takes typed overrides; a bad key or
value is one error naming it, before any work."""

import json
import pathlib

import pytest

from segformer_jax import run_config, train
from segformer_jax.errors import ConfigError
from segformer_jax.optim import Recipe
from segformer_jax.run_config import load, model_config, set_key

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.mark.parametrize("name", ["ade20k", "cityscapes", "coco_stuff", "folder"])
@pytest.mark.parametrize("variant", ["b0", "b2", "b5"])
def test_config_files(name, variant):
    config = load(f"{CONFIGS / name}.py:{variant}")
    assert config.model.variant == variant and config.data.name == name
    assert model_config(config, num_labels=19).depths == {"b0": (2, 2, 2, 2), "b2": (3, 4, 6, 3),
                                                          "b5": (3, 6, 40, 3)}[variant]
    if name == "ade20k":
        assert config.data.crop_size == ((640, 640) if variant == "b5" else (512, 512))
        assert config.data.eval_scale == ((2048, 640) if variant == "b5" else (2048, 512))
    if name == "coco_stuff":   # the paper: 80k steps of 16, 512² crops, short side 512 aligned to 32
        assert (config.total_steps, config.batch_size, config.data.crop_size) == (80_000, 16, (512, 512))
        assert config.data.eval_scale == (2048, 512) and config.data.eval_size_divisor == 32


def test_quickstart_and_overrides():
    config = load(str(CONFIGS / "quickstart.py"), {"optimizer.learning_rate": 1e-3,
                                                   "data.crop_size": (64, 64), "model.remat": True,
                                                   "model.overrides.sr_ratios": (1, 1, 1, 1)})
    assert config.optimizer.learning_rate == 1e-3 and config.data.crop_size == (64, 64) and config.model.remat
    assert model_config(config, num_labels=6).sr_ratios == (1, 1, 1, 1)
    with pytest.raises(ConfigError, match=r"modle\.variant: unknown key; valid keys: .*model\.variant"):
        set_key(config, "modle.variant", "b1")
    with pytest.raises(ConfigError, match=r"model\.remat='maybe' is a str; model\.remat takes a bool \(true or "):
        set_key(config, "model.remat", "maybe")
    with pytest.raises(ConfigError, match=r"model\.overrides\.decoder_hidden_size='wide' is a str; .* takes an int"):
        set_key(config, "model.overrides.decoder_hidden_size", "wide")
    with pytest.raises(ConfigError, match="no such file"):
        load("configs/nope.py")


def test_defaults_live_once():
    """The optimiser section is optim.Recipe's fields and defaults, nothing copied, plus
    the one key that adapts the recipe to the run (scale_lr_with_batch)."""
    config = run_config.default_config()
    assert run_config.recipe(config) == Recipe()
    assert (set(config.optimizer) | {"total_steps"}
            == set(Recipe.__dataclass_fields__) | {"scale_lr_with_batch"})


@pytest.mark.parametrize("flag, named", [
    ("--config.optimzer.learning_rate=1", "--config.optimzer.learning_rate: unknown key; valid keys: "
                                          "accumulate_steps"),
    ("--config.batch_size=many", "--config.batch_size=many: batch_size takes an int like 8"),
    ("--config.model.remat=maybe", "--config.model.remat=maybe: model.remat takes a bool (true or false)"),
    ("--config.model.overrides.depthz=1", "--config.model.overrides.depthz: unknown key; valid keys: "
                                          "model.overrides.attention_probs_dropout_prob"),
    ("--config.model.overrides.depths=deep", "model.overrides (depths=('deep',)): config field 'depths' must be"),
    ("--config.total_steps=0", "config total_steps must be at least 1"),
    ("--bogus=1", "unrecognised flag --bogus"),
])
def test_bad_flags_fail_before_any_work(tmp_path, capsys, flag, named):
    workdir = tmp_path / "w"
    rc = train.main(["--config", str(CONFIGS / "quickstart.py"), "--workdir", str(workdir), flag])
    err = capsys.readouterr().err
    assert rc == 2 and named in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not workdir.exists()  # nothing built, nothing written


def test_resolved_config_is_json(tmp_path):
    from segformer_jax.workdir import CONFIG_HISTORY, record_start
    config = load(str(CONFIGS / "quickstart.py"), {"total_steps": 7})
    record_start(tmp_path, run_config.to_json_data(config), 0)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["total_steps"] == 7 and data["data"]["crop_size"] == [96, 96]
    assert data["optimizer"]["learning_rate"] == 6e-4
    [start] = [json.loads(line) for line in (tmp_path / CONFIG_HISTORY).read_text().splitlines()]
    assert start["start_step"] == 0 and start["config"] == data


def test_sections_typed_or_free_form():
    """A dict for a section with keys sets them one by one (typed); data.options, empty by
    default (the dataset builder's keyword arguments), takes a dict whole."""
    config = load(str(CONFIGS / "quickstart.py"))
    set_key(config, "model.overrides", {"decoder_hidden_size": 64})
    assert run_config.model_overrides(config) == {"decoder_hidden_size": 64}
    with pytest.raises(ConfigError, match=r"model\.overrides\.decoder_hidden_size='wide'"):
        set_key(config, "model.overrides", {"decoder_hidden_size": "wide"})
    with pytest.raises(ConfigError, match=r"model\.overrides\.depthz: unknown key; valid keys: model\.overrides\."):
        set_key(config, "model.overrides", {"depthz": (1, 1, 1, 1)})
    set_key(config, "data.options", {"num_train": 3})
    assert config.data.options.to_dict() == {"num_train": 3}
    set_key(config, "data.crop_size", (64, "a"))
    with pytest.raises(ConfigError, match=r"data\.crop_size must be two positive numbers"):
        run_config.validate(config)


def test_scanned_blocks_by_default_where_they_measured_better():
    for name in ("ade20k", "cityscapes", "folder"):
        for variant in ("b0", "b2", "b5"):
            config = load(f"configs/{name}.py:{variant}")
            assert config.model.scan == (variant in run_config.SCAN_BY_DEFAULT), (name, variant)
    assert run_config.SCAN_BY_DEFAULT == ("b5",)
    assert load("configs/quickstart.py").model.scan is False
    model = train.model_for_run(load("configs/ade20k.py:b5"), model_config(load("configs/ade20k.py:b5"), 150))
    assert model.scan is True


def test_batch_notes_and_linear_lr_scaling():
    """The recipe's learning rate is for a global batch of 16: a run with another batch is
    told so, and optimizer.scale_lr_with_batch scales it linearly; one image per step is
    warned about (the head's BatchNorm)."""
    from segformer_jax.run_config import RECIPE_BATCH, batch_notes, default_config, recipe
    config = default_config()
    assert config.batch_size == RECIPE_BATCH and batch_notes(config) == []
    base = recipe(config).learning_rate
    config.batch_size = 8
    (note,) = batch_notes(config)
    assert "global batch 8, not the recipe's 16" in note and "scale_lr_with_batch=True" in note
    assert recipe(config).learning_rate == base
    config.optimizer.scale_lr_with_batch = True
    assert recipe(config).learning_rate == pytest.approx(base / 2)
    assert "scaled linearly to 3e-05" in batch_notes(config)[0]
    config.batch_size = 1
    assert any("BatchNorm sees one image" in n for n in batch_notes(config))
    config.task = "image_classification"
    assert batch_notes(config) == []
