"""Each op's alternative forms agree, forward and backward, on odd sizes (float32)."""

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


def test_unknown_forms_are_refused():
    with pytest.raises(ValueError, match="resize form"):
        ops.resize_bilinear(jnp.zeros((1, 2, 2, 1)), (4, 4), form="fft")
    with pytest.raises(ValueError, match="depthwise conv form"):
        ops.depthwise_conv3x3(jnp.zeros((1, 2, 2, 1)), jnp.zeros((3, 3, 1)), jnp.zeros(1), form="fft")


def test_ops_benchmark_prints_every_form(capsys):
    from experiments import ops_benchmark
    ops_benchmark.main(["--batch", "1", "--size", "32", "--warmup", "0", "--repeats", "1"])
    table = capsys.readouterr().out
    for form in (*ops.RESIZE_FORMS, *ops.CONV_FORMS):
        assert f"| {form} |" in table
    assert table.count("| 1.00 | 1.00 |") >= 3   # each op's default form against itself
