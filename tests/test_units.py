"""The stages and export pieces on their own, with real models and data."""
import numpy as np
import pytest
import torch
from torch import nn

from compressor.measure import stats as measure
from compressor.run.checkpoint import load_checkpoint, save_checkpoint
from compressor.models.digits_cnn import packaged_accuracy
from compressor.modules.quant import QuantWrapper
from compressor.stages.prune.magnitude import PruneMagnitude, PruneMagnitudeParams
from compressor.stages.quantize.int8 import QuantizeInt8, QuantizeInt8Params, fold_batchnorm
from compressor.testing import context, digits, digits_cnn, stage
from compressor.training.loop import accuracy, fit


@pytest.fixture(scope="module")
def data():
    return digits()



def test_packaged_reference_model_accuracy(data):
    model = digits_cnn()
    acc = accuracy(model, data.val)
    assert acc == pytest.approx(packaged_accuracy(), abs=1e-9)
    assert acc >= 0.98


def test_digits_split_is_deterministic():
    a, b = digits(), digits()
    assert torch.equal(a.val.dataset.tensors[0], b.val.dataset.tensors[0])
    assert len(a.val.dataset) == 360 and len(a.train.dataset) == 1437


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_prune_magnitude_reaches_ratio(data, scope):
    model = digits_cnn()
    ctx = context(data, model)
    stage(PruneMagnitude, PruneMagnitudeParams(ratio=0.7, scope=scope)).apply(model, ctx)
    assert measure.sparsity(model) == pytest.approx(0.7, abs=0.01)
    assert not any(hasattr(m, "weight_orig") for m in model.modules())  # masks made permanent
    if scope == "layer":
        assert all(v == pytest.approx(0.7, abs=0.01) for v in ctx.notes["layer_sparsity"].values())


def test_prune_exclude_pattern_that_matches_nothing(data):
    from compressor.errors import UserError

    model = digits_cnn()
    with pytest.raises(UserError) as e:
        stage(PruneMagnitude, PruneMagnitudeParams(exclude=["head.*"])).apply(model, context(data, model))
    assert e.value.problems[0].key == "exclude"


def test_finetune_keeps_pruned_weights_at_zero(data):
    model = digits_cnn()
    stage(PruneMagnitude, PruneMagnitudeParams(ratio=0.8)).apply(model, context(data, model))
    before = measure.sparsity(model)
    fit(model, data.train, epochs=1, lr=1e-3)
    assert measure.sparsity(model) >= before - 1e-6


def test_fold_batchnorm_preserves_outputs(data):
    model = digits_cnn()
    x, _ = next(iter(data.val))
    with torch.no_grad():
        ref = model(x)
        assert fold_batchnorm(model) == 3
        out = model(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(ref, out, atol=1e-4)


def test_quantize_int8_close_to_float_and_size(data):
    model = digits_cnn()
    base = accuracy(model, data.val)
    ctx = context(data, model)
    q = stage(QuantizeInt8, QuantizeInt8Params(calibrator="minmax")).apply(model, ctx)
    assert sum(isinstance(m, QuantWrapper) for m in q.modules()) == 5
    assert accuracy(q, data.val) >= base - 0.01
    assert measure.weight_bytes(q) < 0.27 * 4 * measure.count_params(q)


def test_quantized_checkpoint_roundtrip_without_pickle(tmp_path, data):
    model = digits_cnn()
    q = stage(QuantizeInt8, QuantizeInt8Params()).apply(model, context(data, model))
    path = save_checkpoint(q, tmp_path / "m.safetensors", {"kind": "digits_cnn"})
    back = load_checkpoint(path)
    x, _ = next(iter(data.val))
    with torch.no_grad():
        assert torch.equal(q(x), back(x))
    assert isinstance(back.get_submodule("0"), QuantWrapper)


def test_checkpoint_rejects_file_without_metadata(tmp_path):
    from safetensors.torch import save_file

    from compressor.errors import UserError

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "plain.safetensors")


def test_onnx_int8_export_parity_and_int8_weights(tmp_path, data):
    from compressor.targets.onnxruntime import OrtEngine
    from compressor.targets.onnx.export import export_onnx

    model = digits_cnn()
    fp32 = export_onnx(model, data.example_input(), tmp_path / "fp32.onnx")
    q = stage(QuantizeInt8, QuantizeInt8Params()).apply(model, context(data, model))
    int8 = export_onnx(q, data.example_input(), tmp_path / "int8.onnx")
    assert int8.stat().st_size <= 0.27 * fp32.stat().st_size
    engine = OrtEngine(int8, precision="int8")
    kernels = engine.kernels()
    assert kernels.get("QLinearConv") == 3 and kernels.get("QGemm") == 2, kernels
    x, _ = next(iter(data.val))
    with torch.no_grad():
        ref = q(x).numpy()
    out = engine(x.numpy())
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.98
    assert np.abs(out - ref).max() < 0.25 * np.abs(ref).max()


def test_prune_structured_shrinks_and_roundtrips(tmp_path, data):
    from compressor.errors import UserError
    from compressor.stages.prune.structured import PruneStructured, PruneStructuredParams

    model = digits_cnn()
    params_before = measure.count_params(model)
    ctx = context(data, model)
    pruned = stage(PruneStructured, PruneStructuredParams(ratio=0.5, round_to=4)).apply(model, ctx)
    assert measure.count_params(pruned) < 0.3 * params_before
    assert 0.2 < ctx.notes["macs_ratio"] < 0.3
    assert pruned[-1].out_features == 10  # the classifier head keeps every class
    assert all(m.out_channels % 4 == 0 for m in pruned.modules() if isinstance(m, nn.Conv2d))
    path = save_checkpoint(pruned, tmp_path / "p.safetensors", {"kind": "digits_cnn"})
    back = load_checkpoint(path)
    x, _ = next(iter(data.val))
    with torch.no_grad():
        assert torch.equal(pruned.eval()(x), back(x))
    with pytest.raises(UserError) as e:
        stage(PruneStructured, PruneStructuredParams(ignore=["nothing.*"])).apply(digits_cnn(), ctx)
    assert e.value.problems[0].key == "ignore"


def test_gradual_cubic_schedule():
    from compressor.stages.prune.structured import cubic_schedule

    s = cubic_schedule(0.5, 4)
    assert s[0] == 0 and s[-1] == pytest.approx(0.5)
    steps = [b - a for a, b in zip(s, s[1:])]
    assert steps == sorted(steps, reverse=True)  # prunes most at first (AGP)
