"""Exports a segmentation model to the formats deployment uses, each checked against the model.

    python -m segformer_jax.export --checkpoint PATH --format stablehlo|savedmodel|tflite|onnx
        --out DIR [--batch N|dynamic] [--size H,W|dynamic] [--with-preprocessing]
        [--no-check] [--opset 21]

``PATH`` is anything ``predict`` loads (a Hub directory or weight file, a model checkpoint,
a training workdir). What each format holds and supports:

============  =======================  ================  =================  ==================
format        file(s) in DIR           batch             height, width      runs in
============  =======================  ================  =================  ==================
stablehlo     model.stablehlo          dynamic or fixed  dynamic or fixed   ``jax.export``
savedmodel    saved_model.pb,          dynamic or fixed  dynamic or fixed   TensorFlow,
              variables/                                                    TF Serving
tflite        model.tflite             fixed             fixed              TFLite / LiteRT
onnx          model.onnx               dynamic or fixed  fixed              onnxruntime
============  =======================  ================  =================  ==================

* **stablehlo**: ``jax.export`` of the jitted forward for each of ``--platforms`` (default
  cpu, cuda and tpu, each with its own op forms: ``model_function``), weights inside,
  serialized with ``Exported.serialize``; ``jax.export.deserialize(open(f, "rb").read()).call(x)`` runs it
  with nothing from this package. Dynamic sizes are symbolic dimensions with the
  constraint height, width >= 32 (the smallest input whose first stage still has a key and
  value after its 8 × 8 sequence reduction); any size from 32 up, not only multiples of 32.
  Called with a smaller image, the bare artefact only says "Error refining shapes", so
  ``export.json`` records the rule (``input.min_size``, ``input.size_rule``) and
  ``load_runner`` refuses such an input with a message that states it.
* **savedmodel**: ``jax2tf`` (native serialization: the same StableHLO inside an
  ``XlaCallModule`` op), weights as ``tf.Variable``s; signature ``serving_default``.
* **tflite**: the TFLite converter on a fixed-shape SavedModel (it lowers the StableHLO to
  TFLite builtins; it has no symbolic dimensions, so batch and size are fixed).
* **onnx**: ``jax2onnx``, opset ``--opset`` (default 21); batch may be dynamic, height and
  width are fixed (jax2onnx cannot carry symbolic spatial sizes through the resize).

Without ``--with-preprocessing`` the function is the model: float32 NHWC ``pixel_values``
(normalised) in, float32 ``logits`` at 1/4 of the input resolution out. With it, a serving
endpoint: uint8 RGB ``images`` (N, h, w, 3) in, int32 class-id ``masks`` (N, h, w) out.
Inside, the image is scaled to [0, 1], resized to ``--size`` when the size is fixed and the
format lets the image size vary (stablehlo, savedmodel; bilinear as torch's
``align_corners=False``, without antialiasing), normalised with the ImageNet mean and std,
segmented, and the logits are resized to (h, w) before the argmax (threshold 0 for a
one-channel binary model). With ``--size dynamic`` the model runs at the image's own
resolution. Formats with a fixed size take images of exactly that size.

``DIR/export.json`` describes the artefact for a server: the input's name, dtype, shape
(``null`` where dynamic) and ``min_size`` ([height, width]: 32 where the model sees the
image's own size, 1 where the image is resized to a fixed ``--size`` first, the fixed size
otherwise) with ``size_rule`` in words, the output, the labels and the normalisation.
``load_runner(format, DIR)`` runs an artefact and checks each input against it first
(rank, bands, dtype, fixed sizes, the minimum): one ``InputError`` naming what is wrong.

The parity gate (``--check``, on by default) runs the written file in its own runtime on
random inputs, odd sizes among them where the size is dynamic (97 × 45 and 64 × 80), and
compares with the jitted Flax function on the same inputs: logits within ``LOGIT_TOLERANCE``
(1e-4), masks identical. The figures go to the terminal and to ``DIR/export.json``; when
the gate fails, nothing is left in ``DIR`` and the exit status is 1. An existing non-empty
``DIR`` is refused, so an earlier export is never overwritten.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from segformer_jax.config import SegformerConfig
from segformer_jax.constants import IMAGENET_MEAN, IMAGENET_STD
from segformer_jax.errors import InputError, SegformerError

# Max |exported - Flax| on logits the gate accepts. The runtimes compute the same float32
# graph with their own kernels and fusions; measured differences are 1e-7 to 1e-6 on logits
# of size 1-10, so 1e-4 is two orders above rounding and far below any real mistake (a
# wrong resize tap or normalisation moves logits by 1e-2 and more).
LOGIT_TOLERANCE = 1e-4
# The smallest dynamic height and width: the first stage's 8 × 8 sequence reduction needs a
# feature map of at least 8 (input 29 and up); 32 is the network's stride.
MIN_DYNAMIC_SIZE = 32
# Sizes the gate tries where height and width are dynamic: odd, non-square, and not
# multiples of 32, so the resize taps are computed for sizes the export never saw.
CHECK_SIZES = ((97, 45), (64, 80))
DEFAULT_OPSET = 21
DEFAULT_FIXED_SIZE = (512, 512)


@dataclasses.dataclass(frozen=True)
class Format:
    name: str
    file: str                 # the artefact inside DIR ("" for a SavedModel: DIR itself)
    dynamic_batch: bool
    dynamic_size: bool
    needs: tuple[str, ...]    # importable modules it needs beyond the core requirements
    extra: str                # the pip extra that installs them
    platforms: tuple[str, ...] = ("cpu",)   # what its artefact can hold; the default for --platforms


# jax.export's platform names; each gets its own forms (models/ops.py FORM_SETS).
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("stablehlo", "model.stablehlo", True, True, (), "", ("cpu", "cuda", "tpu")),
    Format("savedmodel", "", True, True, ("tensorflow",), ""),
    Format("tflite", "model.tflite", False, False, ("tensorflow",), ""),
    Format("onnx", "model.onnx", True, False, ("jax2onnx", "onnxruntime"), "export"),
)}


@dataclasses.dataclass(frozen=True)
class Signature:
    """What the exported function takes: ``batch``/``size`` None means dynamic."""
    batch: int | None
    size: tuple[int, int] | None
    with_preprocessing: bool
    channels: int = 3
    platforms: tuple[str, ...] = ("cpu",)   # jax.export's platforms, each with its own forms

    def image_dims_dynamic(self, fmt: Format) -> bool:
        """Whether the input's height and width are symbolic: a dynamic size, or a fixed
        model size behind a resize in a format that lets the image size vary."""
        return self.size is None or (self.with_preprocessing and fmt.dynamic_size)

    def input_spec(self, fmt: Format) -> tuple[str, ...]:
        """The input shape as jax.export's symbolic spec parts ("b", "h", "w" or numbers)."""
        batch = "b" if self.batch is None else str(self.batch)
        if self.image_dims_dynamic(fmt):
            return batch, "h", "w", str(self.channels)
        return batch, str(self.size[0]), str(self.size[1]), str(self.channels)

    def constraints(self, fmt: Format) -> tuple[str, ...]:
        """Symbolic-dimension constraints: the model needs h, w >= MIN_DYNAMIC_SIZE when it
        sees the image's own size (not when the image is resized to a fixed size first)."""
        if self.image_dims_dynamic(fmt) and self.size is None:
            return (f"h >= {MIN_DYNAMIC_SIZE}", f"w >= {MIN_DYNAMIC_SIZE}")
        return ()

    def min_size(self, fmt: Format) -> tuple[int, int]:
        """The smallest (height, width) the exported function takes: the fixed size, 32
        where the model sees the image's own dynamic size, 1 behind a resize to a fixed size."""
        if not self.image_dims_dynamic(fmt):
            return self.size  # type: ignore[return-value]
        return (1, 1) if self.size is not None else (MIN_DYNAMIC_SIZE, MIN_DYNAMIC_SIZE)

    def size_rule(self, fmt: Format) -> str:
        """``min_size`` in words, as ``export.json`` records it."""
        if not self.image_dims_dynamic(fmt):
            return f"height and width exactly {self.size[0]} x {self.size[1]}"
        if self.size is not None:
            return (f"any height and width (the image is resized to {self.size[0]} x "
                    f"{self.size[1]} inside)")
        return (f"height and width at least {MIN_DYNAMIC_SIZE} (any size from there, not only "
                f"multiples of 32)")

    @property
    def input_name(self) -> str:
        return "images" if self.with_preprocessing else "pixel_values"

    @property
    def output_name(self) -> str:
        return "masks" if self.with_preprocessing else "logits"

    @property
    def input_dtype(self) -> Any:
        return np.uint8 if self.with_preprocessing else np.float32


# --------------------------------------------------------------------------------------
# The function exported


def serving_function(config: SegformerConfig, variables: Mapping[str, Any],
                     signature: Signature) -> Callable[[Any], Any]:
    """The model as one function of its input (weights closed over), with or without the
    preprocessing of a serving endpoint (see the module doc)."""
    fn = model_function(config, signature)
    return lambda x: fn(variables, x)


def model_function(config: SegformerConfig, signature: Signature) -> Callable[[Any, Any], Any]:
    """(variables, input) -> output: ``segment_function`` or ``forward_function``, with each
    of ``signature.platforms``' own forms: the CPU set on "cpu", the XLA set on the others
    (``models/ops.py``), chosen per platform by ``jax.lax.platform_dependent`` when there
    are both (the artefact holds one program per platform; each runtime runs its own)."""
    import jax

    from segformer_jax.models.segformer import SegformerForSemanticSegmentation

    def function(forms: str) -> Callable[[Any, Any], Any]:
        apply = SegformerForSemanticSegmentation(config, forms=forms).apply
        if signature.with_preprocessing:
            return segment_function(apply, signature.size, forms)
        return forward_function(apply)

    wanted = {"cpu" if p == "cpu" else "xla" for p in signature.platforms}
    if wanted == {"cpu"}:
        return function("cpu")
    if wanted == {"xla"}:
        return function("xla")
    on_cpu, elsewhere = function("cpu"), function("xla")
    return lambda variables, x: jax.lax.platform_dependent(variables, x, cpu=on_cpu, default=elsewhere)


def forward_function(apply: Callable) -> Callable[[Any, Any], Any]:
    """(variables, float NHWC pixels) -> float32 logits: the export without preprocessing."""
    import jax.numpy as jnp
    return lambda variables, pixels: apply(variables, pixels).astype(jnp.float32)


def segment_function(apply: Callable, size: tuple[int, int] | None,
                     forms: str = "auto") -> Callable[[Any, Any], Any]:
    """(variables, uint8 (N, h, w, 3) images) -> int32 (N, h, w) class ids."""
    import jax.numpy as jnp

    from segformer_jax.models.ops import form_set, resize_bilinear
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    form = form_set(forms)["resize"]

    def segment(variables: Any, images: Any) -> Any:
        x = images.astype(jnp.float32) / np.float32(255)
        if size is not None:
            x = resize_bilinear(x, size, form)
        logits = apply(variables, (x - mean) / std).astype(jnp.float32)
        logits = resize_bilinear(logits, images.shape[1:3], form)
        if logits.shape[-1] == 1:   # a binary model's sigmoid logit: class 1 above 0
            return (logits[..., 0] > 0).astype(jnp.int32)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return segment


def abstract_input(signature: Signature, fmt: Format) -> Any:
    """The input as a ``jax.ShapeDtypeStruct``, symbolic where the signature is dynamic."""
    import jax
    from jax import export
    shape = export.symbolic_shape(", ".join(signature.input_spec(fmt)),
                                  constraints=signature.constraints(fmt))
    return jax.ShapeDtypeStruct(shape, signature.input_dtype)


# --------------------------------------------------------------------------------------
# Writers: one per format, each into a directory of its own


def _quiet_tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf.get_logger().setLevel(logging.ERROR)
    return tf


def write_stablehlo(fn: Callable, spec: Any, out: pathlib.Path,
                    platforms: Sequence[str] = ("cpu",)) -> pathlib.Path:
    import jax
    from jax import export
    exported = export.export(jax.jit(fn), platforms=tuple(platforms))(spec)
    path = out / FORMATS["stablehlo"].file
    path.write_bytes(exported.serialize())
    return path


def _tf_module(config: SegformerConfig, variables: Mapping[str, Any], signature: Signature,
               fmt: Format) -> Any:
    """A ``tf.Module`` whose ``serve`` is the jax2tf conversion, weights as variables (a
    SavedModel keeps them apart from the graph, so its size has no 2 GB protobuf limit)."""
    import jax
    from jax.experimental import jax2tf
    tf = _quiet_tensorflow()
    fn = model_function(config, signature)
    spec = signature.input_spec(fmt)
    dynamic = "b" in spec or "h" in spec
    shape = "(" + ", ".join(spec) + ")"
    converted = jax2tf.convert(fn, polymorphic_shapes=[None, shape] if dynamic else None,
                               polymorphic_constraints=signature.constraints(fmt),
                               with_gradient=False)
    module = tf.Module()
    module.variables_tree = tf.nest.map_structure(tf.Variable, jax.device_get(dict(variables)))
    tensor_spec = tf.TensorSpec([None if s in ("b", "h", "w") else int(s) for s in spec],
                                tf.as_dtype(signature.input_dtype), name=signature.input_name)

    @tf.function(autograph=False, input_signature=[tensor_spec])
    def serve(x: Any) -> Any:
        return {signature.output_name: converted(module.variables_tree, x)}

    module.serve = serve
    return module


def write_savedmodel(config: SegformerConfig, variables: Mapping[str, Any], signature: Signature,
                     out: pathlib.Path) -> pathlib.Path:
    tf = _quiet_tensorflow()
    module = _tf_module(config, variables, signature, FORMATS["savedmodel"])
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve})
    return out


def write_tflite(config: SegformerConfig, variables: Mapping[str, Any], signature: Signature,
                 out: pathlib.Path) -> pathlib.Path:
    tf = _quiet_tensorflow()
    module = _tf_module(config, variables, signature, FORMATS["tflite"])
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        blob = converter.convert()
    path = out / FORMATS["tflite"].file
    path.write_bytes(blob)
    return path


def write_onnx(fn: Callable, spec: Any, signature: Signature, out: pathlib.Path,
               opset: int) -> pathlib.Path:
    # jax2onnx logs tracebacks of plugins it skips and prints debug lines while it traces.
    logging.getLogger("jax2onnx").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        from jax2onnx import to_onnx
        model = to_onnx(fn, [spec], model_name="segformer", opset=opset,
                        input_names=[signature.input_name], output_names=[signature.output_name])
    path = out / FORMATS["onnx"].file
    path.write_bytes(model.SerializeToString())
    return path


# --------------------------------------------------------------------------------------
# Runners: an exported file run in its own runtime, numpy in, numpy out


def load_runner(fmt: str, out: str | os.PathLike,
                meta: Mapping[str, Any] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function running the artefact ``export`` wrote in ``out``, in its own runtime
    (nothing of this package's model code is used).

    Each input is checked first against ``meta`` (by default ``out/export.json``; none for
    an artefact without one): its rank, bands, dtype, fixed dimensions and ``min_size``. A
    mismatch is one ``InputError`` saying what the artefact takes, where the runtimes would
    say only "Error refining shapes" or worse.
    """
    out = pathlib.Path(out)
    if meta is None and (out / "export.json").is_file():
        try:
            meta = json.loads((out / "export.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"{out / 'export.json'}: cannot read the export's record ({e})") \
                from None
    run = _runtime(fmt, out)
    if not meta:
        return run
    where = str(out)

    def checked(x: np.ndarray) -> np.ndarray:
        check_input(meta, x, where)
        return run(x)
    return checked


def check_input(meta: Mapping[str, Any], x: Any, where: str = "the export") -> None:
    """Refuses an input the artefact described by ``meta`` (``export.json``) cannot take,
    with one ``InputError`` naming the artefact, the input's shape and the rule."""
    spec = meta.get("input") or {}
    shape = [None if s is None else int(s) for s in spec.get("shape") or []]
    x = np.asarray(x) if not hasattr(x, "shape") else x
    got = "x".join(map(str, x.shape))
    want = "x".join("?" if s is None else str(s) for s in shape)
    if len(shape) != 4:
        return
    if len(x.shape) != 4:
        raise InputError(f"{where}: an input of shape {got}; the export takes {spec.get('name')} "
                         f"of shape {want} (N, H, W, bands)")
    for axis, (size, fixed) in enumerate(zip(x.shape, shape)):
        if fixed is not None and size != fixed:
            what = ("batch", "height", "width", "band count")[axis]
            raise InputError(f"{where}: an input of shape {got}; the export takes {want}: its "
                             f"{what} is fixed at {fixed}")
    minimum = spec.get("min_size")
    if minimum is None and shape[1] is None and not meta.get("model_size"):
        minimum = (MIN_DYNAMIC_SIZE, MIN_DYNAMIC_SIZE)  # an export.json older than min_size
    if minimum is not None and (x.shape[1] < minimum[0] or x.shape[2] < minimum[1]):
        rule = spec.get("size_rule") or f"height and width at least {minimum[0]}"
        raise InputError(f"{where}: an input of {x.shape[1]} x {x.shape[2]} pixels is too small "
                         f"for this export: {rule}; resize or pad the image first")
    dtype = spec.get("dtype")
    if dtype and np.dtype(x.dtype) != np.dtype(dtype):
        raise InputError(f"{where}: an input of dtype {np.dtype(x.dtype).name}; the export takes "
                         f"{dtype}")


def _runtime(fmt: str, out: pathlib.Path) -> Callable[[np.ndarray], np.ndarray]:
    """The artefact in ``out`` as a numpy function, in its own runtime, unchecked."""
    if fmt == "stablehlo":
        from jax import export
        exported = export.deserialize(bytearray((out / FORMATS[fmt].file).read_bytes()))
        return lambda x: np.asarray(exported.call(x))
    if fmt == "savedmodel":
        tf = _quiet_tensorflow()
        serve = tf.saved_model.load(str(out)).signatures["serving_default"]
        return lambda x: next(iter(serve(tf.constant(x)).values())).numpy()
    if fmt == "tflite":
        tf = _quiet_tensorflow()
        interpreter = tf.lite.Interpreter(model_path=str(out / FORMATS[fmt].file))
        interpreter.allocate_tensors()
        (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()

        def run_tflite(x: np.ndarray) -> np.ndarray:
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            return interpreter.get_tensor(outp["index"]).copy()
        return run_tflite
    if fmt == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(str(out / FORMATS[fmt].file),
                                               providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    raise InputError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------------------
# The parity gate


def check_inputs(signature: Signature, fmt: Format, seed: int = 0) -> list[np.ndarray]:
    """Random inputs the gate runs: two batch sizes where the batch is dynamic, the odd
    ``CHECK_SIZES`` where height and width are, else the fixed shape."""
    rng = np.random.default_rng(seed)
    batches = (1, 2) if signature.batch is None else (signature.batch,) * 2
    sizes = CHECK_SIZES if signature.image_dims_dynamic(fmt) else (signature.size,) * 2
    shapes = sorted({(b, *hw, signature.channels) for b, hw in zip(batches, sizes)})
    if signature.with_preprocessing:
        return [rng.integers(0, 256, s, dtype=np.uint8) for s in shapes]
    return [rng.standard_normal(s, dtype=np.float32) for s in shapes]


def parity(reference: Callable[[np.ndarray], Any], runner: Callable[[np.ndarray], np.ndarray],
           inputs: Sequence[np.ndarray], with_preprocessing: bool) -> list[dict[str, Any]]:
    """Per input: its shape, the max abs logit difference (or the count of mask pixels that
    differ) between the runner and the reference, and whether it passes."""
    results = []
    for x in inputs:
        want = np.asarray(reference(x))
        got = np.asarray(runner(x))
        row: dict[str, Any] = {"input_shape": list(x.shape), "output_shape": list(got.shape)}
        if got.shape != want.shape:
            row.update(passed=False, error=f"output shape {got.shape}, expected {want.shape}")
        elif with_preprocessing:
            row["mismatched_pixels"] = int((got != want).sum())
            row["passed"] = row["mismatched_pixels"] == 0
        else:
            row["max_abs_diff"] = float(np.abs(got.astype(np.float32) - want).max())
            row["passed"] = row["max_abs_diff"] <= LOGIT_TOLERANCE
        results.append(row)
    return results


def describe(row: Mapping[str, Any]) -> str:
    shape = "x".join(map(str, row["input_shape"]))
    if "error" in row:
        return f"{shape}: {row['error']}"
    if "mismatched_pixels" in row:
        return f"{shape}: {row['mismatched_pixels']} of {np.prod(row['output_shape'])} mask pixels differ"
    return f"{shape}: max |logit diff| {row['max_abs_diff']:.2e} (gate {LOGIT_TOLERANCE:g})"


# --------------------------------------------------------------------------------------
# Export, end to end


def check_available(fmt: Format) -> None:
    """Raises ``InputError`` naming the extra to install when a module ``fmt`` needs is
    missing (checked before the checkpoint is read)."""
    import importlib.util
    missing = [m for m in fmt.needs if importlib.util.find_spec(m) is None]
    if missing:
        install = (f"pip install 'segformer_jax[{fmt.extra}]'" if fmt.extra
                   else f"pip install {' '.join(missing)}")
        raise InputError(f"--format {fmt.name} needs {' and '.join(missing)}, which is not "
                         f"installed; {install}")


def check_signature(fmt: Format, signature: Signature) -> None:
    """Refuses a shape the format cannot express, naming the flag."""
    if signature.batch is None and not fmt.dynamic_batch:
        raise InputError(f"--batch dynamic: {fmt.name} has a fixed batch; give --batch N")
    if signature.size is None and not fmt.dynamic_size:
        raise InputError(f"--size dynamic: {fmt.name} has a fixed height and width; give "
                         "--size H,W" + (" (its batch may be dynamic)" if fmt.dynamic_batch else ""))
    if signature.size is not None and min(signature.size) < MIN_DYNAMIC_SIZE:
        raise InputError(f"--size {signature.size[0]},{signature.size[1]}: height and width "
                         f"must be at least {MIN_DYNAMIC_SIZE}")
    if signature.with_preprocessing and signature.channels != 3:
        raise InputError(f"--with-preprocessing takes uint8 RGB images with ImageNet's "
                         f"normalisation; this model takes {signature.channels} bands: export its "
                         "logits (without the flag) and normalise the bands before calling it")


def export(config: SegformerConfig, variables: Mapping[str, Any], fmt_name: str,
           signature: Signature, out: str | os.PathLike, check: bool = True,
           opset: int = DEFAULT_OPSET, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Writes the ``fmt_name`` export into ``out`` (which must not exist or be empty) and,
    with ``check``, runs the parity gate on it. Returns what ``out/export.json`` holds;
    raises ``InputError`` (and leaves ``out`` as it was) when the gate fails."""
    import jax
    fmt = FORMATS[fmt_name]
    check_signature(fmt, signature)
    out = pathlib.Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not an empty directory; choose another --out")
    variables = jax.device_put(dict(variables))
    fn = serving_function(config, variables, signature)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if fmt_name == "stablehlo":
            write_stablehlo(fn, abstract_input(signature, fmt), staging, signature.platforms)
        elif fmt_name == "savedmodel":
            write_savedmodel(config, variables, signature, staging)
        elif fmt_name == "tflite":
            write_tflite(config, variables, signature, staging)
        else:
            write_onnx(fn, abstract_input(signature, fmt), signature, staging, opset)
        meta = metadata(config, fmt, signature, opset)
        if check:
            rows = parity(jax.jit(fn), load_runner(fmt_name, staging, meta),
                          check_inputs(signature, fmt), signature.with_preprocessing)
            meta["parity"] = rows
            for row in rows:
                log(f"parity {fmt_name} {describe(row)}: {'ok' if row['passed'] else 'FAILED'}")
            if not all(row["passed"] for row in rows):
                raise InputError(f"{fmt_name} export does not match the model "
                                 f"({'; '.join(describe(r) for r in rows if not r['passed'])}); "
                                 "nothing written")
        (staging / "export.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta


def metadata(config: SegformerConfig, fmt: Format, signature: Signature, opset: int) -> dict[str, Any]:
    """What a server needs besides the file: the input and output, the labels."""
    import jax
    shape = [None if s in ("b", "h", "w") else int(s) for s in signature.input_spec(fmt)]
    meta: dict[str, Any] = {
        "format": fmt.name, "file": fmt.file or ".",
        "input": {"name": signature.input_name, "dtype": np.dtype(signature.input_dtype).name,
                  "shape": shape, "layout": "NHWC",
                  "min_size": list(signature.min_size(fmt)), "size_rule": signature.size_rule(fmt)},
        "output": {"name": signature.output_name,
                   "dtype": "int32" if signature.with_preprocessing else "float32",
                   "shape": (shape[:3] if signature.with_preprocessing
                             else [shape[0], "ceil(H/4)", "ceil(W/4)", config.num_labels])},
        "with_preprocessing": signature.with_preprocessing,
        "platforms": list(signature.platforms),
        "model_size": list(signature.size) if signature.size else None,
        "num_labels": config.num_labels,
        "id2label": {str(k): v for k, v in sorted(config.id2label.items())},
        "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD),
        "jax_version": jax.__version__,
    }
    if fmt.name == "onnx":
        meta["opset"] = opset
    return meta


# --------------------------------------------------------------------------------------
# Command line


def _batch(text: str) -> int | str:
    if text == "dynamic":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'dynamic', got {text!r}")
    return value


def _size(text: str) -> tuple[int, int] | str:
    if text == "dynamic":
        return text
    try:
        parts = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        parts = ()
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W (e.g. 512,512) or 'dynamic', got {text!r}")
    return parts  # type: ignore[return-value]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from segformer_jax.cli import ArgumentParser
    parser = ArgumentParser(prog="python -m segformer_jax.export", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="Hub directory / weight file, model checkpoint or training workdir")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS))
    parser.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    parser.add_argument("--batch", type=_batch, metavar="N|dynamic",
                        help="batch size (default: dynamic where the format allows, else 1)")
    parser.add_argument("--size", type=_size, metavar="H,W|dynamic",
                        help="model input height,width (default: dynamic where the format "
                             "allows, else 512,512)")
    parser.add_argument("--with-preprocessing", action="store_true",
                        help="uint8 images in, class-id masks at their resolution out")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                        help="run the parity gate (default: on)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default 21)")
    parser.add_argument("--platforms", metavar="P,P,...",
                        help="the platforms the artefact holds a program for, each with its own "
                             "op forms: cpu, cuda, rocm, tpu (default: cpu,cuda,tpu for stablehlo, "
                             "cpu for the others, which run on a CPU runtime)")
    args = parser.parse_args(argv)
    fmt = FORMATS[args.format]
    platforms = tuple(p.strip() for p in (args.platforms or ",".join(fmt.platforms)).split(",") if p.strip())
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown or not platforms:
        parser.error(f"--platforms takes some of {', '.join(PLATFORMS)}; got {args.platforms!r}")
    if set(platforms) - set(fmt.platforms) - ({"rocm"} if fmt.name == "stablehlo" else set()):
        parser.error(f"--format {fmt.name} runs on a CPU runtime: --platforms cpu (stablehlo "
                     "holds programs for cpu, cuda, rocm and tpu)")
    here = {"gpu": "cuda"}.get(_host_platform(), _host_platform())
    if args.check and here not in platforms:
        parser.error(f"the parity gate runs the export here, on {here}: add {here} to --platforms, "
                     "or pass --no-check")
    args.platforms = platforms
    if args.batch is None:
        args.batch = "dynamic" if fmt.dynamic_batch else 1
    if args.size is None:
        args.size = "dynamic" if fmt.dynamic_size else DEFAULT_FIXED_SIZE
    # None from here on means dynamic, as in Signature.
    args.batch = None if args.batch == "dynamic" else args.batch
    args.size = None if args.size == "dynamic" else args.size
    if args.opset != DEFAULT_OPSET and args.format != "onnx":
        parser.error(f"--opset is for --format onnx, not {args.format}")
    return args


def _host_platform() -> str:
    import jax
    return jax.default_backend()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    fmt = FORMATS[args.format]
    try:
        check_available(fmt)
        from segformer_jax.checkpoint import load_for_inference
        config, variables = load_for_inference(args.checkpoint)
        signature = Signature(args.batch, args.size, args.with_preprocessing, config.num_channels,
                              args.platforms)
        check_signature(fmt, signature)
        meta = export(config, variables, args.format, signature, args.out, args.check, args.opset)
    except SegformerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e.filename or args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    shape = "x".join("?" if s is None else str(s) for s in meta["input"]["shape"])
    verdict = "parity checked" if args.check else "not checked (--no-check)"
    print(f"wrote {pathlib.Path(args.out) / (fmt.file or '')}: {meta['input']['name']} "
          f"{meta['input']['dtype']}[{shape}] -> {meta['output']['name']}; "
          f"{meta['input']['size_rule']}; {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
