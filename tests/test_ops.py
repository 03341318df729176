"""Each op's alternative forms agree, forward and backward, on odd sizes (float32)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segformer_jax.models import ops


@pytest.mark.parametrize("shape, size", [((2, 7, 9, 5), (29, 31)), ((1, 33, 20, 3), (10, 47)),
                                         ((1, 5, 5, 2), (5, 12))])
def test_resize_forms_agree(shape, size):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
    g = jnp.asarray(rng.standard_normal((shape[0], *size, shape[3]), dtype=np.float32))
    outs, grads = {}, {}
    for form in ops.RESIZE_FORMS:
        outs[form] = jax.jit(lambda v, f=form: ops.resize_bilinear(v, size, form=f))(x)
        grads[form] = jax.grad(lambda v, f=form: jnp.sum(ops.resize_bilinear(v, size, form=f) * g))(x)
    # Two taps summed in another order (and a dot's accumulation): float32 rounding.
    np.testing.assert_allclose(outs["matmul"], outs["gather"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grads["matmul"], grads["gather"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ops.resize_bilinear(np.asarray(x), size, form="matmul"),
                                  ops.resize_bilinear(np.asarray(x), size))  # host: one form


def test_interpolation_matrix_rows_sum_to_one():
    for in_size, out_size in ((7, 29), (33, 10), (1, 4), (5, 5)):
        m = ops.interpolation_matrix(in_size, out_size)
        assert m.shape == (out_size, in_size) and (np.count_nonzero(m, axis=1) <= 2).all()
        np.testing.assert_allclose(m.sum(1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 9, 13, 6), (1, 4, 3, 16)])
def test_depthwise_conv_forms_agree(shape):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
    kernel = jnp.asarray(rng.standard_normal((3, 3, shape[-1]), dtype=np.float32))
    bias = jnp.asarray(rng.standard_normal(shape[-1], dtype=np.float32))
    g = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))

    def loss(args, form):
        return jnp.sum(ops.depthwise_conv3x3(*args, form=form) * g)

    outs = {f: ops.depthwise_conv3x3(x, kernel, bias, form=f) for f in ops.CONV_FORMS}
    grads = {f: jax.grad(loss)((x, kernel, bias), f) for f in ops.CONV_FORMS}
    np.testing.assert_allclose(outs["conv"], outs["shifted"], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads["conv"], grads["shifted"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape,r", [((2, 9, 13, 6), 4), ((1, 8, 8, 5), 2), ((3, 7, 7, 3), 3)])
def test_reduction_conv_forms_agree(shape, r):
    """The matmul form's forward is the convolution itself (bit-identical) and its
    hand-written backward equals autodiff of the convolution, with the rows and columns a
    VALID convolution drops getting zero gradient. Each gradient entry sums at most
    N·(H/r)·(W/r) = 24 (kernel) or C = 6 (input) float32 products of O(1) numbers, summed in
    another order: 1e-5 relative plus 1e-5 absolute covers that rounding; a wrong index
    in the patch layout would be off by O(1)."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
    kernel = jnp.asarray(rng.standard_normal((r, r, shape[-1], shape[-1]), dtype=np.float32))
    g = jnp.asarray(rng.standard_normal((shape[0], shape[1] // r, shape[2] // r, shape[-1]), dtype=np.float32))

    def loss(args, form):
        return jnp.sum(ops.reduction_conv(*args, form=form) * g)

    np.testing.assert_array_equal(ops.reduction_conv(x, kernel, "matmul"), ops.reduction_conv(x, kernel, "xla"))
    (dx, dk), (dx_ref, dk_ref) = (jax.grad(loss)((x, kernel), f) for f in ("matmul", "xla"))
    np.testing.assert_allclose(dk, dk_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    assert not np.any(dx[:, shape[1] // r * r:]) and not np.any(dx[:, :, shape[2] // r * r:])


def test_unknown_forms_are_refused():
    with pytest.raises(ValueError, match="resize form"):
        ops.resize_bilinear(jnp.zeros((1, 2, 2, 1)), (4, 4), form="fft")
    with pytest.raises(ValueError, match="reduction form"):
        ops.reduction_conv(jnp.zeros((1, 2, 2, 1)), jnp.zeros((2, 2, 1, 1)), form="fft")
    with pytest.raises(ValueError, match="depthwise conv form"):
        ops.depthwise_conv3x3(jnp.zeros((1, 2, 2, 1)), jnp.zeros((3, 3, 1)), jnp.zeros(1), form="fft")


def test_ops_benchmark_prints_every_form(capsys):
    from experiments import ops_benchmark
    ops_benchmark.main(["--batch", "1", "--size", "32", "--warmup", "0", "--repeats", "1"])
    table = capsys.readouterr().out
    for form in (*ops.RESIZE_FORMS, *ops.CONV_FORMS, *ops.REDUCTION_FORMS):
        assert f"| {form} |" in table
    assert table.count("| 1.00 | 1.00 |") >= 3   # each op's default form against itself


@pytest.mark.parametrize("in_size, out_size", [(7, 29), (33, 10), (1, 4), (5, 12), (16, 128), (128, 512)])
def test_transpose_taps_are_the_matrix_transpose(in_size, out_size):
    index, weight = ops.transpose_taps(in_size, out_size)
    dense = np.zeros((in_size, out_size), np.float32)
    np.add.at(dense, (np.arange(in_size)[:, None].repeat(index.shape[1], 1), index), weight)
    np.testing.assert_array_equal(dense, ops.interpolation_matrix(in_size, out_size).T)


@pytest.mark.parametrize("shape, size", [((2, 7, 9, 5), (29, 31)), ((1, 33, 20, 3), (10, 47)),
                                         ((1, 5, 5, 2), (5, 12)), ((2, 4, 6, 3), (16, 24))])
def test_resize_backward_equals_autodiff(shape, size):
    """The hand-written gather-add transpose against JAX's own gradient of the same gathers
    (scatter-adds), in float32: the same products summed in another order."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
    g = jnp.asarray(rng.standard_normal((shape[0], *size, shape[3]), dtype=np.float32))

    def automatic(v):
        return jnp.sum(ops.resize_axis(ops.resize_axis(v, 1, size[0]), 2, size[1]) * g)

    ours = jax.jit(jax.grad(lambda v: jnp.sum(ops.resize_bilinear(v, size, form="gather") * g)))(x)
    np.testing.assert_allclose(ours, jax.grad(automatic)(x), rtol=1e-5, atol=1e-5)
    # The forward pass is the primal's, bit for bit.
    np.testing.assert_array_equal(ops.resize_bilinear(x, size, form="gather"),
                                  ops.resize_axis(ops.resize_axis(x, 1, size[0]), 2, size[1]))


def test_kernel_gradient_row_groups():
    # All rows up to 16; else the largest divisor up to 16, or 14 with zero rows padded.
    assert [ops.row_group(h) for h in (1, 7, 16, 24, 33, 56, 128, 17, 61)] == [1, 7, 16, 12, 11, 14, 16, 14, 14]


# Heights 24, 33, 17 and 61: two or more row groups (``row_group``), 17 and 61 with padded rows.
@pytest.mark.parametrize("shape", [(2, 9, 13, 6), (1, 4, 3, 16), (1, 1, 1, 2), (2, 24, 5, 3),
                                   (1, 33, 3, 2), (1, 17, 6, 4), (1, 61, 2, 3)])
def test_depthwise_conv_backward_equals_autodiff(shape):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
    kernel = jnp.asarray(rng.standard_normal((3, 3, shape[-1]), dtype=np.float32))
    bias = jnp.asarray(rng.standard_normal(shape[-1], dtype=np.float32))
    g = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
    ours = jax.jit(jax.grad(lambda *a: jnp.sum(ops.depthwise_conv3x3(*a, form="shifted") * g),
                            argnums=(0, 1, 2)))(x, kernel, bias)
    automatic = jax.grad(lambda v, k, b: jnp.sum((ops.shifted_conv3x3(v, k) + b) * g),
                         argnums=(0, 1, 2))(x, kernel, bias)
    for a, b in zip(ours, automatic):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_default_forms_per_backend():
    assert ops.default_form("resize", "cpu") == "gather" and ops.default_form("conv", "cpu") == "shifted"
    for op, forms in (("resize", ops.RESIZE_FORMS), ("conv", ops.CONV_FORMS)):
        for backend in ("cpu", "gpu", "tpu"):
            assert ops.default_form(op, backend) in forms


@pytest.mark.parametrize("in_size, factor", [(1, 4), (2, 2), (5, 3), (16, 8), (7, 4)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_integer_upsampling_is_the_gather_arithmetic(in_size, factor, dtype):
    """``upsample_axis`` (selects and a lerp, no gather) equals the two gathers bit for bit,
    on either axis, in float32 and bfloat16; through ``resize_bilinear`` its backward (the
    gathers' transpose) equals JAX's gradient of the gathers."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((2, in_size, in_size + 1, 3), dtype=np.float32), dtype)
    for axis in (1, 2):
        out = x.shape[axis] * factor
        np.testing.assert_array_equal(ops.upsample_axis(x, axis, factor), ops.resize_axis(x, axis, out))
    g = jnp.asarray(rng.standard_normal((2, in_size * factor, in_size * factor + factor, 3),
                                        dtype=np.float32))
    size = (in_size * factor, (in_size + 1) * factor)
    x32 = x.astype(jnp.float32)
    ours = jax.grad(lambda v: jnp.sum(ops.resize_bilinear(v, size) * g))(x32)
    gathers = jax.grad(lambda v: jnp.sum(
        ops.resize_axis(ops.resize_axis(v, 1, size[0]), 2, size[1]) * g))(x32)
    np.testing.assert_allclose(ours, gathers, rtol=1e-5, atol=1e-5)  # sums in another order


@pytest.mark.parametrize("queries, keys, heads, depth", [(37, 11, 3, 24), (64, 64, 1, 32), (5, 1, 2, 8)])
def test_attention_equals_jax_and_its_gradient(queries, keys, heads, depth):
    """``ops.attention`` against ``jax.nn.dot_product_attention`` and JAX's gradient of it:
    the forward is the same arithmetic (float32 rounding of a different matmul layout at
    most); the backward's row term Σ dO·O replaces Σ dP·P, equal in exact arithmetic."""
    rng = np.random.default_rng(5)
    q = jnp.asarray(rng.standard_normal((2, queries, heads, depth), dtype=np.float32))
    k = jnp.asarray(rng.standard_normal((2, keys, heads, depth), dtype=np.float32))
    v = jnp.asarray(rng.standard_normal((2, keys, heads, depth), dtype=np.float32))
    g = jnp.asarray(rng.standard_normal(q.shape, dtype=np.float32))
    np.testing.assert_allclose(ops.attention(q, k, v), jax.nn.dot_product_attention(q, k, v),
                               rtol=1e-6, atol=1e-6)
    ours = jax.jit(jax.grad(lambda *a: jnp.sum(ops.attention(*a) * g), argnums=(0, 1, 2)))(q, k, v)
    theirs = jax.grad(lambda *a: jnp.sum(jax.nn.dot_product_attention(*a) * g),
                      argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    low = [a.astype(jnp.bfloat16) for a in (q, k, v)]
    np.testing.assert_allclose(np.asarray(ops.attention(*low), np.float32),
                               np.asarray(jax.nn.dot_product_attention(*low), np.float32),
                               rtol=1e-2, atol=1e-2)  # bfloat16: 8 bits of mantissa


@pytest.mark.slow
def test_profile_encoder_breaks_the_step_down(capsys):
    """The profile's two tables at a tiny size: every stage's parts timed, each against
    transformers' module, and the traced step's operation kinds with shares that add up to
    the whole."""
    from experiments import profile_encoder
    assert profile_encoder.main(["--batch", "2", "--size", "32", "--repeats", "1", "--top", "100000", "--tiny",
                                 "--torch"]) == 0
    out = capsys.readouterr().out
    parts = re.findall(r"^\| (stage \d patch embedding|stage \d block \(.*?\)|  attention, sr \d|  Mix-FFN) "
                       r"\| [\d.]+ \| ([\d.]+) \| ×\d \| ([\d.]+) \| ([\d.]+)× \|$", out, re.M)
    assert len(parts) == 16
    for stage in range(1, 5):
        assert f"| stage {stage} patch embedding |" in out and f"| stage {stage} block (" in out
    assert out.count("|   attention, sr ") == 4 and out.count("|   Mix-FFN |") == 4
    for _, ours, theirs, ratio in parts:   # the ratio of the two times, each printed to 0.05 ms
        o, t, r = float(ours), float(theirs), float(ratio)
        assert o > 0 and t > 0
        assert (t - 0.05) / (o + 0.05) - 0.005 <= r <= (t + 0.05) / max(o - 0.05, 1e-9) + 0.005
    total = float(re.search(r"summed over threads: (\d+) ms per step", out).group(1))
    kinds = [float(ms) for ms in re.findall(r"^\| \S+ \| ([\d.]+) \| [\d.]+ % \| \d+ \|$", out, re.M)]
    assert len(kinds) > 5 and "dot" in out
    assert abs(sum(kinds) - total) <= 0.5 + 0.05 * len(kinds)   # each row and the total rounded
