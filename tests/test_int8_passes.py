"""Static INT8 details that a MobileNet/EfficientNet-style network needs, on tiny models: bias
correction, depthwise convs keeping 8-bit weights under reduce_range, TensorFlow-style SAME
padding (ZeroPad2d before a stride-2 conv) moved into the quantized conv, and 8-bit weights
stored as uint8 where a u8 x s8 kernel would saturate."""
import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from compressor.core.interfaces import DataSplits
from compressor.modules.quant import QuantWrapper, needs_reduce_range
from compressor.stages.quantize.int8 import QuantizeInt8, QuantizeInt8Params, correct_bias, is_depthwise
from compressor.targets.onnx.export import export_onnx
from compressor.targets.onnxruntime import OrtEngine
from compressor.testing import context, tensor_data


def mobile_block() -> nn.Module:
    """stem (asymmetric SAME pad, stride 2) -> expand 1x1 -> depthwise 3x3 -> project 1x1 -> pool -> fc."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 8, 3, stride=2)), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 32, 1), nn.BatchNorm2d(32), nn.ReLU6(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU6(),
        nn.Conv2d(32, 16, 1), nn.BatchNorm2d(16),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    with torch.no_grad():  # BN statistics far from identity: folding gives uneven per-channel ranges
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.05, 4.0)
                m.weight.uniform_(0.2, 3.0)
    return model.eval()


def splits(n: int = 64) -> DataSplits:
    g = torch.Generator().manual_seed(1)
    return tensor_data(torch.randn(n, 3, 32, 32, generator=g), labelled=False)


def quantize(model, data, **params):
    stage = QuantizeInt8()
    stage.params = QuantizeInt8Params(calibration_batches=4, **params)
    ctx = context(data, model)
    return stage.apply(copy.deepcopy(model), ctx), ctx.notes


def test_bias_correction_removes_the_mean_shift_each_layer_adds():
    data = splits()
    model = mobile_block()
    plain, _ = quantize(model, data, bias_correction=False)
    corrected, notes = quantize(model, data)
    assert notes["bias_correction_mean_abs_shift"] > 0
    x = torch.cat([b for b, _ in data.calib])
    with torch.no_grad():
        ref = model(x)
        shift_plain = (plain(x) - ref).mean(0).abs().mean()
        shift_corrected = (corrected(x) - ref).mean(0).abs().mean()
    assert shift_corrected < 0.5 * shift_plain, (shift_corrected, shift_plain)
    # one pass only: a second one would count each layer's shift twice; called again here it
    # measures the same per-layer shift it already removed (the float layer shares the bias)
    again = correct_bias(corrected, [x], torch.device("cpu"))
    assert set(again) == {n for n, m in corrected.named_modules() if isinstance(m, QuantWrapper)}


def test_reduce_range_leaves_depthwise_convs_at_8_bits():
    q, notes = quantize(mobile_block(), splits(), reduce_range="true")
    bits = {n: (m.weight_bits, is_depthwise(m.inner)) for n, m in q.named_modules() if isinstance(m, QuantWrapper)}
    assert notes["reduce_range"] is True
    assert [b for b, dw in bits.values() if dw] == [8]
    assert all(b == 7 for b, dw in bits.values() if not dw), bits


@pytest.mark.parametrize("uint8", [False, True])
def test_same_padding_moves_into_the_quantized_conv_and_uint8_weights_keep_values(tmp_path, uint8):
    data = splits()
    q, _ = quantize(mobile_block(), data, reduce_range="false")
    path = export_onnx(q, data.example_input(1), tmp_path / "m.onnx", uint8_weights=uint8)
    graph = onnx.load(str(path)).graph
    assert "Pad" not in {n.op_type for n in graph.node}
    stem = next(n for n in graph.node if n.op_type == "Conv" and any(a.name == "strides" and list(a.ints) == [2, 2]
                                                                     for a in n.attribute))
    assert next(list(a.ints) for a in stem.attribute if a.name == "pads") == [0, 0, 1, 1]
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    dq = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    kinds = {}
    for n in graph.node:
        if n.op_type in ("Conv", "Gemm") and n.input[1] in dq:
            w = inits[dq[n.input[1]].input[0]]
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            kinds[(n.op_type, group)] = w.dtype
            if w.dtype == np.uint8:
                assert (inits[dq[n.input[1]].input[2]] == 128).all()
    if uint8:  # 8-bit weights of 1x1/3x3 convs and the Linear become uint8; the depthwise conv stays int8
        assert kinds == {("Conv", 1): np.uint8, ("Conv", 32): np.int8, ("Gemm", 1): np.uint8}, kinds
    else:
        assert set(kinds.values()) == {np.dtype(np.int8)}
    engine = OrtEngine(path, precision="int8")
    kernels = engine.kernels()
    # the stride-2 stem, expand and depthwise convs run as QLinearConv; the last conv feeds the
    # float average pool, nothing quantizes its output, so ONNX Runtime keeps it in float
    assert kernels.get("QLinearConv") == 3 and "Pad" not in kernels, kernels
    x = torch.cat([b for b, _ in data.val])
    with torch.no_grad():
        ref = q(x).numpy()
    rel = np.linalg.norm(engine(x.numpy()) - ref) / np.linalg.norm(ref)
    if uint8 or not needs_reduce_range():
        assert rel < 0.02, rel
    else:  # int8 weights up to 127 on a CPU without VNNI: VPMADDUBSW saturates (0.23 here)
        assert rel > 0.05, rel
