"""A torchvision CNN trained briefly on upsampled digits, INT8 within 1 point."""
import pytest
import torch

from compressor.measure.parity import compare
from compressor.stages.quantize.int8 import QuantizeInt8, QuantizeInt8Params
from compressor.targets.onnx.export import export_onnx
from compressor.targets.onnxruntime import OrtEngine
from compressor.testing import context, digits
from compressor.training.loop import accuracy, fit

pytestmark = pytest.mark.slow


def test_resnet18_int8_engine_within_one_point(tmp_path):
    import torchvision

    torch.manual_seed(0)
    data = digits(image_size=32, channels=3)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    fit(model, data.train, epochs=2, lr=3e-3)  # about 95% top-1: enough for a 1-point budget to mean something
    model.eval()
    fp32_top1 = accuracy(model, data.val)
    assert fp32_top1 >= 0.9
    fp32_path = export_onnx(model, data.example_input(), tmp_path / "fp32.onnx")

    stage = QuantizeInt8()
    stage.params = QuantizeInt8Params()
    ctx = context(data, model)
    quantized = stage.apply(model, ctx)
    quantized_outputs = sum(getattr(m, "quantize_output", False) for m in quantized.modules())
    path = export_onnx(quantized, data.example_input(), tmp_path / "int8.onnx")
    engine = OrtEngine(path, precision="int8")

    right = total = 0
    for x, y in data.val:
        right += int((engine(x.numpy()).argmax(1) == y.numpy()).sum())
        total += len(y)
    assert right / total >= fp32_top1 - 0.01
    assert engine.path.stat().st_size <= 0.27 * fp32_path.stat().st_size
    # every conv runs in integers, the 12 that feed residual Adds too (8 block outputs, 3 downsamples,
    # the stem): their outputs are quantized in the PyTorch model, so the engine computes what it does
    kernels = engine.kernels()
    assert kernels.get("QLinearConv") == 20 and quantized_outputs == 12, (kernels, quantized_outputs)
    assert not {"Conv", "FusedConv"} & set(kernels), kernels
    x = torch.cat([x for x, _ in data.val])[:256]
    with torch.no_grad():
        ref = quantized(x).numpy()
    assert compare(engine(x.numpy()), ref, "int8", classifier=True)["passed"]
