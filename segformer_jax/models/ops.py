"""Array operations SegFormer needs, written for XLA rather than taken from a library.

* ``resize_bilinear`` equals PyTorch ``F.interpolate(mode="bilinear", align_corners=False)``
  (no antialiasing) for up- and down-sampling. ``jax.image.resize`` only agrees with it when
  called with ``antialias=False``, and it builds dense weight matrices that are slow on CPU;
  here each axis is two gathers and a lerp with indices computed once in numpy.
  Upsampling by an integer factor (the decode head's 2, 4 and 8) is the same arithmetic
  written with selects instead of gathers (``upsample_axis``), which XLA fuses into its
  consumer; its backward pass is the gathers' transpose, as below.
* ``depthwise_conv3x3`` is nine shifted multiply-adds: XLA:CPU's grouped convolution is
  about 30× slower than this fused loop.
* ``attention`` is ``jax.nn.dot_product_attention``'s forward with FlashAttention's backward.

The default resize and conv forms and the attention carry hand-written backward passes
(``jax.custom_vjp``), equal to JAX's automatic gradients to float32 rounding (tested).
Autodiff of a gather is a scatter-add, which XLA:CPU runs element by element; the resize's
transpose is again a few gathers: input index i receives from the K outputs j whose taps
touch it (K = 2·ceil(scale) for an upsampling by ``scale``), each weighted by its tap, run
as a loop over the K taps. The
shifted conv's input gradient is the same shifted conv with the kernel flipped, its kernel
gradient nine sums written as one element-wise pass over groups of rows and a reduction
(``depthwise_kernel_gradient``). (The resize's taps run in a loop because XLA fuses a
tensor's producer into each of its consumers: K unrolled gathers compute the cotangent K
times. The B0 step at 512²: 6.8 s with autodiff, 2.85 s with these and the banded loss of
``losses``.)

Each op keeps its alternative forms side by side, all equal to float32 rounding (tested):
the forms tuned for XLA:CPU (gathers, shifted adds, their loops) are not what an MXU or
tensor cores want. ``resize_bilinear(..., form="matmul")`` multiplies by two small dense
interpolation matrices; ``depthwise_conv3x3(..., form="conv")`` is
``lax.conv_general_dilated`` with ``feature_group_count`` (both at ``Precision.HIGHEST``,
to compare with the CPU forms in float32). The ``"xla"`` form of each op is the plain one
GPU and TPU compilers optimise, differentiated by JAX: no ``while`` loop, scatter or gather
in the program, and the default matmul precision (TF32/bf16 passes on tensor cores and
MXUs).

``FORM_SETS`` names the two sets, ``"cpu"`` (the forms measured fastest on XLA:CPU) and
``"xla"`` (every op's ``"xla"`` form); ``form_set("auto")`` is the CPU set on a CPU and the
XLA set on any other platform. A model or loss is given its set by name (``forms=``); a
program lowered for another platform than the host's (``lowering_platforms``, ``jax.export``)
gets the set it was built with, not the host's. ``python -m experiments.ops_benchmark``
times every form, forward and backward, on the backend it runs on.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

RESIZE_FORMS = ("gather", "matmul", "xla")
CONV_FORMS = ("shifted", "conv", "xla")
ATTENTION_FORMS = ("flash", "xla")
REDUCTION_FORMS = ("matmul", "xla")

# The form of each op in each set. "cpu": chosen by ``experiments.ops_benchmark`` and the
# training benchmark on XLA:CPU (the README's Benchmarks section keeps the figures). "xla":
# the accelerator default until a measurement on a GPU or TPU says otherwise (none has been
# made yet): plain XLA with autodiff. The loss's forms are ``losses.LOSS_FORMS``.
FORM_SETS = {"cpu": {"resize": "gather", "conv": "shifted", "attention": "flash",
                     "reduction": "matmul", "loss": "banded"},
             "xla": {"resize": "xla", "conv": "xla", "attention": "xla", "reduction": "xla",
                     "loss": "xla"}}
FORMS = ("auto", *FORM_SETS)


def form_set_name(forms: str = "auto", platform: str | None = None) -> str:
    """``forms`` ("cpu" or "xla"), or for "auto" the set of ``platform`` (default: JAX's
    default backend, the platform a run's devices are): "cpu" on a CPU, "xla" elsewhere."""
    if forms == "auto":
        forms = "cpu" if (platform or jax.default_backend()) == "cpu" else "xla"
    if forms not in FORM_SETS:
        raise ValueError(f"op forms must be one of {FORMS}; got {forms!r}")
    return forms


def form_set(forms: str = "auto", platform: str | None = None) -> dict[str, str]:
    """The form of each op in the set ``form_set_name(forms, platform)``."""
    return FORM_SETS[form_set_name(forms, platform)]


def default_form(op: str, backend: str | None = None) -> str:
    """The form ``op`` ("resize", "conv", "attention", "reduction" or "loss") takes when none is given,
    on ``backend`` (default: JAX's default backend): ``form_set("auto", backend)[op]``."""
    return form_set("auto", backend)[op]


# -- bilinear resize --------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def lerp_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's ``align_corners=False`` bilinear along one axis:
    output j = (1 - frac[j]) · x[lo[j]] + frac[j] · x[hi[j]]."""
    # float32 arithmetic, as torch's CPU kernel computes the source coordinates.
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    lo = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = (src - lo.astype(np.float32)).astype(np.float32)
    return lo, hi, frac


@functools.lru_cache(maxsize=256)
def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The (out, in) float32 matrix of ``lerp_taps``: row j holds 1 - frac at lo[j] and
    frac at hi[j] (one 1.0 where they coincide at the border)."""
    lo, hi, frac = lerp_taps(in_size, out_size)
    matrix = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lo), np.float32(1) - frac)
    np.add.at(matrix, (rows, hi), frac)
    return matrix


@functools.lru_cache(maxsize=256)
def transpose_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The transpose of ``lerp_taps`` as gathers: (in, K) output indices and weights such
    that input i's cotangent is Σ_k weight[i, k] · dy[index[i, k]].

    Each column of the interpolation matrix is non-zero on one run of outputs; K is the
    longest run, and shorter ones are padded with weight 0.
    """
    columns = interpolation_matrix(in_size, out_size).T            # (in, out)
    nonzero = columns != 0
    first = np.where(nonzero.any(1), nonzero.argmax(1), 0)
    last = np.where(nonzero.any(1), out_size - 1 - nonzero[:, ::-1].argmax(1), -1)
    k = max(int((last - first).max()) + 1, 1)
    index = np.minimum(first[:, None] + np.arange(k), out_size - 1).astype(np.int32)
    in_run = first[:, None] + np.arange(k) <= last[:, None]
    weight = np.where(in_run, np.take_along_axis(columns, index, 1), 0).astype(np.float32)
    return index, weight


def resize_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    """Resizes one axis by two gathers and a lerp (numpy or jax; no custom gradient)."""
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    xp = np if isinstance(x, np.ndarray) else jnp
    lo, hi, frac = lerp_taps(in_size, out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    frac = xp.asarray(frac.reshape(shape), dtype=x.dtype)
    a = xp.take(x, lo, axis=axis)
    b = xp.take(x, hi, axis=axis)
    return a * (1 - frac) + b * frac


def resize_axis_transpose(dy: jax.Array, axis: int, in_size: int) -> jax.Array:
    """The transpose (vector-Jacobian product) of ``resize_axis`` back to ``in_size``."""
    out_size = dy.shape[axis]
    if in_size == out_size:
        return dy
    index, weight = transpose_taps(in_size, out_size)
    # The K taps in a loop: dy enters the loop as an operand, so XLA computes it once. (As K
    # separate gathers, each fuses dy's producer and computes it again: in the decode head,
    # where dy is the BatchNorm/ReLU backward, that doubled the head's backward on XLA:CPU.)
    w_shape = [1] * dy.ndim
    w_shape[axis] = in_size

    def tap(k, dx):
        taps = jnp.take(dy, jnp.asarray(index.T)[k], axis=axis)
        return dx + taps * jnp.asarray(weight.T, dy.dtype)[k].reshape(w_shape)

    shape = list(dy.shape)
    shape[axis] = in_size
    return jax.lax.fori_loop(0, index.shape[1], tap, jnp.zeros(shape, dy.dtype))


@functools.lru_cache(maxsize=256)
def upsample_taps(in_size: int, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``lerp_taps`` of an upsampling by an integer ``factor`` as (in, factor) arrays: whether
    output (i, r) takes its low tap from input i - 1 (else i) and its high tap from i + 1
    (else i), and its frac. (Each output's taps are its own input and one neighbour.)"""
    lo, hi, frac = lerp_taps(in_size, in_size * factor)
    own = np.repeat(np.arange(in_size), factor)
    assert np.all((lo - own >= -1) & (lo <= own) & (hi >= own) & (hi - own <= 1))
    shape = (in_size, factor)
    return (lo < own).reshape(shape), (hi > own).reshape(shape), frac.reshape(shape)


def upsample_axis(x: jax.Array, axis: int, factor: int) -> jax.Array:
    """``resize_axis`` for an upsampling by an integer factor, with no gather: output (i, r)
    is (1 - frac)·x[i or i - 1] + frac·x[i or i + 1], built from x and its two shifts by one,
    the same arithmetic as the gathers (bit-equal).

    Why: the decode head upsamples by 2, 4 and 8, and there XLA:CPU fuses these selects and
    lerps into whatever consumes them (the sum of the three maps), where each gather was
    written out in full first. (The backward pass stays the gathers' transpose: autodiff of
    these selects, a reduction over r, measured 5× slower on XLA:CPU.)
    """
    take_prev, take_next, frac = upsample_taps(x.shape[axis], factor)
    n = x.shape[axis]
    first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
    prev = jnp.concatenate([first, jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis)
    nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis), last], axis)
    expand = lambda a: jnp.expand_dims(a, axis + 1)  # noqa: E731  (…, in, 1, …)
    shape = [1] * (x.ndim + 1)
    shape[axis], shape[axis + 1] = n, factor
    as_taps = lambda t: jnp.asarray(t.reshape(shape))  # noqa: E731
    frac = as_taps(frac).astype(x.dtype)
    low = jnp.where(as_taps(take_prev), expand(prev), expand(x))
    high = jnp.where(as_taps(take_next), expand(nxt), expand(x))
    out = low * (1 - frac) + high * frac
    out_shape = list(x.shape)
    out_shape[axis] = n * factor
    return out.reshape(out_shape)


def _resize_axis_primal(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    """The gather form's forward: ``upsample_axis`` for integer upsampling factors (same
    arithmetic), else the gathers."""
    in_size = x.shape[axis]
    if out_size > in_size and out_size % in_size == 0:
        return upsample_axis(x, axis, out_size // in_size)
    return resize_axis(x, axis, out_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _resize_axis_gather(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    return _resize_axis_primal(x, axis, out_size)


def _resize_axis_gather_fwd(x, axis, out_size):
    return _resize_axis_primal(x, axis, out_size), x.shape[axis]


def _resize_axis_gather_bwd(axis, out_size, in_size, dy):
    return (resize_axis_transpose(dy, axis, in_size),)


_resize_axis_gather.defvjp(_resize_axis_gather_fwd, _resize_axis_gather_bwd)


def _resize_axis_matmul(x: jax.Array, axis: int, out_size: int,
                        precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST) -> jax.Array:
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    matrix = jnp.asarray(interpolation_matrix(in_size, out_size), dtype=x.dtype)
    moved = jnp.moveaxis(x, axis, -1)
    out = jnp.matmul(moved, matrix.T, precision=precision)
    return jnp.moveaxis(out, -1, axis)


def _resize_axis_xla(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    """The accelerator form: integer upsampling as ``upsample_axis``'s selects (the decode
    head's 2, 4, 8 and the loss's 4), other sizes as the interpolation matmul at the default
    precision; JAX's gradient of either is slices, pads and a matmul: no gather, no scatter,
    no loop."""
    in_size = x.shape[axis]
    if out_size > in_size and out_size % in_size == 0:
        return upsample_axis(x, axis, out_size // in_size)
    return _resize_axis_matmul(x, axis, out_size, precision=None)


def is_static(*sizes: object) -> bool:
    """Whether every size is a plain integer, not a symbolic dimension of ``jax.export``."""
    return all(isinstance(s, (int, np.integer)) for s in sizes)


def resize_axis_symbolic(x: jax.Array, axis: int, out_size: object) -> jax.Array:
    """``resize_axis`` when a size is a symbolic dimension (a shape-polymorphic export): the
    taps of ``lerp_taps`` computed in the program, with the same float32 arithmetic, so the
    exported model resizes as the jitted one does for every size it is called with."""
    in_size = x.shape[axis]
    scale = jnp.asarray(in_size, jnp.float32) / jnp.asarray(out_size, jnp.float32)
    src = (jnp.arange(out_size, dtype=jnp.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = jnp.maximum(src, np.float32(0.0))
    last = jnp.asarray(in_size, jnp.int32) - 1
    lo = jnp.minimum(jnp.floor(src).astype(jnp.int32), last)
    hi = jnp.minimum(lo + 1, last)
    shape = [1] * x.ndim
    shape[axis] = out_size
    frac = (src - lo.astype(jnp.float32)).reshape(shape).astype(x.dtype)
    return jnp.take(x, lo, axis=axis) * (1 - frac) + jnp.take(x, hi, axis=axis) * frac


def resize_bilinear(x: jax.Array, size: tuple[int, int], form: str | None = None) -> jax.Array:
    """Resizes the spatial axes of an NHWC array to ``size`` = (height, width).

    ``form="gather"``: two gathers and a lerp per axis, with the gather-add transpose as its
    gradient (fast on XLA:CPU). ``form="matmul"``: a dense (out, in) interpolation matrix per
    axis at ``Precision.HIGHEST``. ``form="xla"``: ``_resize_axis_xla``. ``None``: the
    backend's default. A numpy array is resized in numpy (gather form, same arithmetic):
    evaluation resizes logits to each image's original size on the host, where a jitted
    resize would compile once per size.
    """
    form = form or default_form("resize")
    if form not in RESIZE_FORMS:
        raise ValueError(f"resize form must be one of {RESIZE_FORMS}; got {form!r}")
    if not is_static(*x.shape[1:3], *size):
        return resize_axis_symbolic(resize_axis_symbolic(x, 1, size[0]), 2, size[1])
    if isinstance(x, np.ndarray):
        axis_fn = resize_axis
    else:
        axis_fn = {"matmul": _resize_axis_matmul, "xla": _resize_axis_xla}.get(form, _resize_axis_gather)
    x = axis_fn(x, 1, int(size[0]))
    return axis_fn(x, 2, int(size[1]))


# -- 3x3 depthwise convolution ----------------------------------------------------------

def shifted_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Σ over the nine taps of the zero-padded input shifted by (dy, dx), times kernel[dy, dx]
    (a cross-correlation, like torch's Conv2d; no bias, no custom gradient)."""
    _, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = padded[:, 0:h, 0:w, :] * kernel[0, 0]
    for dy in range(3):
        for dx in range(3):
            if dy or dx:
                out = out + padded[:, dy:dy + h, dx:dx + w, :] * kernel[dy, dx]
    return out


@jax.custom_vjp
def _depthwise_shifted(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    return shifted_conv3x3(x, kernel) + bias


def _depthwise_shifted_fwd(x, kernel, bias):
    return _depthwise_shifted(x, kernel, bias), (x, kernel)


def row_group(h: int) -> int:
    """How many rows ``depthwise_kernel_gradient`` sums element-wise: the largest divisor of
    ``h`` up to 16 (all of ``h`` up to 16), or 14 (the last group padded with zero rows)
    when that divisor is below 8. Measured on XLA:CPU at B0's and B2's stage shapes: 14 to
    16 rows were fastest; fewer leave more to the reduction, more make the fusion slower."""
    if h <= 16:
        return h
    best = max(d for d in range(1, 17) if h % d == 0)
    return best if best >= 8 else 14


def depthwise_kernel_gradient(x: jax.Array, g: jax.Array) -> jax.Array:
    """The (3, 3, C) gradient of ``shifted_conv3x3``'s kernel: tap (dy, dx) is
    Σ over n, h, w of the padded input at (h + dy, w + dx) times ``g`` at (h, w).

    Why written so: nine reductions over the whole activation (or a loop over the taps) read
    the input and ``g`` nine times, and XLA:CPU does not fuse them into one pass. Here one
    element-wise fusion sums each tap over a group of k rows (``row_group``), the nine taps
    stacked beside the channels, so the k rows of both arrays are read once for all nine;
    a reduction then sums the k-times smaller partial sums. Stage 1 of B0 at batch 32, 224²
    (32 × 56 × 56 × 128): 58 → 31 ms; B0 at 512², batch 2 (2 × 128 × 128 × 128): 19 → 9 ms.
    The sums run in another order than a single reduction's: equal to float32 rounding.
    """
    n, h, w, c = x.shape
    k = row_group(h)
    groups = -(-h // k)
    extra = groups * k - h          # zero rows of g: they add nothing
    padded = jnp.pad(x, ((0, 0), (1, 1 + extra), (1, 1), (0, 0)))
    g = jnp.pad(g, ((0, 0), (0, extra), (0, 0), (0, 0)))
    taps = []
    for dy in range(3):
        for dx in range(3):
            total = None
            for j in range(k):       # rows j, j + k, j + 2k, ... of g, against the tap's rows
                rows = padded[:, j + dy:j + dy + k * (groups - 1) + 1:k, dx:dx + w]
                term = (rows * g[:, j::k]).astype(jnp.float32)
                total = term if total is None else total + term
            taps.append(total)                                       # (N, groups, W, C)
    return jnp.sum(jnp.stack(taps, axis=3), axis=(0, 1, 2)).reshape(3, 3, c)


def _depthwise_shifted_bwd(residuals, g):
    x, kernel = residuals
    dx = shifted_conv3x3(g, kernel[::-1, ::-1])      # the transpose: the kernel flipped
    dkernel = depthwise_kernel_gradient(x, g).astype(kernel.dtype)
    dbias = jnp.sum(g.astype(jnp.float32), axis=(0, 1, 2)).astype(g.dtype)
    return dx, dkernel, dbias


_depthwise_shifted.defvjp(_depthwise_shifted_fwd, _depthwise_shifted_bwd)


def depthwise_conv3x3(x: jax.Array, kernel: jax.Array, bias: jax.Array,
                      form: str | None = None) -> jax.Array:
    """3×3 depthwise convolution, stride 1, zero padding 1, of an NHWC array.

    ``kernel`` has shape (3, 3, C) and is applied as a cross-correlation, like torch's Conv2d.
    ``form="shifted"``: nine shifted multiply-adds with the flipped-kernel backward (fast on
    XLA:CPU); ``form="conv"``: ``lax.conv_general_dilated`` with one group per channel at
    ``Precision.HIGHEST``; ``form="xla"``: the same convolution at the default precision,
    differentiated by JAX (cuDNN's and the TPU's own depthwise kernels); ``None``: the
    backend's default.
    """
    form = form or default_form("conv")
    if form not in CONV_FORMS:
        raise ValueError(f"depthwise conv form must be one of {CONV_FORMS}; got {form!r}")
    if form in ("conv", "xla"):
        channels = x.shape[-1]
        out = jax.lax.conv_general_dilated(
            x, kernel.reshape(3, 3, 1, channels).astype(x.dtype), window_strides=(1, 1),
            padding=((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=channels,
            precision=jax.lax.Precision.HIGHEST if form == "conv" else None)
        return out + bias
    return _depthwise_shifted(x, kernel, bias)


# -- sequence reduction: a convolution whose kernel equals its stride --------------------

def _reduction_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``nn.Conv``'s arithmetic for an r×r kernel at stride r, no padding (no bias)."""
    r = kernel.shape[0]
    return jax.lax.conv_general_dilated(x, kernel, (r, r), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def patches(x: jax.Array, r: int) -> jax.Array:
    """The (N, H//r, W//r, r·r·C) non-overlapping r×r patches of an NHWC array, each in
    the (row, column, channel) order of an HWIO kernel reshaped to (r·r·C, O); the last
    H mod r rows and W mod r columns dropped, as a VALID convolution drops them."""
    n, h, w, c = x.shape
    x = x[:, :h - h % r, :w - w % r]
    x = x.reshape(n, h // r, r, w // r, r, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // r, w // r, r * r * c)


@jax.custom_vjp
def _reduction_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _reduction_conv(x, kernel)


def _reduction_matmul_fwd(x, kernel):
    return _reduction_conv(x, kernel), (x, kernel)


def _reduction_matmul_bwd(residuals, g):
    x, kernel = residuals
    r, _, c, out = kernel.shape
    n, h, w, _ = x.shape
    flat = kernel.reshape(r * r * c, out)
    dkernel = jnp.einsum("nhwp,nhwo->po", patches(x, r), g).reshape(kernel.shape)
    dpatches = jnp.einsum("nhwo,po->nhwp", g, flat)
    hr, wr = g.shape[1], g.shape[2]
    dx = dpatches.reshape(n, hr, wr, r, r, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hr * r, wr * r, c)
    dx = jnp.pad(dx, ((0, 0), (0, h - hr * r), (0, w - wr * r), (0, 0)))
    return dx, dkernel


_reduction_matmul.defvjp(_reduction_matmul_fwd, _reduction_matmul_bwd)


def reduction_conv(x: jax.Array, kernel: jax.Array, form: str | None = None) -> jax.Array:
    """The attention's sequence reduction: an r×r convolution at stride r, no padding, of an
    NHWC array by an (r, r, C, O) kernel, computed as ``nn.Conv`` computes it.

    ``form="matmul"``: that forward, and a backward pass written as the two matmuls it is
    (the patches are disjoint, so the kernel's gradient is patchesᵀ·g and the input's is
    g·kernelᵀ put back in place). XLA:CPU ran autodiff's transposed convolutions at 8×8/8 far
    slower: B0's stage 1 (batch 32, 56², 32 channels), forward and backward, 80 → 9 ms.
    ``form="xla"``: the convolution differentiated by JAX. ``None``: the backend's default.
    """
    form = form or default_form("reduction")
    if form not in REDUCTION_FORMS:
        raise ValueError(f"reduction form must be one of {REDUCTION_FORMS}; got {form!r}")
    return _reduction_matmul(x, kernel) if form == "matmul" else _reduction_conv(x, kernel)


# -- attention ----------------------------------------------------------------------------

def _attention_forward(q, k, v):
    """softmax(q kᵀ · d^-½) v over (N, T, heads, d) arrays, as ``jax.nn.dot_product_attention``
    computes it (logits in float32, then scaled; probabilities cast to v's dtype), but with
    heads ahead of tokens so that each product is a plain batched matmul."""
    scale = q.shape[-1] ** -0.5
    qh, kh, vh = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))          # (N, heads, T, d)
    logits = jnp.einsum("nhqd,nhkd->nhqk", qh, kh, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits * jnp.float32(scale), axis=-1).astype(v.dtype)
    out = jnp.einsum("nhqk,nhkd->nhqd", probs, vh)
    return jnp.swapaxes(out, 1, 2), (qh, kh, vh, probs, out)


@jax.custom_vjp
def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Multi-head scaled dot-product attention of (N, T, heads, d) queries on (N, S, heads,
    d) keys and values, with a hand-written backward pass.

    The forward pass is ``jax.nn.dot_product_attention``'s arithmetic. The backward pass is
    the one FlashAttention uses: the softmax's row term Σ_k dP·P is computed as Σ_d dO·O
    (d = 64 numbers per query instead of S), so the (T, S) gradient is one elementwise pass.
    Autodiff of XLA's attention fused that row sum into a matmul that XLA:CPU ran at 3
    GFLOP/s; measured at B2's shapes (512², batch 2), forward and backward per block: stage 1
    209 → 138 ms, stage 2 91 → 51 ms, stage 3 36 → 27 ms, stage 4 15 → 10 ms.
    """
    return _attention_forward(q, k, v)[0]


def _attention_bwd(residuals, g):
    qh, kh, vh, probs, out = residuals
    scale = jnp.float32(qh.shape[-1] ** -0.5)
    gh = jnp.swapaxes(g, 1, 2)
    dv = jnp.einsum("nhqk,nhqd->nhkd", probs, gh)
    dprobs = jnp.einsum("nhqd,nhkd->nhqk", gh, vh, preferred_element_type=jnp.float32)
    row = jnp.sum(gh.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    dlogits = (probs.astype(jnp.float32) * (dprobs - row) * scale).astype(qh.dtype)
    dq = jnp.einsum("nhqk,nhkd->nhqd", dlogits, kh)
    dk = jnp.einsum("nhqk,nhqd->nhkd", dlogits, qh)
    return tuple(jnp.swapaxes(a, 1, 2) for a in (dq, dk, dv))


attention.defvjp(_attention_forward, _attention_bwd)


def multi_head_attention(q: jax.Array, k: jax.Array, v: jax.Array, form: str | None = None) -> jax.Array:
    """``attention`` (``form="flash"``: the FlashAttention backward, fast on XLA:CPU) or
    ``jax.nn.dot_product_attention`` differentiated by JAX (``form="xla"``: XLA's own
    attention, which GPU and TPU compilers fuse); ``None``: the backend's default."""
    form = form or default_form("attention")
    if form not in ATTENTION_FORMS:
        raise ValueError(f"attention form must be one of {ATTENTION_FORMS}; got {form!r}")
    return attention(q, k, v) if form == "flash" else jax.nn.dot_product_attention(q, k, v)
