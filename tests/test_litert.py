"""The litert target on the digits CNN: an INT8 .tflite that the LiteRT interpreter runs with int8
convs and FCs and that matches our fake-quantized PyTorch model, FP32 parity, FP16 weights, the
size of INT8 against FP32, reopening a built file, and a params refusal."""
import copy

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch")

from ai_edge_litert import schema_py_generated as schema  # noqa: E402

from compressor.errors import UserError  # noqa: E402
from compressor.stages.quantize.int8 import QuantizeInt8, QuantizeInt8Params  # noqa: E402
from compressor.targets.litert import LiteRtParams, LiteRtTarget  # noqa: E402
from compressor.testing import context, digits, digits_cnn, params, stage  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def fp32_model():
    return digits_cnn()


@pytest.fixture(scope="module")
def int8_model(data, fp32_model):
    quantize = stage(QuantizeInt8, params(QuantizeInt8Params, calibration_batches=4))
    return quantize.apply(copy.deepcopy(fp32_model), context(data, fp32_model))


def build(model, data, out_dir, precision):
    ctx = context(data, model)
    engine = stage(LiteRtTarget, params(LiteRtParams, precision=precision, threads=1)).build(model, ctx, out_dir)
    return engine, ctx.notes


@pytest.fixture(scope="module")
def fp32_build(data, fp32_model, tmp_path_factory):
    return build(fp32_model, data, tmp_path_factory.mktemp("fp32"), "fp32")


@pytest.fixture(scope="module")
def int8_build(data, int8_model, tmp_path_factory):
    return build(int8_model, data, tmp_path_factory.mktemp("int8"), "int8")


def val_inputs(data):
    return torch.cat([x for x, _ in data.val])


def compute_ops(path):
    """(op, input type, weight type) of each conv and fully-connected op in the file's main graph; a
    weight a DEQUANTIZE produces has the type of what it dequantizes."""
    model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    graph = model.subgraphs[0]
    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    named = [(ops[max(model.operatorCodes[op.opcodeIndex].builtinCode,
                      model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)], op) for op in graph.operators]
    dequantized = {op.outputs[0]: op.inputs[0] for name, op in named if name == "DEQUANTIZE"}
    kind = lambda t: types[graph.tensors[t].type]  # noqa: E731
    return [(name, kind(op.inputs[0]), kind(dequantized.get(op.inputs[1], op.inputs[1])))
            for name, op in named if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]


def test_int8_runs_integer_convs_and_matches_fake_quant_pytorch(data, int8_model, int8_build):
    engine, notes = int8_build
    assert engine.path.name == "model.tflite" and engine.precision == "int8" and engine.provider == "litert:xnnpack"
    compute = compute_ops(engine.path)  # 3 convs (the first as a depthwise conv: one input channel), 2 linears
    assert len(compute) == 5 and all(t[1:] == ("INT8", "INT8") for t in compute), compute
    assert notes["float_ops"] == {} and notes["layers_matched"] == 5 and notes["layers_unmatched"] == 0
    assert notes["delegate"] == "XNNPACK" and notes["ops"]["QUANTIZE"] == 1 and notes["ops"]["DEQUANTIZE"] == 1

    x = val_inputs(data)
    with torch.no_grad():
        ref = int8_model(x).numpy()
    out = engine(x.numpy())
    assert out.shape == ref.shape and out.dtype == np.float32
    # Same integers, different arithmetic: LiteRT requantizes each layer's int32 sums in integers,
    # PyTorch rounds float sums, so an activation may land one 8-bit step (2^-8 of its range) apart
    # in each of the 5 quantized layers, and the int8 logits add one more step: 6 * 2^-8 (measured 0.007).
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert rel < 6 * 2 ** -8, rel
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.97
    np.testing.assert_array_equal(engine(x[:3].numpy()), out[:3])  # any batch size, same numbers

    reopened = LiteRtTarget.load(engine.path)  # precision read back from the file's tensor types
    assert reopened.precision == "int8" and reopened.input_shape == [-1, 1, 8, 8]
    np.testing.assert_array_equal(reopened(x[:8].numpy()), out[:8])


def test_layers_the_stage_left_float_stay_float(data, fp32_model, tmp_path):
    quantize = stage(QuantizeInt8, params(QuantizeInt8Params, calibration_batches=4, exclude=["15"]))  # the last Linear
    model = quantize.apply(copy.deepcopy(fp32_model), context(data, fp32_model))
    engine, notes = build(model, data, tmp_path, "int8")
    assert [t[2] for t in compute_ops(engine.path)] == ["INT8"] * 4 + ["FLOAT32"]
    assert notes["float_ops"] == {"FULLY_CONNECTED": 1} and notes["layers_float"] == 1
    x = val_inputs(data)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.linalg.norm(engine(x.numpy()) - ref) / np.linalg.norm(ref) < 6 * 2 ** -8


def test_fp32_matches_pytorch(data, fp32_model, fp32_build):
    engine, notes = fp32_build
    x = val_inputs(data)
    with torch.no_grad():
        ref = fp32_model(x).numpy()
    out = engine(x.numpy())
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-4
    assert engine.precision == "fp32" and "float_ops" not in notes
    assert set(notes["tensor_types"]) <= {"FLOAT32", "INT32"}  # INT32: shapes and permutations


def test_fp16_has_float16_weights(data, fp32_model, tmp_path):
    half = copy.deepcopy(fp32_model).half()  # what the fp16 stage leaves
    engine, notes = build(half, data, tmp_path, "fp16")
    # each weight a FLOAT16 constant behind a DEQUANTIZE (to float32): LiteRT's FP16 format
    assert [t[2] for t in compute_ops(engine.path)] == ["FLOAT16"] * 5
    assert notes["tensor_types"]["FLOAT16"] == notes["ops"]["DEQUANTIZE"] == 5
    assert engine.precision == "fp16" and LiteRtTarget.load(engine.path).precision == "fp16"
    x = val_inputs(data)[:64]
    with torch.no_grad():
        ref = half(x.half()).float().numpy()
    # the same FP16 weights; LiteRT computes in float32, PyTorch in float16: parity's FP16 tolerance
    assert np.linalg.norm(engine(x.numpy()) - ref) / np.linalg.norm(ref) < 2 ** -11 * 16


def test_int8_file_is_smaller(fp32_build, int8_build):
    ratio = fp32_build[0].path.stat().st_size / int8_build[0].path.stat().st_size
    # 3.7x measured: int8 weights, plus per-channel scales and int32 biases that weigh on a model
    # this small (efficientnet-lite0: 3.5x)
    assert ratio >= 3, ratio


def test_negative_threads_is_a_params_problem():
    with pytest.raises(UserError) as e:
        params(LiteRtParams, threads=-1)
    assert [p.key for p in e.value.problems] == ["params.threads"]
    assert LiteRtTarget.requires(LiteRtParams()) == []


class _Residual(torch.nn.Module):
    """Two residual blocks, as in MobileNet/EfficientNet: each sum is both the stream the next block
    adds to and the input of the layer that reads it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU6())
        self.a = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))

    def forward(self, x):
        x = self.stem(x)
        x = x + self.a(x)
        x = x + self.b(x)
        return self.head(x)


def test_residual_sums_keep_their_whole_range(data, tmp_path):
    """A residual sum is one int8 tensor in LiteRT: it gets the union of the reading layer's range
    and the sum's calibrated min/max, so the stream is not clipped where the stage's model keeps it
    float; all integer, and close to the fake-quantized model."""
    model = _Residual().eval()
    quantize = stage(QuantizeInt8, params(QuantizeInt8Params, calibration_batches=2))
    int8 = quantize.apply(copy.deepcopy(model), context(data, model))
    engine, notes = build(int8, data, tmp_path, "int8")
    assert notes["float_ops"] == {} and notes["residual_sums_widened"] >= 1, notes
    x = val_inputs(data)[:64]
    with torch.no_grad():
        ref = int8(x).numpy()
    out = np.concatenate([engine(x[i:i + 1].numpy()) for i in range(len(x))])
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 2 ** -4  # 8-bit activations, a few roundings deep
