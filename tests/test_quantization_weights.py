"""Weight-only INT8/INT4 (MatMulNBits engines) and the experimental binary/ternary/log2 codes."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from compressor.run.checkpoint import load_checkpoint, save_checkpoint
from compressor.modules.quant import WeightOnly
from compressor.stages.quantize.experimental import QuantizeExperimental, QuantizeExperimentalParams
from compressor.stages.quantize.weight_only import QuantizeWeightOnly, QuantizeWeightOnlyParams
from compressor.targets.onnx.export import export_onnx
from compressor.targets.onnxruntime import OnnxRuntimeTarget, OrtEngine
from compressor.testing import context, digits, digits_cnn, sentiment_csv, tiny_bert
from compressor.training.loop import accuracy


def apply(stage, params, model, data):
    stage.params = params
    ctx = context(data, model)
    return stage.apply(model, ctx), ctx


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    from compressor.data.text import HFDatasetParams, build as build_text
    from compressor.models.huggingface import HuggingFaceParams, build

    tmp = tmp_path_factory.mktemp("bert")
    folder = tiny_bert(tmp / "model")
    data = build_text(HFDatasetParams(train=str(sentiment_csv(tmp / "s.csv")), tokenizer=str(folder), max_length=16))
    return build(HuggingFaceParams(path=str(folder))).eval(), data


def logits(model, x):
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out).numpy()


@pytest.mark.parametrize("bits,group_size,symmetric", [(4, 32, False), (4, 16, True), (8, 64, False)])
def test_weight_only_engine_runs_matmulnbits_and_matches_the_stage(tmp_path, bert, bits, group_size, symmetric):
    model, data = bert
    quantized, ctx = apply(QuantizeWeightOnly(), QuantizeWeightOnlyParams(bits, group_size, symmetric),
                           copy.deepcopy(model), data)
    linears = sum(type(m) is nn.Linear for m in model.modules())
    assert ctx.notes["quantized_layers"] == linears == 14
    # every Linear weight is on the grid: at most 2^bits distinct values per group
    w = next(m for m in quantized.modules() if isinstance(m, WeightOnly))
    groups = w.inner.weight.reshape(w.inner.out_features, -1, group_size)
    assert max(len(torch.unique(g)) for g in groups.reshape(-1, group_size)) <= 2 ** bits

    x = data.example_input(8)
    fp32 = export_onnx(model, x[:1], tmp_path / "fp32.onnx")
    path = export_onnx(quantized, x[:1], tmp_path / "wo.onnx")
    engine = OrtEngine(path)
    assert engine.kernels().get("MatMulNBits") == linears  # ONNX Runtime runs every Linear as MatMulNBits
    assert np.abs(engine(x.numpy()) - logits(quantized, x)).max() < 1e-4  # the engine is the stage's model
    assert np.abs(logits(quantized, x) - logits(model, x)).max() < 0.05  # and close to the float one
    assert path.stat().st_size < 0.5 * fp32.stat().st_size
    assert OnnxRuntimeTarget.load(path).precision == f"int{bits}_weight_only"


def test_weight_only_checkpoint_round_trip_and_digits_accuracy(tmp_path):
    data = digits()
    model = digits_cnn()
    base = accuracy(model, data.val)
    quantized, _ = apply(QuantizeWeightOnly(), QuantizeWeightOnlyParams(bits=4, group_size=32), model, data)
    assert accuracy(quantized, data.val) >= base - 0.01
    path = save_checkpoint(quantized, tmp_path / "m.safetensors", {"kind": "digits_cnn"})
    loaded = load_checkpoint(path)
    assert any(isinstance(m, WeightOnly) for m in loaded.modules())
    x = data.example_input(16)
    assert torch.equal(loaded(x), quantized(x))


@pytest.mark.parametrize("scheme,bits,max_values", [("binary", 4, 2), ("ternary", 4, 3), ("log2", 3, 7)])
def test_experimental_codes_put_weights_on_their_grid(scheme, bits, max_values):
    data = digits()
    torch.manual_seed(0)
    model, ctx = apply(QuantizeExperimental(), QuantizeExperimentalParams(scheme=scheme, bits=bits, epochs=1, lr=1e-4),
                       digits_cnn(), data)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in convs[1:-1]:  # first and last stay float
        for row in m.weight.detach().flatten(1):
            values = torch.unique(row)
            assert len(values) <= max_values, (scheme, values)
            if scheme == "log2":
                nz = values[values != 0].abs()
                assert torch.allclose(torch.exp2(torch.log2(nz).round()), nz)  # powers of two
    assert len(torch.unique(convs[0].weight)) > 100  # the first layer kept its float weights
    top1 = accuracy(model, data.val)
    assert top1 > 0.5, top1  # measured, and far above chance (0.1) after one epoch
    assert ctx.notes["bits_per_weight"] == {"binary": 1.0, "ternary": 1.58, "log2": 3.0}[scheme]
