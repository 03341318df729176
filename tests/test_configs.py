"""Every shipped config file loads for every variant and takes typed overrides."""

import pathlib

import pytest

from segformer_jax.cli_config import apply_override, load_config
from segformer_jax.train import model_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["ade20k", "cityscapes", "folder"])
@pytest.mark.parametrize("variant", ["b0", "b2", "b5"])
def test_config_files(name, variant):
    config = load_config(f"{CONFIGS / name}.py:{variant}")
    assert config.model.variant == variant and config.data.name == name
    assert model_config(config, num_labels=19).depths == {"b0": (2, 2, 2, 2), "b2": (3, 4, 6, 3),
                                                          "b5": (3, 6, 40, 3)}[variant]
    if name == "ade20k":
        assert config.data.crop_size == ((640, 640) if variant == "b5" else (512, 512))


def test_quickstart_and_overrides():
    config = load_config(str(CONFIGS / "quickstart.py"))
    apply_override(config, "optimizer.learning_rate", "1e-3")
    apply_override(config, "data.crop_size", "(64, 64)")
    apply_override(config, "model.remat", "true")
    assert config.optimizer.learning_rate == 1e-3 and config.data.crop_size == (64, 64) and config.model.remat
    with pytest.raises(ValueError, match=r"unknown key; valid keys: .*model\.variant"):
        apply_override(config, "modle.variant", "b1")
    with pytest.raises(ValueError, match="expected true or false"):
        apply_override(config, "model.remat", "maybe")
    with pytest.raises(ValueError, match="no such file"):
        load_config("configs/nope.py")
