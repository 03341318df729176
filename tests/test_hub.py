"""Reading every accepted checkpoint format, writing ours, and the errors for bad checkpoints."""

import json
import logging
import pickle
import re
import zipfile

import jax
import numpy as np
import pytest
from conftest import build_hf, random_images, torch_forward

import segformer_jax as sj
from segformer_jax.hub import read_torch_file

ATOL = 1e-4  # see test_parity.py


def _logits(config, variables, images, task="semantic_segmentation"):
    model = {"semantic_segmentation": sj.SegformerForSemanticSegmentation,
             "image_classification": sj.SegformerForImageClassification}[task](config)
    with jax.default_matmul_precision("highest"):
        return np.asarray(jax.jit(model.apply)(variables, images))


def _check_equal_to_torch(config, variables, torch_model, task="semantic_segmentation"):
    images = random_images(2, 70, 51, seed=3)
    diff = np.abs(_logits(config, variables, images, task) - torch_forward(torch_model, images)).max()
    assert diff <= ATOL, diff


# -- formats --------------------------------------------------------------------------


def test_transformers5_in_memory_names(b0_hub_dir, tmp_path):
    """transformers 5 renames the modules in memory; a state_dict() dump uses those names."""
    from safetensors.torch import save_file
    hub, torch_model = b0_hub_dir
    state = {k: v.contiguous() for k, v in torch_model.state_dict().items()}
    assert any(".q_proj." in k for k in state), "expected transformers 5 in-memory names"
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((hub / "config.json").read_text())
    config, variables = sj.from_pretrained(tmp_path)
    _check_equal_to_torch(config, variables, torch_model)


def test_pytorch_model_bin_is_read_without_torch(b0_hub_dir, tmp_path):
    import torch
    from safetensors.numpy import load_file
    hub, torch_model = b0_hub_dir
    hub_state = load_file(hub / "model.safetensors")
    torch.save({k: torch.from_numpy(v) for k, v in hub_state.items()}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((hub / "config.json").read_text())
    ours = read_torch_file(tmp_path / "pytorch_model.bin")
    assert sorted(ours) == sorted(hub_state)
    for key, value in hub_state.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)
    config, variables = sj.from_pretrained(tmp_path)
    _check_equal_to_torch(config, variables, torch_model)


def test_torch_reader_handles_views_dtypes_and_parameters(tmp_path):
    import torch
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {"t": base.t(), "slice": base[1:3, 2:], "half": base.half(), "bf16": base.bfloat16(),
           "long": torch.arange(5), "scalar": torch.tensor(3.5),
           "param": torch.nn.Parameter(torch.ones(2, 2)), "meta": {"classes": ("a", "b"), "iter": 7}}
    torch.save(obj, tmp_path / "x.pth")
    ours = read_torch_file(tmp_path / "x.pth")
    for key in ("t", "slice", "half", "long", "scalar", "param"):
        np.testing.assert_array_equal(ours[key], obj[key].detach().numpy(), err_msg=key)
    np.testing.assert_array_equal(ours["bf16"].astype(np.float32), obj["bf16"].float().numpy())
    assert ours["meta"] == {"classes": ("a", "b"), "iter": 7}


def test_pickle_with_arbitrary_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    with zipfile.ZipFile(tmp_path / "evil.bin", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}))
    with pytest.raises(sj.CheckpointError, match=r"evil\.bin: refusing to unpickle builtins\.print"):
        sj.from_pretrained(tmp_path / "evil.bin")


# The NVlabs original names (mmseg/models/backbones/mix_transformer.py, SegFormerHead), written
# out by hand, independently of our renaming rules.
def _to_nvlabs(key: str) -> str:
    key = key.removeprefix("segformer.")
    if key.startswith("classifier."):
        return "head." + key.removeprefix("classifier.")
    if key.startswith("decode_head."):
        rest = key.removeprefix("decode_head.")
        rest = re.sub(r"^linear_c\.(\d)\.", lambda m: f"linear_c{int(m[1]) + 1}.", rest)
        rest = rest.replace("linear_fuse.", "linear_fuse.conv.").replace("batch_norm.", "linear_fuse.bn.")
        return "decode_head." + rest.replace("classifier.", "linear_pred.")
    rest = key.removeprefix("encoder.")
    rest = re.sub(r"^patch_embeddings\.(\d)\.proj\.", lambda m: f"patch_embed{int(m[1]) + 1}.proj.", rest)
    rest = re.sub(r"^patch_embeddings\.(\d)\.layer_norm\.", lambda m: f"patch_embed{int(m[1]) + 1}.norm.", rest)
    rest = re.sub(r"^layer_norm\.(\d)\.", lambda m: f"norm{int(m[1]) + 1}.", rest)
    rest = re.sub(r"^block\.(\d)\.", lambda m: f"block{int(m[1]) + 1}.", rest)
    for a, b in [("layer_norm_1", "norm1"), ("layer_norm_2", "norm2"), ("attention.self.query", "attn.q"),
                 ("attention.self.sr", "attn.sr"), ("attention.self.layer_norm", "attn.norm"),
                 ("attention.output.dense", "attn.proj"), ("mlp.dense1", "mlp.fc1"), ("mlp.dense2", "mlp.fc2")]:
        rest = rest.replace(a, b)
    return rest


def _nvlabs_state(hub_state: dict, backbone_prefix: str) -> dict:
    import torch
    out = {}
    for key, value in hub_state.items():
        if key.endswith("num_batches_tracked") or ".attention.self.value." in key:
            continue
        name = _to_nvlabs(key)
        if ".attention.self.key." in key:  # one kv Linear: rows [:C] keys, [C:] values
            value = np.concatenate([value, hub_state[key.replace(".key.", ".value.")]])
            name = name.replace("attention.self.key", "attn.kv")
        prefix = "" if name.startswith(("decode_head.", "head.")) else backbone_prefix
        out[prefix + name] = torch.from_numpy(np.ascontiguousarray(value))
    return out


def test_nvlabs_segformer_checkpoint(b0_hub_dir, tmp_path):
    """An mmseg ``segformer.b0.512x512.ade.160k.pth``: {'meta', 'state_dict'}, no config.json."""
    import torch
    from safetensors.numpy import load_file
    hub, torch_model = b0_hub_dir
    state = _nvlabs_state(load_file(hub / "model.safetensors"), "backbone.")
    state["decode_head.conv_seg.weight"] = torch.zeros(150, 256, 1, 1)  # unused, as in the originals
    torch.save({"meta": {"CLASSES": ("wall", "building"), "iter": 160000}, "state_dict": state},
               tmp_path / "segformer.b0.512x512.ade.160k.pth")
    config, variables = sj.from_pretrained(tmp_path)
    assert (config.hidden_sizes, config.depths, config.num_labels) == ((32, 64, 160, 256), (2, 2, 2, 2), 150)
    _check_equal_to_torch(config, variables, torch_model)


def test_nvlabs_mit_backbone_for_segmentation(tmp_path, caplog):
    """``mit_b0.pth`` (ImageNet classifier) → a segmentation model with a fresh decode head."""
    import torch
    from safetensors.numpy import load_file
    config = sj.SegformerConfig.from_variant("b0", num_labels=1000)
    torch_model = build_hf(config, "image_classification")
    torch_model.save_pretrained(tmp_path / "hub")
    state = _nvlabs_state(load_file(tmp_path / "hub" / "model.safetensors"), "")
    torch.save(state, tmp_path / "mit_b0.pth")

    loaded, variables = sj.from_pretrained(tmp_path / "mit_b0.pth")
    _check_equal_to_torch(loaded, variables, torch_model, "image_classification")

    with caplog.at_level(logging.WARNING):
        seg_config, seg = sj.from_pretrained(tmp_path / "mit_b0.pth", task="semantic_segmentation",
                                             num_labels=19)
    assert seg_config.num_labels == 19 and seg_config.decoder_hidden_size == 256
    assert "dropped 2 tensors" in caplog.text and "classifier.weight" in caplog.text
    assert "freshly initialised" in caplog.text and "decode_head.linear_fuse.weight" in caplog.text
    jax.tree.map(np.testing.assert_array_equal, seg["params"]["encoder"], variables["params"]["encoder"])
    assert _logits(seg_config, seg, random_images(1, 64, 64)).shape == (1, 16, 16, 19)

    # The same facts as data, for callers that act on them (predict refuses a random head).
    _, again, report = sj.from_pretrained(tmp_path / "mit_b0.pth", task="semantic_segmentation",
                                          num_labels=19, report=True)
    jax.tree.map(np.testing.assert_array_equal, again, seg)
    assert report.dropped == ("classifier.bias", "classifier.weight")
    assert "decode_head.linear_fuse.weight" in report.initialised
    assert all(k.startswith("decode_head.") for k in report.initialised)
    from segformer_jax.checkpoint import load_checkpoint, load_for_inference
    with pytest.raises(sj.CheckpointError, match="an image_classification model, not a semantic "
                                                 "segmentation one; fine-tune it first"):
        load_for_inference(tmp_path / "mit_b0.pth")
    assert load_checkpoint(tmp_path / "mit_b0.pth")[2] == "image_classification"  # evaluate, convert

    # An encoder alone (the classifier stripped) is refused by both: any head would be random.
    del state["head.weight"], state["head.bias"]
    torch.save(state, tmp_path / "encoder.pth")
    with pytest.raises(sj.CheckpointError, match="has no .complete. semantic_segmentation head"):
        load_checkpoint(tmp_path / "encoder.pth")


def test_new_label_count_keeps_encoder_and_head_mlp(b0_hub_dir, caplog):
    hub, _ = b0_hub_dir
    _, full = sj.from_pretrained(hub)
    with caplog.at_level(logging.WARNING):
        config, variables = sj.from_pretrained(hub, num_labels=19)
    assert config.num_labels == 19 and config.id2label[18] == "LABEL_18"
    assert "decode_head.classifier.weight" in caplog.text and "decode_head.classifier.bias" in caplog.text
    head, old = variables["params"]["decode_head"], full["params"]["decode_head"]
    assert head["classifier"]["kernel"].shape == (256, 19)
    assert np.std(np.asarray(head["classifier"]["kernel"])) == pytest.approx(0.02, rel=0.1)
    np.testing.assert_array_equal(head["linear_fuse"], old["linear_fuse"])
    jax.tree.map(np.testing.assert_array_equal, variables["params"]["encoder"], full["params"]["encoder"])


def test_save_pretrained_writes_hub_layout(b0_hub_dir, tmp_path):
    hub, _ = b0_hub_dir
    config, variables = sj.from_pretrained(hub)
    sj.save_pretrained(tmp_path, config, variables)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == ["SegformerForSemanticSegmentation"]
    assert written["id2label"]["149"] == config.id2label[149]
    from safetensors.numpy import load_file
    ours, theirs = load_file(tmp_path / "model.safetensors"), load_file(hub / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype and ours[key].shape == theirs[key].shape, key
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


# -- bad checkpoints ------------------------------------------------------------------


def _copy_with(hub, tmp_path, change):
    from safetensors.numpy import load_file, save_file
    tensors = load_file(hub / "model.safetensors")
    change(tensors)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((hub / "config.json").read_text())
    return tmp_path


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(sj.CheckpointError, match=r"no weights found .*model\.safetensors.*config\.json"):
        sj.from_pretrained(tmp_path)
    with pytest.raises(sj.CheckpointError, match="no such checkpoint"):
        sj.from_pretrained(tmp_path / "nope")


def test_missing_and_unexpected_tensors_are_named(b0_hub_dir, tmp_path):
    hub, _ = b0_hub_dir
    def change(t):
        del t["segformer.encoder.block.1.0.mlp.dense2.bias"]
        t["segformer.encoder.block.1.0.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(sj.CheckpointError) as err:
        sj.from_pretrained(_copy_with(hub, tmp_path, change))
    message = str(err.value)
    assert "missing tensors: encoder.block.1.0.mlp.dense2.bias" in message
    assert "unexpected tensors: encoder.block.1.0.extra.weight" in message


def test_shape_mismatch_is_named(b0_hub_dir, tmp_path):
    hub, _ = b0_hub_dir
    def change(t):
        t["segformer.encoder.block.0.1.mlp.dense1.weight"] = np.zeros((128, 31), np.float32)
    with pytest.raises(sj.CheckpointError,
                       match=r"encoder\.block\.0\.1\.mlp\.dense1\.weight has shape \(128, 31\), expected \(128, 32\)"):
        sj.from_pretrained(_copy_with(hub, tmp_path, change))


def test_damaged_files(b0_hub_dir, tmp_path):
    hub, _ = b0_hub_dir
    (tmp_path / "model.safetensors").write_bytes((hub / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(sj.CheckpointError, match="not a readable safetensors file"):
        sj.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(sj.CheckpointError, match="pytorch_model.bin"):
        sj.from_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").unlink()
    (tmp_path / "model.safetensors").write_bytes((hub / "model.safetensors").read_bytes())
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(sj.ConfigError, match=r"config\.json: not valid JSON"):
        sj.from_pretrained(tmp_path)


def test_save_keeps_existing_checkpoint_on_error(b0_hub_dir, tmp_path):
    hub, _ = b0_hub_dir
    config, variables = sj.from_pretrained(hub)
    sj.save_pretrained(tmp_path, config, variables)
    before = (tmp_path / "model.safetensors").read_bytes()
    broken = {"params": {"decode_head": {}}, "batch_stats": {}}
    with pytest.raises(sj.CheckpointError, match="variables lack"):
        sj.save_pretrained(tmp_path, config, broken)
    assert (tmp_path / "model.safetensors").read_bytes() == before


# -- bad config.json values -------------------------------------------------------------

TINY_NAMES = ("road", "tree", "sky")
# What a Hub config.json may hold that transformers' SegformerConfig refuses as well: each is
# one ConfigError naming the file, the key and the value (they were tracebacks).
BAD_CONFIGS = {
    "id2label-list": ({"id2label": ["road", "tree", "sky"]}, r"id2label must be an object.*got a list"),
    "id2label-name-key": ({"id2label": {"a": "cat", "1": "tree", "2": "sky"}},
                          r'id2label key "a" \(for "cat"\) is not a class id'),
    "depths-2.0": ({"depths": [2.0, 1, 1, 1]}, r"config field 'depths' must be a list of integers.*\[2\.0, 1, 1, 1\]"),
    "depths-2.5": ({"depths": [2.5, 1, 1, 1]}, r"config field 'depths' must be a list of integers.*\[2\.5, 1, 1, 1\]"),
}


@pytest.fixture(scope="module")
def tiny_hub(tmp_path_factory):
    config = sj.SegformerConfig.from_variant(
        "b0", num_labels=len(TINY_NAMES), hidden_sizes=(8, 16, 24, 32), num_attention_heads=(1, 2, 3, 4),
        depths=(1, 1, 1, 1), decoder_hidden_size=16, id2label=dict(enumerate(TINY_NAMES)))
    return sj.save_pretrained(tmp_path_factory.mktemp("tiny_hub") / "hub", config,
                              sj.init_variables(config, seed=2))


def _hub_with(hub, directory, change):
    directory.mkdir()
    (directory / "model.safetensors").write_bytes((hub / "model.safetensors").read_bytes())
    data = json.loads((hub / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**data, **change}, indent=2))
    return directory


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_json_values_are_one_config_error(tiny_hub, tmp_path, case):
    import transformers
    change, message = BAD_CONFIGS[case]
    hub = _hub_with(tiny_hub, tmp_path / case, change)
    data = json.loads((hub / "config.json").read_text())
    with pytest.raises(Exception):  # noqa: B017 - the oracle: transformers refuses it too
        transformers.SegformerConfig.from_dict(data)
    for read in (sj.SegformerConfig.from_json_file, lambda _: sj.from_pretrained(hub)):
        with pytest.raises(sj.ConfigError, match=message) as err:
            read(hub / "config.json")
        assert str(hub / "config.json") in str(err.value)


def test_config_json_keys_read_as_transformers_reads_them(tiny_hub, tmp_path):
    """transformers reads id2label keys with int(): " 1" is class 1; so does this."""
    import transformers
    hub = _hub_with(tiny_hub, tmp_path / "spaced",
                    {"id2label": {"0": "road", " 1": "tree", "2 ": "sky"}})
    data = json.loads((hub / "config.json").read_text())
    theirs = transformers.SegformerConfig.from_dict(data).id2label
    config, _ = sj.from_pretrained(hub)
    assert dict(config.id2label) == dict(theirs) == dict(enumerate(TINY_NAMES))


def test_bad_config_json_through_predict(tiny_hub, tmp_path):
    """The way it was met: ``python -m segformer_jax.predict --checkpoint HUBDIR`` printed a
    traceback; now one error line naming the file and the key, exit status 1, nothing written."""
    import os
    import subprocess
    import sys

    import PIL.Image
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    image = tmp_path / "image.png"
    PIL.Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(image)
    env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"}
    for case in ("id2label-list", "depths-2.0"):
        hub = _hub_with(tiny_hub, tmp_path / case, BAD_CONFIGS[case][0])
        result = subprocess.run([sys.executable, "-m", "segformer_jax.predict", "--checkpoint",
                                 str(hub), str(image), "--out", str(tmp_path / "out")],
                                capture_output=True, text=True, env=env, timeout=300)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"error: {hub / 'config.json'}: ")
        assert re.search(BAD_CONFIGS[case][1], lines[0]), lines[0]
        assert not (tmp_path / "out").exists()
