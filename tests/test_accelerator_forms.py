"""The accelerator path, proven by lowering (no GPU or TPU here): the XLA form set's programs
for "tpu" and "cuda" hold no while loop, scatter, gather or HIGHEST precision; "auto" picks
it on those platforms and the CPU set on a CPU; each XLA form equals the CPU one; Mixup's
draws and CutMix's box have no loop and cut as timm's float64 arithmetic does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAST_COMPILE_FLAG

from experiments import lowering_counts
from segformer_jax import losses, mixup, run_config
from segformer_jax.models import ops

PROGRAMS = list(lowering_counts.PROGRAMS)


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_accelerator_programs_have_no_loop_scatter_gather_or_highest(program, platform):
    """What "auto" builds for a TPU or a GPU, lowered from this CPU host."""
    counts = lowering_counts.counts(lowering_counts.lowered_text(program, "auto", platform))
    assert {k: counts[k] for k in ("while", "scatter", "gather", "HIGHEST")} == \
        {"while": 0, "scatter": 0, "gather": 0, "HIGHEST": 0}, counts
    assert counts["dot"] > 0  # the model is there


def test_the_cpu_keeps_its_forms():
    """On this CPU "auto" is the CPU set, with its loops (the resize's transposed taps) and
    the banded loss's gathers and scatter-add: the forms the quickstart's figures come from
    (lowered for the CPU, the b0 segmentation step has 13 loops)."""
    assert ops.form_set_name("auto") == "cpu" and run_config.compute_dtype(run_config.default_config()) == "float32"
    counts = lowering_counts.counts(lowering_counts.lowered_text(PROGRAMS[0], "auto", "cpu"))
    assert counts["while"] >= 10 and counts["scatter"] > 0 and counts["gather"] > 0, counts


def test_auto_picks_by_platform():
    for platform, name, dtype in (("cpu", "cpu", "float32"), ("gpu", "xla", "bfloat16"),
                                  ("cuda", "xla", "bfloat16"), ("tpu", "xla", "bfloat16")):
        assert ops.form_set_name("auto", platform) == name
        assert run_config.compute_dtype(run_config.default_config(), platform) == dtype
    assert ops.form_set_name("xla", "cpu") == "xla"   # forced, for experiments
    with pytest.raises(ValueError, match="op forms must be one of"):
        ops.form_set("fast")


# -- each XLA form equals the CPU one (float32, odd sizes) --------------------------------

def _random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


@pytest.mark.parametrize("shape, size", [((2, 7, 9, 5), (28, 36)), ((1, 33, 20, 3), (10, 47))])
def test_xla_resize_equals_gather(shape, size):
    x, g = _random(shape, 0), _random((shape[0], *size, shape[3]), 1)
    out = {f: ops.resize_bilinear(x, size, form=f) for f in ("gather", "xla")}
    grad = {f: jax.grad(lambda v, f=f: jnp.sum(ops.resize_bilinear(v, size, form=f) * g))(x)
            for f in ("gather", "xla")}
    # The same taps, a dot's accumulation order: float32 rounding (integer upsampling is
    # the gathers' arithmetic bit for bit; its gradient a sum in another order).
    np.testing.assert_allclose(out["xla"], out["gather"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad["xla"], grad["gather"], rtol=1e-5, atol=1e-5)


def test_xla_depthwise_conv_and_attention_equal_the_cpu_forms():
    x, g = _random((2, 9, 13, 6), 2), _random((2, 9, 13, 6), 5)
    kernel, bias = _random((3, 3, 6), 3), _random((6,), 4)
    outs = {f: jax.value_and_grad(lambda a, f=f: jnp.sum(ops.depthwise_conv3x3(*a, form=f) * g))((x, kernel, bias))
            for f in ("shifted", "xla")}
    np.testing.assert_allclose(outs["xla"][0], outs["shifted"][0], rtol=1e-5)
    for a, b in zip(outs["xla"][1], outs["shifted"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)  # as tests/test_ops.py's conv form
    q, go = _random((2, 37, 3, 24), 6), _random((2, 37, 3, 24), 9)
    k, v = _random((2, 11, 3, 24), 7), _random((2, 11, 3, 24), 8)
    att = {f: jax.value_and_grad(lambda a, f=f: jnp.sum(ops.multi_head_attention(*a, form=f) * go))((q, k, v))
           for f in ops.ATTENTION_FORMS}
    np.testing.assert_allclose(att["xla"][0], att["flash"][0], rtol=1e-5)
    for a, b in zip(att["xla"][1], att["flash"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # as tests/test_ops.py's attention


@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_xla_losses_equal_the_cpu_forms(name):
    """Every loss of config.loss, with class weights where they apply and ignored pixels:
    the plain XLA cross-entropy and upsampling against the banded CPU forms."""
    logits = _random((2, 5, 7, 4), 10)
    labels = jnp.asarray(np.random.default_rng(11).integers(0, 4, (2, 20, 28)), jnp.int32)
    labels = labels.at[0, :3].set(255)
    weight = (1.0, 2.0, 0.5, 1.5) if name in ("cross_entropy", "ohem") else None
    values = {}
    for forms in ("cpu", "xla"):
        settings = losses.LossSettings(terms=((name, 1.0),), class_weight=weight, ohem_min_kept=50, forms=forms)
        values[forms] = jax.value_and_grad(losses.make_loss(settings))(logits, labels)
    np.testing.assert_allclose(values["xla"][0], values["cpu"][0], rtol=1e-5)
    np.testing.assert_allclose(values["xla"][1], values["cpu"][1], rtol=1e-4, atol=1e-6)


# -- Mixup and CutMix without loops ----------------------------------------------------------

def test_cutmix_cuts_as_timms_float64():
    """timm's ``int(H * np.sqrt(1. - lam))``, float64, for two million float32 lambdas and
    the sides ImageNet crops take; float32 arithmetic misses about 7 in a million (the
    issue's lambda cuts 38 rows of 173 in float32, 37 in float64)."""
    lam = np.float32(0.9517524838447571)
    assert int(mixup.cut_size(lam, 173)) == int(173 * np.sqrt(1.0 - np.float64(lam))) == 37
    lams = np.random.default_rng(0).random(2_000_000).astype(np.float32)
    for side in (173, 224, 251, 4096):
        ours = np.asarray(jax.jit(jax.vmap(lambda v, s=side: mixup.cut_size(v, s)))(lams))
        float64 = (side * np.sqrt(1.0 - lams.astype(np.float64))).astype(np.int64)
        float32 = np.floor(np.float32(side) * np.sqrt(np.float32(1) - lams)).astype(np.int64)
        assert np.array_equal(ours, float64), side
        assert (float32 != float64).any()  # the case exists: the check above can fail
    with pytest.raises(ValueError, match="up to 4096"):
        mixup.cut_size(lam, 5000)


@pytest.mark.parametrize("alpha", [0.8, 1.0])
def test_loop_free_beta_is_beta(alpha):
    """20,000 draws against scipy's Beta(alpha, alpha): a Kolmogorov-Smirnov test. The keys
    are fixed, so the statistic is too: a wrong distribution gives p ~ 0 (a uniform one,
    for alpha 0.8, gives p < 1e-10), this one about 0.1-0.3."""
    from scipy import stats
    draws = np.asarray(jax.jit(jax.vmap(lambda k: mixup.beta(k, alpha, alpha)))(
        jax.random.split(jax.random.key(1), 20_000)))
    assert stats.kstest(draws, stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    assert 0 < draws.min() and draws.max() < 1


# -- exports for accelerators -----------------------------------------------------------------

def test_stablehlo_export_holds_each_platforms_forms(tmp_path):
    """One artefact for cpu, cuda and tpu: the CPU program passes the parity gate here, and
    the loops, scatters and gathers it holds are the CPU branch's alone (the same artefact
    without cpu has none)."""
    from jax import export as jax_export

    import segformer_jax as sj
    from segformer_jax import export
    config = sj.SegformerConfig.from_variant("b0", num_labels=5, hidden_sizes=(8, 16, 24, 32),
                                             num_attention_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1),
                                             decoder_hidden_size=16)
    variables = sj.init_variables(config)
    texts, metas = {}, {}
    for name, platforms in (("all", ("cpu", "cuda", "tpu")), ("accelerators", ("cuda", "tpu"))):
        signature = export.Signature(1, (64, 64), False, platforms=platforms)
        metas[name] = export.export(config, variables, "stablehlo", signature, tmp_path / name,
                                    check="cpu" in platforms, log=lambda _: None)
        exported = jax_export.deserialize((tmp_path / name / "model.stablehlo").read_bytes())
        assert tuple(exported.platforms) == platforms and metas[name]["platforms"] == list(platforms)
        texts[name] = lowering_counts.counts(exported.mlir_module())
    assert metas["all"]["parity"] and all(row["passed"] for row in metas["all"]["parity"])
    accelerators = texts["accelerators"]
    assert accelerators["while"] == accelerators["scatter"] == accelerators["gather"] == accelerators["HIGHEST"] == 0
    # The full artefact holds both programs: the CPU one (shifted-add depthwise convs) and
    # the accelerators' (lax.conv depthwise convs), so more dots and convs than either.
    assert texts["all"]["dot"] > accelerators["dot"] and texts["all"]["conv"] > accelerators["conv"]


def test_export_platforms_on_the_command_line(capsys):
    from segformer_jax import export
    args = export.parse_args(["--checkpoint", "x", "--format", "stablehlo", "--out", "o"])
    assert args.platforms == ("cpu", "cuda", "tpu")
    assert export.parse_args(["--checkpoint", "x", "--format", "onnx", "--out", "o"]).platforms == ("cpu",)
    for argv, message in (
            (["--format", "onnx", "--platforms", "cpu,tpu"], "--format onnx runs on a CPU runtime"),
            (["--format", "stablehlo", "--platforms", "tpu"], "the parity gate runs the export here, on cpu"),
            (["--format", "stablehlo", "--platforms", "cpu,metal"], "--platforms takes some of cpu, cuda, rocm, tpu")):
        with pytest.raises(SystemExit) as exit_info:
            export.parse_args(["--checkpoint", "x", "--out", "o", *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert export.parse_args(["--checkpoint", "x", "--format", "stablehlo", "--out", "o", "--platforms", "tpu",
                              "--no-check"]).platforms == ("tpu",)


@pytest.mark.slow
def test_accelerator_report_runs_here_at_tiny_sizes(tmp_path):
    """The prepared report, on this CPU at tiny sizes: every configuration in both form sets
    with its figures, the same first loss from both (the same batch and state; the forms
    agree to float32 rounding, tested above), every op's forms, the Markdown table. Run as
    the command, at XLA:CPU's backend optimisation level 0 (only the compiled code's speed
    changes, as in tests/test_scale.py): its four train steps compile in half the time."""
    import json
    import os
    import subprocess
    import sys

    from experiments import accelerator_report
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "2",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAG}".strip()}
    done = subprocess.run([sys.executable, "-m", "experiments.accelerator_report", "--out", str(tmp_path), "--tiny"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    steps = report["steps"]
    assert [(s["setting"], s["forms"]) for s in steps] == [
        (setting.name, forms) for setting in accelerator_report.TINY for forms in accelerator_report.FORMS]
    for s in steps:
        assert s["step_ms"] > 0 and s["compile_s"] > 0 and s["images_per_s"] > 0 and s["mfu"] is None  # CPU
        assert s["model_flops"] and s["program_bytes"]
    for setting in accelerator_report.TINY:
        losses = [s["first_loss"] for s in steps if s["setting"] == setting.name]
        np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    assert {o["form"] for o in report["ops"]} >= {*ops.RESIZE_FORMS, *ops.CONV_FORMS}
    assert "| configuration | forms |" in (tmp_path / "report.md").read_text() and report["left_out"] == []
    assert accelerator_report.peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert accelerator_report.peak("NVIDIA H100 PCIe", "float32") == 378e12
