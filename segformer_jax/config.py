"""SegformerConfig: the hyper-parameters that change the network, and the Hub ``config.json``.

The field names and defaults are those of ``transformers.SegformerConfig`` so that a Hub
``config.json`` reads and writes without translation. The config is a frozen, hashable
dataclass: it can be a Flax module attribute and a static argument of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from collections.abc import Mapping
from typing import Any

from flax.core import FrozenDict

from segformer_jax.constants import IGNORE_INDEX
from segformer_jax.errors import ConfigError

# The six MiT variants of the paper (Xie et al. 2021, Table 1 / NVlabs ``mit_bX``).
# Everything not listed (heads 1,2,5,8; sr 8,4,2,1; patches 7,3,3,3; strides 4,2,2,2;
# mlp ratio 4) is shared by all variants and is the dataclass default.
VARIANTS: dict[str, dict[str, Any]] = {
    "b0": dict(hidden_sizes=(32, 64, 160, 256), depths=(2, 2, 2, 2), decoder_hidden_size=256),
    "b1": dict(hidden_sizes=(64, 128, 320, 512), depths=(2, 2, 2, 2), decoder_hidden_size=256),
    "b2": dict(hidden_sizes=(64, 128, 320, 512), depths=(3, 4, 6, 3), decoder_hidden_size=768),
    "b3": dict(hidden_sizes=(64, 128, 320, 512), depths=(3, 4, 18, 3), decoder_hidden_size=768),
    "b4": dict(hidden_sizes=(64, 128, 320, 512), depths=(3, 8, 27, 3), decoder_hidden_size=768),
    "b5": dict(hidden_sizes=(64, 128, 320, 512), depths=(3, 6, 40, 3), decoder_hidden_size=768),
}

_PER_STAGE = ("depths", "sr_ratios", "hidden_sizes", "patch_sizes", "strides",
              "num_attention_heads", "mlp_ratios")
_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")


@dataclasses.dataclass(frozen=True)
class SegformerConfig:
    """Architecture of a SegFormer (MiT encoder + All-MLP decode head).

    ``layer_norm_eps`` is kept for Hub round trips only: like transformers, every
    LayerNorm of the model uses eps 1e-5 whatever this field says (transformers'
    ``modeling_segformer.py`` builds every ``nn.LayerNorm`` with its default eps).

    ``mix_ffn_conv`` is a segformer_jax extension for ablations, not a transformers field:
    False drops the 3×3 depthwise conv of every Mix-FFN (a plain MLP, no positional leak).
    It is written to ``config.json`` only when False, and Hub export refuses such a model,
    because transformers cannot represent it.
    """

    num_channels: int = 3
    num_encoder_blocks: int = 4
    depths: tuple[int, ...] = (2, 2, 2, 2)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    hidden_sizes: tuple[int, ...] = (32, 64, 160, 256)
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2, 2)
    num_attention_heads: tuple[int, ...] = (1, 2, 5, 8)
    mlp_ratios: tuple[int, ...] = (4, 4, 4, 4)
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    classifier_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    drop_path_rate: float = 0.1
    layer_norm_eps: float = 1e-6
    decoder_hidden_size: int = 256
    semantic_loss_ignore_index: int = IGNORE_INDEX
    num_labels: int = 2
    id2label: Mapping[int, str] | None = None
    mix_ffn_conv: bool = True  # segformer_jax ablation switch; see the class docstring

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        for name in _PER_STAGE:
            value = getattr(self, name)
            if isinstance(value, (int, str)) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"config field {name!r} must be a list of {self.num_encoder_blocks} "
                                  f"numbers, one per stage; got {value!r}")
            if name != "mlp_ratios":  # counts and sizes: whole numbers (2.0 is taken as 2)
                if not all(float(v).is_integer() for v in value):
                    raise ConfigError(f"config field {name!r} must be whole numbers, one per "
                                      f"stage; got {list(value)!r}")
                value = [int(v) for v in value]
            set_(name, tuple(value))
            if len(value) != self.num_encoder_blocks:
                raise ConfigError(f"config field {name!r} has {len(value)} entries but "
                                  f"num_encoder_blocks is {self.num_encoder_blocks}")
            if any(v <= 0 for v in value):
                raise ConfigError(f"config field {name!r} must be positive; got {value!r}")
        for size, heads, i in zip(self.hidden_sizes, self.num_attention_heads, range(99)):
            if size % heads:
                raise ConfigError(f"stage {i}: hidden size {size} is not a multiple of its "
                                  f"{heads} attention heads (hidden_sizes / num_attention_heads)")
        if self.hidden_act not in _ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not one of {_ACTIVATIONS}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob",
                     "classifier_dropout_prob", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1); got {getattr(self, name)!r}")
        if self.num_labels < 1:
            raise ConfigError(f"num_labels must be at least 1; got {self.num_labels}")
        if not isinstance(self.mix_ffn_conv, bool):
            raise ConfigError(f"mix_ffn_conv must be true or false; got {self.mix_ffn_conv!r}")
        if self.num_channels < 1 or self.decoder_hidden_size < 1:
            raise ConfigError("num_channels and decoder_hidden_size must be positive")
        if self.id2label is None:
            labels = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        else:
            labels = {}
            for k, v in dict(self.id2label).items():
                try:
                    labels[int(k)] = str(v)
                except (TypeError, ValueError):
                    raise ConfigError(f"id2label key {k!r} is not a class id (an integer)") from None
            if sorted(labels) != list(range(self.num_labels)):
                raise ConfigError(f"id2label must have the ids 0..{self.num_labels - 1} "
                                  f"(num_labels={self.num_labels}); got ids {sorted(labels)[:10]}…")
        set_("id2label", FrozenDict(labels))

    # -- constructors -------------------------------------------------------------------

    @classmethod
    def from_variant(cls, variant: str, **overrides: Any) -> SegformerConfig:
        """The paper's MiT-``variant`` (b0…b5) with a decode head, plus ``overrides``."""
        key = variant.lower().removeprefix("mit-").removeprefix("segformer-")
        if key not in VARIANTS:
            raise ConfigError(f"unknown SegFormer variant {variant!r}; choose one of {sorted(VARIANTS)}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown SegformerConfig field(s) {sorted(unknown)}")
        if "id2label" in overrides and "num_labels" not in overrides and overrides["id2label"]:
            overrides["num_labels"] = len(overrides["id2label"])
        return cls(**{**VARIANTS[key], **overrides})

    def replace(self, **changes: Any) -> SegformerConfig:
        """A copy with ``changes``; a new ``num_labels`` without ``id2label`` resets the names."""
        if "num_labels" in changes and "id2label" not in changes \
                and changes["num_labels"] != self.num_labels:
            changes["id2label"] = None
        return dataclasses.replace(self, **changes)

    # -- Hub config.json ----------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> SegformerConfig:
        """Reads a transformers-style dict; keys this model does not use are ignored."""
        if data.get("model_type", "segformer") != "segformer":
            raise ConfigError(f"{source}: model_type is {data.get('model_type')!r}, not 'segformer'")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields and v is not None}
        for key, value in kwargs.items():
            _check_json_type(key, value, source)
        if data.get("id2label"):
            kwargs["id2label"] = _id2label(data["id2label"], source)
            kwargs["num_labels"] = len(kwargs["id2label"])
        try:
            return cls(**kwargs)
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """The transformers ``config.json`` fields (without ``architectures``), plus
        ``mix_ffn_conv`` when it is False."""
        out: dict[str, Any] = {"model_type": "segformer"}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        if self.mix_ffn_conv:  # not a transformers field: absent from Hub configs
            del out["mix_ffn_conv"]
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = {v: k for k, v in self.id2label.items()}
        return out

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> SegformerConfig:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(data, source=str(path))

    def to_json_file(self, path: str | os.PathLike, architecture: str | None = None) -> None:
        data = self.to_dict()
        if architecture:
            data["architectures"] = [architecture]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")

    # -- derived ------------------------------------------------------------------------

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in self.id2label.items()}

    def drop_path_rates(self) -> list[list[float]]:
        """Stochastic-depth rate of every block: linear from 0 to ``drop_path_rate``."""
        total = sum(self.depths)
        rates = [self.drop_path_rate * k / max(total - 1, 1) for k in range(total)]
        out, start = [], 0
        for depth in self.depths:
            out.append(rates[start:start + depth])
            start += depth
        return out


# The JSON types of transformers' SegformerConfig fields (a strict dataclass there): integers
# are JSON integers (transformers refuses 2.0 as well as 2.5, and true), floats may be
# written as integers. ``mlp_ratios`` also takes floats, because this class does (an MLP of
# ``int(hidden × ratio)`` units) and its own files must read back.
_INT_FIELDS = ("num_channels", "num_encoder_blocks", "decoder_hidden_size",
               "semantic_loss_ignore_index", "num_labels")
_FLOAT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob",
                 "initializer_range", "drop_path_rate", "layer_norm_eps")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _json(value: Any, limit: int = 80) -> str:
    """``value`` as the file writes it, cut to ``limit`` characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _check_json_type(key: str, value: Any, source: str) -> None:
    """Refuses a ``config.json`` value of another type than transformers reads, naming the
    file, the key and the value (``ConfigError``)."""
    if key in _PER_STAGE:
        fits = _is_number if key == "mlp_ratios" else _is_int
        if not isinstance(value, (list, tuple)) or not all(fits(v) for v in value):
            kind = "numbers" if key == "mlp_ratios" else "integers"
            raise ConfigError(f"{source}: config field {key!r} must be a list of {kind}, one "
                              f"per stage (as transformers reads it); got {_json(value)}")
    elif key in _INT_FIELDS and not _is_int(value):
        raise ConfigError(f"{source}: config field {key!r} must be an integer (as transformers "
                          f"reads it); got {_json(value)}")
    elif key in _FLOAT_FIELDS and not _is_number(value):
        raise ConfigError(f"{source}: config field {key!r} must be a number; got {_json(value)}")
    elif key == "hidden_act" and not isinstance(value, str):
        raise ConfigError(f"{source}: config field 'hidden_act' must be a string such as "
                          f"\"gelu\"; got {_json(value)}")


def _id2label(value: Any, source: str) -> dict[int, Any]:
    """``id2label`` of a ``config.json``: an object of class ids to names, its keys read with
    ``int()`` as transformers' ``PretrainedConfig`` reads them ("0", " 1"; not "a" or "1.0")."""
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: id2label must be an object of class ids to names, e.g. "
                          f"{{\"0\": \"road\", \"1\": \"car\"}}; got a {type(value).__name__} "
                          f"({_json(value)})")
    labels: dict[int, Any] = {}
    for key, name in value.items():
        try:
            labels[int(key)] = name
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: id2label key {_json(key)} (for {_json(name)}) "
                              "is not a class id; the keys are integers written as strings, "
                              "\"0\", \"1\", ...") from None
    return labels
