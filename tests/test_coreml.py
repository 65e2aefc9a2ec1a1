"""coreml target: the digits CNN converted by coremltools (real conversions, nothing mocked) into
.mlpackage files with INT8 (the quantize stage's integers), FP16/FP32 and palettized weights, each
read back from the package's spec and weight file. Core ML itself runs only on Apple systems: here
the engine says so and the Mac script is shipped beside it."""
import ast
import platform

import numpy as np
import pytest
import torch

pytest.importorskip("coremltools")

from compressor.errors import UserError  # noqa: E402
from compressor.modules.quant import QuantWrapper  # noqa: E402
from compressor.stages.quantize.float16 import QuantizeFloatParams, QuantizeFP16  # noqa: E402
from compressor.stages.quantize.int8 import QuantizeInt8, QuantizeInt8Params  # noqa: E402
from compressor.targets.coreml import (NOT_HERE, CoreMlParams, CoreMlTarget, spec_summary,  # noqa: E402
                                       stored_integers)
from compressor.testing import context, digits, digits_cnn, params, stage  # noqa: E402

WEIGHTS = "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin"


@pytest.fixture(scope="module")
def data():
    return digits()


def int8_model(data, **keys):
    quantize = stage(QuantizeInt8, params(QuantizeInt8Params, calibration_batches=2, **keys))
    return quantize.apply(digits_cnn(), context(data, digits_cnn()))


def build(model, data, out_dir, **keys):
    ctx = context(data, digits_cnn())
    engine = stage(CoreMlTarget, params(CoreMlParams, **keys)).build(model, ctx, out_dir)
    return engine, ctx.notes


@pytest.fixture(scope="module")
def int8(data, tmp_path_factory):
    model = int8_model(data)
    out = tmp_path_factory.mktemp("coreml_int8")
    engine, notes = build(model, data, out, precision="int8")
    return model, out, engine, notes


@pytest.fixture(scope="module")
def fp32(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml_fp32")
    engine, notes = build(digits_cnn(), data, out, precision="fp32", compute_precision="fp32")
    return out, engine, notes


def test_int8_package_stores_the_quantize_stage_integers(int8):
    model, out, engine, notes = int8
    wrappers = [m for m in model.modules() if isinstance(m, QuantWrapper)]
    assert (out / "model.mlpackage").is_dir() and engine.path == out / "model.mlpackage"
    summary = spec_summary(engine.path)
    # every conv and linear reads int8 weights; no float weight tensor is left
    assert summary["layer_weights"] == {"conv": {"int8": 3}, "linear": {"int8": 2}}
    assert summary["weight_storage"] == {"constexpr_affine_dequantize:int8": len(wrappers)}
    assert summary["specification_version"] == 8 and summary["opset"] == "CoreML7"  # iOS17
    stored = stored_integers(engine.path)
    assert len(stored) == len(wrappers)
    first = wrappers[0]  # the first conv: its integers exactly, its scales in fp16 (the compute precision)
    assert np.array_equal(stored[0]["integers"], first.weight_integers().numpy().astype(np.int8))
    np.testing.assert_allclose(stored[0]["scale"].astype(np.float32).reshape(-1), first.weight_scale.numpy(), rtol=1e-3)
    assert notes["int8_layers"] == notes["int8_layers_exact"] == len(wrappers)
    assert notes["layer_weights"] == summary["layer_weights"] and notes["ops"]["constexpr_affine_dequantize"] == 5
    assert "W8A16" in notes["activations"] and notes["minimum_deployment_target"] == "iOS17"
    assert engine.precision == "int8" and engine.provider == "coreml"
    assert engine.input_shape == [1, 1, 8, 8] and engine.input_dtype == np.float32


def test_int8_package_is_more_than_3x_smaller_than_fp32(int8, fp32):
    _, out8, _, notes8 = int8
    out32, engine32, notes32 = fp32
    assert spec_summary(engine32.path)["layer_weights"] == {"conv": {"fp32": 3}, "linear": {"fp32": 2}}
    ratio = (out32 / WEIGHTS).stat().st_size / (out8 / WEIGHTS).stat().st_size
    assert ratio > 3.5, ratio  # 4x less the per-channel scales
    assert notes32["package_bytes"] / notes8["package_bytes"] > 3


def test_7bit_integers_kept_as_they_are_in_ios18_blockwise_ops(data, tmp_path):
    # 7-bit weights (reduce_range): coremltools' own quantizer would spread them over [-127, 127];
    # the package must hold the stage's integers, at most 63
    model = int8_model(data, reduce_range="true")
    engine, notes = build(model, data, tmp_path, minimum_deployment_target="iOS18")
    summary = spec_summary(engine.path)
    assert summary["weight_storage"] == {"constexpr_blockwise_shift_scale:int8": 5}
    assert summary["layer_weights"] == {"conv": {"int8": 3}, "linear": {"int8": 2}}
    assert notes["int8_layers_exact"] == 5
    stored = stored_integers(engine.path)
    assert max(int(np.abs(s["integers"]).max()) for s in stored) == 63


def test_palettized_weights_use_lookup_tables_of_the_chosen_bits(data, tmp_path):
    engine, notes = build(digits_cnn(), data, tmp_path / "p4", weights="palettize", palette_bits=4)
    summary = spec_summary(engine.path)
    # the first conv's 288 weights stay fp16 (coremltools palettizes tensors of 2048 elements and more)
    assert summary["layer_weights"] == {"conv": {"fp16": 1, "lut4": 2}, "linear": {"lut4": 2}}
    assert summary["weight_storage"] == {"const:fp16": 1, "constexpr_lut_to_dense:lut4": 4}
    assert notes["weights"].startswith("palettized 4-bit") and engine.precision == "fp16"
    engine3, _ = build(digits_cnn(), data, tmp_path / "p3", weights="palettize", palette_bits=3,
                       minimum_deployment_target="iOS18")
    assert spec_summary(engine3.path)["weight_storage"]["constexpr_lut_to_dense:lut3"] == 4
    fp16, _ = build(digits_cnn(), data, tmp_path / "fp16")
    assert (tmp_path / "p4" / WEIGHTS).stat().st_size * 3 < (tmp_path / "fp16" / WEIGHTS).stat().st_size


def test_fp16_weights_from_a_float_model_and_from_the_fp16_stage(data, tmp_path):
    engine, notes = build(digits_cnn(), data, tmp_path / "a")  # compute_precision fp16: Core ML's default
    assert spec_summary(engine.path)["layer_weights"] == {"conv": {"fp16": 3}, "linear": {"fp16": 2}}
    assert engine.precision == "fp16" and notes["weights"] == "float fp16"
    half = stage(QuantizeFP16, params(QuantizeFloatParams)).apply(digits_cnn(), context(data, digits_cnn()))
    engine, notes = build(half, data, tmp_path / "b", precision="fp16")
    assert spec_summary(engine.path)["weight_storage"] == {"const:fp16": 5}


@pytest.mark.skipif(platform.system() == "Darwin", reason="Core ML runs there")
def test_engine_is_not_run_here_and_ships_the_mac_script(int8):
    model, out, engine, notes = int8
    assert engine.not_run == NOT_HERE and notes["runs_here"] is False and notes["not_run"] == NOT_HERE
    with pytest.raises(UserError, match="not run: Core ML runs only on Apple systems"):
        engine(np.zeros((1, 1, 8, 8), np.float32))
    ast.parse((out / "measure_on_mac.py").read_text())  # a script only coremltools and numpy need
    assert "import torch" not in (out / "measure_on_mac.py").read_text()
    reference = np.load(out / "reference.npz")
    assert reference["inputs"].shape == (32, 1, 8, 8) and reference["outputs"].shape == (32, 10)
    with torch.no_grad():  # the outputs are the pipeline's model's on those inputs (what parity compares with)
        np.testing.assert_allclose(model(torch.from_numpy(reference["inputs"])).numpy(), reference["outputs"], rtol=1e-6)
    assert notes["reference_samples"] == 32 and notes["package_bytes"] > (out / WEIGHTS).stat().st_size
    reopened = CoreMlTarget.load(out / "model.mlpackage")
    assert reopened.precision == "int8" and reopened.input_shape == [1, 1, 8, 8] and reopened.not_run == NOT_HERE


def test_bad_params_name_their_key():
    def keys(**values):
        with pytest.raises(UserError) as e:
            params(CoreMlParams, **values)
        return {p.key for p in e.value.problems}

    assert keys(palette_bits=5) == {"params.palette_bits"}
    assert keys(minimum_deployment_target="iOS99") == {"params.minimum_deployment_target"}
    assert keys(minimum_deployment_target="iOS14") == {"params.minimum_deployment_target"}  # no ML Program
    assert keys(weights="palettize", minimum_deployment_target="iOS15") == {"params.minimum_deployment_target"}
    assert keys(weights="palettize", palette_bits=3) == {"params.palette_bits"}  # 3 bits from iOS18
    assert keys(weights="palettize", precision="int8") == {"params.weights"}
    assert keys(compute_precision="bf16", weights="lut") == {"params.compute_precision", "params.weights"}
    # `precision: auto` resolved by the plan to int8, then checked by requires()
    late = params(CoreMlParams, minimum_deployment_target="macOS12")
    late.precision = "int8"
    assert [k for k, _ in CoreMlTarget.requires(late)] == ["minimum_deployment_target"]
    assert CoreMlTarget.requires(params(CoreMlParams)) == []


def test_palettize_refuses_an_int8_model(int8, data, tmp_path):
    with pytest.raises(UserError) as e:
        build(int8[0], data, tmp_path, weights="palettize")
    assert e.value.problems[0].key == "target.weights"
