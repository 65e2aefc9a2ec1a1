"""Quantization stages on the digits model: calibrators, low-bit QAT against PTQ, mixed precision."""
import pytest
import torch

from compressor.modules.quant import OBSERVERS, EntropyObserver, MinMaxObserver, MSEObserver, QuantWrapper
from compressor.stages.quantize.int8 import QuantizeInt8, QuantizeInt8Params
from compressor.stages.quantize.qat import QuantizeQAT, QuantizeQATParams
from compressor.testing import context, digits, digits_cnn
from compressor.training.loop import accuracy


@pytest.fixture(scope="module")
def data():
    return digits()


def run(stage_cls, params, data):
    torch.manual_seed(0)
    model, ctx = digits_cnn(), context(data, digits_cnn(), evaluate="top1")
    stage = stage_cls()
    stage.params = params
    return stage.apply(model, ctx), ctx


@pytest.mark.parametrize("calibrator", sorted(OBSERVERS))
def test_every_calibrator_within_half_a_point(data, calibrator):
    base = accuracy(digits_cnn(), data.val)
    model, _ = run(QuantizeInt8, QuantizeInt8Params(calibrator=calibrator), data)
    assert accuracy(model, data.val) >= base - 0.005


def test_entropy_and_mse_clip_outliers():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(100_000).abs(), torch.tensor([80.0])])  # one far outlier
    ranges = {}
    for name, obs in (("minmax", MinMaxObserver()), ("entropy", EntropyObserver()), ("mse", MSEObserver())):
        obs.observe(x)
        ranges[name] = obs.range()
    assert ranges["minmax"][1] == pytest.approx(80.0)
    assert ranges["entropy"][1] < 20 and ranges["mse"][1] < 40  # clipped well below the outlier


def test_qat_recovers_what_low_bit_ptq_loses(data):
    base = accuracy(digits_cnn(), data.val)
    # 2-bit weights: post-training quantization loses points, training through it wins them back
    model, ctx = run(QuantizeQAT, QuantizeQATParams(weight_bits=2, learn_scales=False, epochs=3, lr=5e-4), data)
    ptq, qat = ctx.notes["ptq_metric"]["top1"], accuracy(model, data.val)
    assert ptq < base - 0.03
    assert abs(base - qat) < abs(base - ptq) and qat >= base - 0.01


def test_lsq_learns_scales_and_freezes_them(data):
    model, ctx = run(QuantizeQAT, QuantizeQATParams(weight_bits=2, learn_scales=True, epochs=2, lr=5e-4), data)
    wrappers = [m for m in model.modules() if isinstance(m, QuantWrapper)]
    assert wrappers and not any(hasattr(w, "act_scale_p") for w in wrappers)  # frozen into buffers
    assert accuracy(model, data.val) > ctx.notes["ptq_metric"]["top1"]


def test_mixed_precision_keeps_sensitive_layers_float(data):
    base = accuracy(digits_cnn(), data.val)
    model, ctx = run(QuantizeInt8, QuantizeInt8Params(weight_bits=2, max_drop=0.01), data)
    assert base - accuracy(model, data.val) <= 0.01
    assert ctx.notes["float_layers"], "some layers had to stay in float"
    assert set(ctx.notes["sensitivity_by_layer"]) == {"0", "3", "7", "12", "15"}
    for name in ctx.notes["float_layers"]:
        assert not isinstance(model.get_submodule(name), QuantWrapper)


def test_qat_model_exports_with_integer_kernels(tmp_path, data):
    from compressor.targets.onnx.export import export_onnx
    from compressor.targets.onnxruntime import OrtEngine

    model, _ = run(QuantizeQAT, QuantizeQATParams(epochs=1), data)
    engine = OrtEngine(export_onnx(model, data.example_input(), tmp_path / "m.onnx"), precision="int8")
    assert engine.kernels().get("QLinearConv") == 3
    x, _ = next(iter(data.val))
    with torch.no_grad():
        ref = model(x).numpy()
    assert (engine(x.numpy()).argmax(1) == ref.argmax(1)).mean() >= 0.97


def test_dynamic_and_fp16_engines(tmp_path, cli_inproc):
    import compressor

    report, engine = compressor.compress("default", ["+stage@stages.q2=quantize_dynamic", "pipeline=[q2]",
                                                     "eval.iters=5", "eval.extra_metrics=[agreement,fidelity]"])
    kernels = report["engine"]["notes"]["kernels"]
    assert report["engine"]["precision"] == "int8_dynamic" and kernels.get("DynamicQuantizeMatMul") == 2
    assert "ConvInteger" not in kernels  # only what the stage quantized (Linear layers)
    assert report["engine"]["metric"]["agreement"] >= 0.98 and report["status"] == "ok"
    report, engine = compressor.compress("default", ["+stage@stages.h=quantize_fp16", "pipeline=[h]", "eval.iters=5"])
    assert report["engine"]["precision"] == "fp16" and report["engine"]["parity"]["passed"]
    assert report["engine"]["size_bytes"] < 0.55 * report["baseline"]["size_bytes"]
    # bf16 has no ONNX Conv: refused at validation, naming the key
    proc = cli_inproc("validate", "+stage@stages.b=quantize_bf16", "pipeline=[b]")
    assert proc.returncode == 2 and proc.stderr.startswith("error: target.precision")
