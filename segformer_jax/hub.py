"""Hub weights in and out: transformers checkpoints, NVlabs checkpoints, our Flax variables.

The one source of truth is ``hub_layout``: for a config and a task it lists every tensor
of the transformers checkpoint with its Hub (v4, on-disk) name, the path of the matching
Flax variable and how the array is laid out on each side. Loading and saving are both read
off that list, and so are the "missing", "unexpected" and "shape" errors.

Accepted on input, all normalised to the Hub v4 names first:
* Hub v4 names (``segformer.encoder.block.0.0.attention.self.query.weight``), what
  ``save_pretrained`` writes and what the ``nvidia/*`` repositories hold;
* transformers 5 in-memory names (``segformer.stages.0.blocks.0.attention.q_proj.weight``);
* the NVlabs originals: ``mit_bX.pth`` backbones and ``segformer.bX.*.pth`` mmseg models.

No torch at run time: safetensors are read with ``safetensors.numpy``; ``.bin``/``.pth``
files (torch's zip format) with a restricted unpickler that builds numpy arrays and refuses
every class that is not a tensor, a storage or a plain container.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
import pickle
import re
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from segformer_jax.config import SegformerConfig
from segformer_jax.constants import CLASSIFY, SEMSEG
from segformer_jax.errors import CheckpointError, ConfigError
from segformer_jax.models.segformer import TASKS, init_head_variables

log = logging.getLogger(__name__)

ARCHITECTURES = {SEMSEG: "SegformerForSemanticSegmentation",
                 CLASSIFY: "SegformerForImageClassification"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What ``from_pretrained`` did not take from the checkpoint as it was.

    ``dropped``: checkpoint tensors the model has no use for (another task's head, or a
    classifier of another label count); ``initialised``: model tensors made fresh from the
    seed because the checkpoint lacks them; ``inflated``: the first patch embedding's RGB
    kernel adapted to ``num_channels`` bands (``segformer_jax.inflate``). Hub names all
    three. A model whose task head is in ``initialised`` predicts from random weights until
    it is fine-tuned.
    """

    dropped: tuple[str, ...] = ()
    initialised: tuple[str, ...] = ()
    inflated: tuple[str, ...] = ()  # RGB tensors adapted to the model's input bands


# --------------------------------------------------------------------------------------
# Layouts: torch array <-> Flax array


def _linear(w: np.ndarray) -> np.ndarray:   # torch Linear (out, in) <-> Dense (in, out)
    return w.T


def _conv_in(w: np.ndarray) -> np.ndarray:   # Conv2d OIHW -> HWIO
    return w.transpose(2, 3, 1, 0)


def _conv_out(w: np.ndarray) -> np.ndarray:  # HWIO -> OIHW
    return w.transpose(3, 2, 0, 1)


def _dw_in(w: np.ndarray) -> np.ndarray:     # depthwise (F, 1, 3, 3) -> (3, 3, F)
    return w[:, 0].transpose(1, 2, 0)


def _dw_out(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 0, 1)[:, None]


def _pointwise_in(w: np.ndarray) -> np.ndarray:   # 1×1 conv (O, I, 1, 1) -> matrix (I, O)
    return w[:, :, 0, 0].T


def _pointwise_out(w: np.ndarray) -> np.ndarray:
    return w.T[:, :, None, None]


def _same(w: np.ndarray) -> np.ndarray:
    return w


# name: (torch -> flax, flax -> torch)
LAYOUTS: dict[str, tuple[Callable, Callable]] = {
    "linear": (_linear, _linear),
    "conv": (_conv_in, _conv_out),
    "depthwise": (_dw_in, _dw_out),
    "pointwise": (_pointwise_in, _pointwise_out),
    "vector": (_same, _same),
}


@dataclasses.dataclass(frozen=True)
class HubTensor:
    """One tensor of a transformers SegFormer checkpoint and where it lives in Flax."""

    key: str                   # Hub v4 name without the 'segformer.' prefix
    path: tuple[str, ...]      # (collection, module, ..., leaf) in the Flax variables
    layout: str                # a key of LAYOUTS

    @property
    def head(self) -> bool:
        return not self.key.startswith("encoder.")


def _module(prefix: str, path: tuple[str, ...], kind: str, bias: bool = True) -> list[HubTensor]:
    """weight (+ bias) of a Linear/Conv2d/LayerNorm named ``prefix`` at Flax ``path``."""
    if kind == "norm":
        return [HubTensor(f"{prefix}.weight", ("params", *path, "scale"), "vector"),
                HubTensor(f"{prefix}.bias", ("params", *path, "bias"), "vector")]
    out = [HubTensor(f"{prefix}.weight", ("params", *path, "kernel"), kind)]
    if bias:
        out.append(HubTensor(f"{prefix}.bias", ("params", *path, "bias"), "vector"))
    return out


def hub_layout(config: SegformerConfig, task: str = SEMSEG) -> list[HubTensor]:
    """Every tensor of the transformers model for ``task``, in checkpoint order."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    out: list[HubTensor] = []
    enc = ("encoder",)
    for i, depth in enumerate(config.depths):
        pe = f"encoder.patch_embeddings.{i}"
        out += _module(f"{pe}.proj", (*enc, f"patch_embeddings_{i}", "proj"), "conv")
        out += _module(f"{pe}.layer_norm", (*enc, f"patch_embeddings_{i}", "layer_norm"), "norm")
        for j in range(depth):
            b, fb = f"encoder.block.{i}.{j}", (*enc, f"block_{i}_{j}")
            att, fatt = f"{b}.attention", (*fb, "attention")
            out += _module(f"{b}.layer_norm_1", (*fb, "layer_norm_1"), "norm")
            for name in ("query", "key", "value"):
                out += _module(f"{att}.self.{name}", (*fatt, name), "linear")
            if config.sr_ratios[i] > 1:
                out += _module(f"{att}.self.sr", (*fatt, "sr"), "conv")
                out += _module(f"{att}.self.layer_norm", (*fatt, "layer_norm"), "norm")
            out += _module(f"{att}.output.dense", (*fatt, "output"), "linear")
            out += _module(f"{b}.layer_norm_2", (*fb, "layer_norm_2"), "norm")
            out += _module(f"{b}.mlp.dense1", (*fb, "mlp", "dense1"), "linear")
            if config.mix_ffn_conv:  # False: our ablation without the conv (no Hub form)
                out += [HubTensor(f"{b}.mlp.dwconv.dwconv.weight",
                                  ("params", *fb, "mlp", "dwconv_kernel"), "depthwise"),
                        HubTensor(f"{b}.mlp.dwconv.dwconv.bias", ("params", *fb, "mlp", "dwconv_bias"),
                                  "vector")]
            out += _module(f"{b}.mlp.dense2", (*fb, "mlp", "dense2"), "linear")
        out += _module(f"encoder.layer_norm.{i}", (*enc, f"layer_norm_{i}"), "norm")
    if task == CLASSIFY:
        return out + _module("classifier", ("classifier",), "linear")
    head = ("decode_head",)
    for i in range(config.num_encoder_blocks):
        out += [HubTensor(f"decode_head.linear_c.{i}.proj.weight",
                          ("params", *head, f"linear_c_{i}_kernel"), "linear"),
                HubTensor(f"decode_head.linear_c.{i}.proj.bias",
                          ("params", *head, f"linear_c_{i}_bias"), "vector")]
    out += [HubTensor("decode_head.linear_fuse.weight", ("params", *head, "linear_fuse"), "pointwise")]
    out += _module("decode_head.batch_norm", (*head, "batch_norm"), "norm")
    out += [HubTensor("decode_head.batch_norm.running_mean",
                      ("batch_stats", *head, "batch_norm", "mean"), "vector"),
            HubTensor("decode_head.batch_norm.running_var",
                      ("batch_stats", *head, "batch_norm", "var"), "vector")]
    return out + _module("decode_head.classifier", (*head, "classifier"), "pointwise")


def _label_dependent(t: HubTensor) -> bool:
    return t.key.startswith(("classifier.", "decode_head.classifier."))


# --------------------------------------------------------------------------------------
# Key names: transformers 5 in-memory and NVlabs originals -> Hub v4

_V5_RULES = [
    (r"^(?:segformer\.)?(?:encoder\.)?stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
    (r"^(?:segformer\.)?(?:encoder\.)?stages\.(\d+)\.blocks\.(\d+)\.", r"encoder.block.\1.\2."),
    (r"^(?:segformer\.)?(?:encoder\.)?stages\.(\d+)\.layer_norm\.", r"encoder.layer_norm.\1."),
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attention.self.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attention.self.layer_norm."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.layernorm_before\.", ".layer_norm_1."),
    (r"\.layernorm_after\.", ".layer_norm_2."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."),
    (r"\.mlp\.fc2\.", ".mlp.dense2."),
    (r"^decode_head\.linear_projections\.", "decode_head.linear_c."),
]

_NV_ENCODER_RULES = [
    (r"^patch_embed(\d)\.proj\.", lambda m: f"patch_embeddings.{int(m[1]) - 1}.proj."),
    (r"^patch_embed(\d)\.norm\.", lambda m: f"patch_embeddings.{int(m[1]) - 1}.layer_norm."),
    (r"^block(\d)\.(\d+)\.", lambda m: f"block.{int(m[1]) - 1}.{m[2]}."),
    (r"^norm(\d)\.", lambda m: f"layer_norm.{int(m[1]) - 1}."),
    (r"\.norm1\.", ".layer_norm_1."),
    (r"\.norm2\.", ".layer_norm_2."),
    (r"\.attn\.q\.", ".attention.self.query."),
    (r"\.attn\.sr\.", ".attention.self.sr."),
    (r"\.attn\.norm\.", ".attention.self.layer_norm."),
    (r"\.attn\.proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."),
    (r"\.mlp\.fc2\.", ".mlp.dense2."),
]

_NV_HEAD_RULES = [
    (r"^linear_c(\d)\.", lambda m: f"linear_c.{int(m[1]) - 1}."),
    (r"^linear_fuse\.conv\.", "linear_fuse."),
    (r"^linear_fuse\.bn\.", "batch_norm."),
    (r"^linear_pred\.", "classifier."),
]


def _apply(rules: list, key: str) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _is_nvlabs(keys: list[str]) -> bool:
    return any(re.match(r"^(backbone\.)?(patch_embed\d|block\d)\.", k) for k in keys)


def _from_nvlabs(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """NVlabs names (mmseg/models/backbones/mix_transformer.py, SegFormerHead) -> Hub v4 names."""
    out: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        if key.startswith("decode_head."):
            rest = key.removeprefix("decode_head.")
            if rest.startswith("conv_seg."):  # unused by SegFormerHead (BaseDecodeHead leftover)
                continue
            out["decode_head." + _apply(_NV_HEAD_RULES, rest)] = value
            continue
        rest = key.removeprefix("backbone.")
        if rest.startswith("head."):  # ImageNet classifier of mit_bX.pth
            out["classifier." + rest.removeprefix("head.")] = value
            continue
        m = re.match(r"^(block\d\.\d+)\.attn\.kv\.(weight|bias)$", rest)
        if m:  # one kv Linear (2C outputs) -> key (first C) and value (last C)
            prefix = "encoder." + _apply(_NV_ENCODER_RULES, m[1] + ".")
            half = value.shape[0] // 2
            out[f"{prefix}attention.self.key.{m[2]}"] = value[:half]
            out[f"{prefix}attention.self.value.{m[2]}"] = value[half:]
            continue
        out["encoder." + _apply(_NV_ENCODER_RULES, rest)] = value
    return out


def canonical_names(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Any accepted naming -> Hub v4 names without the ``segformer.`` prefix."""
    if _is_nvlabs(list(tensors)):
        tensors = _from_nvlabs(tensors)
    out = {}
    for key, value in tensors.items():
        key = _apply(_V5_RULES, key).removeprefix("segformer.")
        if key.endswith("num_batches_tracked"):
            continue
        out[key] = value
    return out


# --------------------------------------------------------------------------------------
# Reading weight files


def _torch_dtypes() -> dict[str, np.dtype]:
    return {"FloatStorage": np.dtype(np.float32), "DoubleStorage": np.dtype(np.float64),
            "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
            "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32),
            "ShortStorage": np.dtype(np.int16), "CharStorage": np.dtype(np.int8),
            "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_)}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    # as_strided does no bounds check: a malformed file must not read outside its storage.
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(n > 0 for n in size) else offset
    if offset < 0 or any(n < 0 for n in size) or any(s < 0 for s in stride) or last >= max(len(storage), 1):
        raise CheckpointError(f"tensor of size {tuple(size)} and stride {tuple(stride)} at offset "
                              f"{offset} does not fit its storage of {len(storage)} elements")
    if not size:
        return storage[offset:offset + 1].reshape(()).copy()
    item = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * item for s in stride)).copy()


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles torch's ``data.pkl`` into numpy arrays; refuses any other class."""

    _ALLOWED = {("collections", "OrderedDict"): OrderedDict,
                ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
                ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
                ("builtins", "tuple"): tuple, ("builtins", "list"): list,
                ("builtins", "dict"): dict}

    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(file)
        self._archive, self._prefix, self._source = archive, prefix, source

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _torch_dtypes():
            return _StorageType(_torch_dtypes()[name])
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise CheckpointError(f"{self._source}: refusing to unpickle {module}.{name}; only tensors "
                              "and plain containers are read from weight files")

    def persistent_load(self, pid: Any) -> np.ndarray:
        _, storage_type, key, _location, _numel = pid
        raw = self._archive.read(f"{self._prefix}/data/{key}")
        return np.frombuffer(raw, dtype=storage_type.dtype)


def read_torch_file(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a ``torch.save`` file (zip format) into numpy arrays without torch."""
    path = str(path)
    if not zipfile.is_zipfile(path):
        try:
            import torch  # the legacy (pre-1.6) format needs torch itself; still no code run.
        except ImportError:
            raise CheckpointError(f"{path}: legacy torch format (not a zip archive); install torch "
                                  "to read it, or convert it to safetensors") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
            raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({e})") from None
        return _to_numpy(obj)
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if not pkl:
            raise CheckpointError(f"{path}: zip archive without data.pkl, not a torch checkpoint")
        prefix = pkl[0][: -len("/data.pkl")]
        with archive.open(pkl[0]) as f:
            try:
                return _SafeUnpickler(f, archive, prefix, path).load()
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - a damaged pickle raises anything
                raise CheckpointError(f"{path}: damaged torch checkpoint ({type(e).__name__}: {e})") from None


def _to_numpy(obj: Any) -> Any:
    if hasattr(obj, "detach"):
        return obj.detach().float().numpy() if str(obj.dtype) == "torch.bfloat16" else obj.detach().numpy()
    if isinstance(obj, Mapping):
        return {k: _to_numpy(v) for k, v in obj.items()}
    return obj


def _state_dict(obj: Any, source: str) -> dict[str, np.ndarray]:
    """The tensors of a checkpoint object: a state dict, or mmcv's {'state_dict': …}."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}
        if tensors:
            return tensors
    raise CheckpointError(f"{source}: holds no tensors (expected a state dict)")


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of one weight file, by their names in the file."""
    path = pathlib.Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    return _state_dict(read_torch_file(path), str(path))


def find_weight_file(path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    if (path / "model.safetensors.index.json").exists():
        raise CheckpointError(f"{path}: sharded safetensors checkpoints are not supported; "
                              "save with a larger max_shard_size")
    pths = sorted(path.glob("*.pth")) + sorted(path.glob("*.pt"))
    if len(pths) == 1:
        return pths[0]
    raise CheckpointError(f"{path}: no weights found (looked for {', '.join(WEIGHT_FILES)} "
                          f"or a single *.pth file); the directory holds "
                          f"{sorted(p.name for p in path.iterdir())[:10]}")


# --------------------------------------------------------------------------------------
# Config from tensors (NVlabs files come without config.json)


def infer_config(tensors: Mapping[str, np.ndarray], **overrides: Any) -> SegformerConfig:
    """The architecture of canonical-named ``tensors``: sizes, depths, sr ratios, head width.

    Attention heads and strides are not visible in the weights; the paper's (shared by all
    six variants) are assumed.
    """
    stages = sorted({int(m[1]) for k in tensors if (m := re.match(r"encoder\.patch_embeddings\.(\d+)\.", k))})
    if not stages:
        raise CheckpointError("no MiT encoder tensors (encoder.patch_embeddings.*) in the checkpoint")
    proj = [tensors[f"encoder.patch_embeddings.{i}.proj.weight"] for i in stages]
    depths = [len({m[1] for k in tensors if (m := re.match(rf"encoder\.block\.{i}\.(\d+)\.", k))})
              for i in stages]
    srs = [tensors[f"encoder.block.{i}.0.attention.self.sr.weight"].shape[-1]
           if f"encoder.block.{i}.0.attention.self.sr.weight" in tensors else 1 for i in stages]
    mlp = [tensors[f"encoder.block.{i}.0.mlp.dense1.weight"].shape[0] // p.shape[0]
           for i, p in zip(stages, proj)]
    kwargs: dict[str, Any] = dict(
        num_encoder_blocks=len(stages), num_channels=proj[0].shape[1],
        hidden_sizes=[p.shape[0] for p in proj], patch_sizes=[p.shape[-1] for p in proj],
        depths=depths, sr_ratios=srs, mlp_ratios=mlp)
    if "decode_head.linear_c.0.proj.weight" in tensors:
        kwargs["decoder_hidden_size"] = tensors["decode_head.linear_c.0.proj.weight"].shape[0]
    for key in ("decode_head.classifier.weight", "classifier.weight"):
        if key in tensors:
            kwargs["num_labels"] = tensors[key].shape[0]
            break
    kwargs.update(overrides)
    return SegformerConfig(**kwargs)


# --------------------------------------------------------------------------------------
# from_pretrained / save_pretrained


def _infer_task(tensors: Mapping[str, np.ndarray], architectures: list[str]) -> str:
    if any(k.startswith("decode_head.") for k in tensors):
        return SEMSEG
    if any(k.startswith("classifier.") for k in tensors):
        return CLASSIFY
    return CLASSIFY if "SegformerForImageClassification" in architectures else SEMSEG


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def _read_config_json(directory: pathlib.Path) -> tuple[dict[str, Any] | None, list[str]]:
    import json
    file = directory / "config.json"
    if not file.is_file():
        return None, []
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a JSON object")
    return data, list(data.get("architectures") or [])


def from_pretrained(path: str | os.PathLike, *, task: str | None = None,
                    num_labels: int | None = None, id2label: Mapping[int, str] | None = None,
                    seed: int = 0, num_channels: int | None = None, report: bool = False) -> Any:
    """Reads a local checkpoint into ``(config, variables)`` for ``TASKS[task]``.

    ``path`` is a Hub-layout directory (config.json + model.safetensors or pytorch_model.bin),
    a directory with one NVlabs ``*.pth``, or a weight file. ``task`` defaults to the head the
    checkpoint has. Tensors of a head the checkpoint lacks are freshly initialised (``seed``);
    a ``num_labels`` (or ``id2label``) different from the checkpoint's re-initialises the
    classifier, like transformers' ``ignore_mismatched_sizes=True``; every tensor dropped or
    initialised is logged by name. ``num_channels`` other than the checkpoint's (3) inflates
    the first patch embedding's kernel (``inflate.inflate_input_kernel``, logged and
    reported); nothing else depends on the input bands. ``report=True`` returns ``(config, variables, LoadReport)``
    so that a caller can act on what was dropped and initialised.
    """
    weight_file = find_weight_file(path)
    directory = weight_file.parent
    tensors = canonical_names(read_weights(weight_file))
    config_data, architectures = _read_config_json(directory)
    task = task or _infer_task(tensors, architectures)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    if config_data is not None:
        config = SegformerConfig.from_dict(config_data, source=str(directory / "config.json"))
    else:
        config = infer_config(tensors)
    if id2label is not None:
        config = config.replace(num_labels=len(id2label), id2label=id2label)
    elif num_labels is not None and num_labels != config.num_labels:
        config = config.replace(num_labels=num_labels)
    relabelled = config.num_labels != _checkpoint_labels(tensors, task, config.num_labels)
    first_kernel = "encoder.patch_embeddings.0.proj.weight"
    inflate = num_channels is not None and num_channels != config.num_channels
    if inflate:
        config = config.replace(num_channels=num_channels)

    layout = hub_layout(config, task)
    expected = {t.key for t in layout}
    head_prefixes = ("decode_head.", "classifier.")
    other_head = [k for k in tensors if k not in expected and k.startswith(head_prefixes)]
    unexpected = [k for k in tensors if k not in expected and not k.startswith(head_prefixes)]
    missing_encoder = [t.key for t in layout if not t.head and t.key not in tensors]
    if unexpected or missing_encoder:
        raise CheckpointError(
            f"{weight_file}: does not match the configured {config_summary(config)}:\n"
            + (f"  missing tensors: {_names(missing_encoder)}\n" if missing_encoder else "")
            + (f"  unexpected tensors: {_names(unexpected)}\n" if unexpected else ""))

    fresh: dict[str, Any] | None = None
    variables: dict[str, Any] = {}
    initialised: list[str] = []
    for t in layout:
        to_flax = LAYOUTS[t.layout][0]
        value = tensors.get(t.key)
        if value is not None and relabelled and _label_dependent(t):
            other_head.append(t.key)
            value = None
        if value is None:
            if not t.head:
                raise AssertionError(t.key)  # ruled out above
            fresh = fresh if fresh is not None else init_head_variables(config, task, seed)
            _set(variables, t.path, np.asarray(_get(fresh, t.path)))
            initialised.append(t.key)
            continue
        if inflate and t.key == first_kernel:
            from segformer_jax.inflate import inflate_input_kernel
            value = LAYOUTS[t.layout][1](inflate_input_kernel(
                to_flax(value.astype(np.float32)), num_channels, f"{weight_file}: {t.key}"))
        expected_shape = LAYOUTS[t.layout][1](np.asarray(_get(_shapes(config, task), t.path))).shape
        if tuple(value.shape) != tuple(expected_shape):
            raise CheckpointError(f"{weight_file}: tensor {t.key} has shape {tuple(value.shape)}, "
                                  f"expected {tuple(expected_shape)} for {config_summary(config)}")
        _set(variables, t.path, np.ascontiguousarray(to_flax(value.astype(np.float32))))
    if other_head:
        log.warning("%s: dropped %d tensors the %s model has no use for: %s",
                    weight_file, len(other_head), task, _names(sorted(other_head)))
    if initialised:
        log.warning("%s: freshly initialised %d tensors (seed %d): %s",
                    weight_file, len(initialised), seed, _names(initialised))
    inflated = (first_kernel,) if inflate else ()
    if inflate:
        from segformer_jax.inflate import RULE
        log.warning("%s: %s inflated from 3 to %d input channels (%s)", weight_file, first_kernel,
                    num_channels, RULE)
    variables = jax.tree.map(jnp.asarray, variables)
    if report:
        return config, variables, LoadReport(tuple(sorted(other_head)), tuple(initialised), inflated)
    return config, variables


def _checkpoint_labels(tensors: Mapping[str, np.ndarray], task: str, default: int) -> int:
    key = "decode_head.classifier.weight" if task == SEMSEG else "classifier.weight"
    return tensors[key].shape[0] if key in tensors else default


@functools.lru_cache(maxsize=8)
def _shapes(config: SegformerConfig, task: str) -> dict[str, Any]:
    """Shapes of the Flax variables, as placeholder arrays (via ``jax.eval_shape``, no FLOPs)."""
    abstract = jax.eval_shape(lambda: TASKS[task](config).init(
        jax.random.key(0), jnp.zeros((1, 64, 64, config.num_channels))))
    return jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s.shape), abstract)


def _names(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def config_summary(config: SegformerConfig) -> str:
    return (f"SegFormer (hidden_sizes={list(config.hidden_sizes)}, depths={list(config.depths)}, "
            f"decoder_hidden_size={config.decoder_hidden_size}, num_labels={config.num_labels})")


def task_of(variables: Mapping[str, Any]) -> str:
    params = variables.get("params", variables)
    if "decode_head" in params:
        return SEMSEG
    if "classifier" in params:
        return CLASSIFY
    raise CheckpointError("variables have neither a decode_head nor a classifier: not a SegFormer "
                          f"model's variables (top-level params: {sorted(params)[:8]})")


def to_hub_tensors(config: SegformerConfig, variables: Mapping[str, Any],
                   task: str | None = None) -> dict[str, np.ndarray]:
    """The transformers state dict (Hub v4 names, torch layouts) of Flax ``variables``."""
    if not config.mix_ffn_conv:
        raise CheckpointError("this model has mix_ffn_conv=False (Mix-FFN without its 3x3 "
                              "depthwise conv, a segformer_jax ablation); transformers cannot "
                              "represent it, so it has no Hub export")
    task = task or task_of(variables)
    out: dict[str, np.ndarray] = {}
    for t in hub_layout(config, task):
        try:
            value = np.asarray(jax.device_get(_get(variables, t.path)), dtype=np.float32)
        except KeyError:
            raise CheckpointError(f"variables lack {'/'.join(t.path)} (for {t.key}) of "
                                  f"{config_summary(config)}") from None
        key = t.key if t.head else "segformer." + t.key
        out[key] = np.ascontiguousarray(LAYOUTS[t.layout][1](value))
    if task == SEMSEG:  # transformers refuses a (1,)-shaped counter: it must be 0-d int64.
        out["decode_head.batch_norm.num_batches_tracked"] = np.zeros((), np.int64)
    return out


def save_pretrained(path: str | os.PathLike, config: SegformerConfig, variables: Mapping[str, Any],
                    task: str | None = None) -> pathlib.Path:
    """Writes config.json + model.safetensors that transformers' ``from_pretrained`` loads.

    Files are written to temporaries and renamed into place, so an error midway leaves any
    checkpoint already in ``path`` intact.
    """
    from safetensors.numpy import save_file
    task = task or task_of(variables)
    tensors = to_hub_tensors(config, variables, task)
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path, prefix=".tmp-") as tmp:
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        config.to_json_file(os.path.join(tmp, "config.json"), ARCHITECTURES[task])
        os.replace(os.path.join(tmp, "model.safetensors"), path / "model.safetensors")
        os.replace(os.path.join(tmp, "config.json"), path / "config.json")
    return path
