"""The `onnx` model source (issue "Model source `onnx`"): ONNX files written by other tools (a Keras
CNN exported by tf2onnx, a scikit-learn MLP exported by skl2onnx: tests/data/make_keras_digits_onnx.py)
converted to PyTorch, run through the real quantize and prune stages to an ONNX Runtime engine,
and compared with the ORIGINAL file run by ONNX Runtime."""
import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from compressor.errors import UserError
from compressor.measure.parity import compare
from compressor.models.onnx_file import OnnxParams, build, source_parity
from compressor.run.checkpoint import load_checkpoint, save_checkpoint
from compressor.stages.prune.magnitude import PruneMagnitude, PruneMagnitudeParams
from compressor.stages.prune.structured import PruneStructured, PruneStructuredParams
from compressor.stages.quantize.int8 import QuantizeInt8, QuantizeInt8Params
from compressor.targets.onnxruntime import OnnxRuntimeParams, OnnxRuntimeTarget
from compressor.testing import context, digits as digits_data, params, stage

from conftest import ROOT

KERAS = ROOT / "tests" / "data" / "keras_digits_cnn.onnx"
SKLEARN = ROOT / "tests" / "data" / "sklearn_digits_mlp.onnx"
# the Keras CNN's layers, named after their ONNX nodes
CONV1, CONV2 = "sequential_1/conv2d_1/BiasAdd", "sequential_1/conv2d_1_2/BiasAdd"
DENSE1, DENSE2 = "sequential_1/dense_1/MatMul", "sequential_1/dense_1_2/MatMul"


@pytest.fixture(scope="module")
def digits():
    return digits_data()


@pytest.fixture(scope="module")
def val(digits):
    return torch.cat([x for x, _ in digits.val]), torch.cat([y for _, y in digits.val])


def onnx_model(path=KERAS, **keys):
    return build(params(OnnxParams, path=str(path), **keys))


def original(path, x: np.ndarray, output: str | None = None) -> np.ndarray:
    """The ONNX file itself, run by ONNX Runtime."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([output] if output else None, {session.get_inputs()[0].name: x})[0]


def run(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


# ---------------------------------------------------------------- conversion


def test_keras_cnn_converts_to_torch_layers_that_match_the_file(val):
    model = onnx_model()
    kinds = {n: type(m).__name__ for n, m in model.named_modules()}
    assert [kinds[n] for n in (CONV1, CONV2, DENSE1, DENSE2)] == ["Conv2d", "Conv2d", "Linear", "Linear"]
    # tf2onnx's channels-last Flatten (Transpose + Reshape to a computed shape) became nn.Flatten,
    # and no MatMul is left outside an nn.Linear: the stages see every weight
    assert "Flatten" in kinds.values() and not {"OnnxMatMul", "OnnxTranspose", "OnnxShape"} & set(kinds.values())
    parity = model.source_parity
    assert parity["statistic"] == "relative_error" and parity["value"] < 1e-5 and parity["samples"] == 7
    assert parity["runtime"] == f"onnxruntime {ort.__version__}"
    assert copy.deepcopy(model).source_parity == parity  # the runner's teacher is a deep copy
    x, y = val
    ref, out = original(KERAS, x.numpy()), run(model, x)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5
    assert (out.argmax(1) == ref.argmax(1)).all() and (ref.argmax(1) == y.numpy()).mean() >= 0.95


def test_sklearn_mlp_cut_at_probabilities(val):
    model = onnx_model(SKLEARN, output="probabilities")
    kinds = [type(m).__name__ for m in model.modules()]
    assert kinds.count("Linear") == 2 and "Softmax" in kinds  # MatMul + Add pairs folded into Gemm
    assert model.source_parity["value"] < 1e-5
    x = val[0].reshape(len(val[0]), -1).numpy()
    probs = run(model, torch.from_numpy(x))
    assert np.abs(probs - original(SKLEARN, x, "probabilities")).max() < 1e-5
    assert (probs.argmax(1) == original(SKLEARN, x, "label")).all()  # the branch cut off, as the file computes it


def test_a_conversion_that_disagrees_with_the_file_is_refused():
    model = onnx_model()
    with torch.no_grad():
        model.get_submodule(DENSE2).bias.add_(0.5)  # what a converter bug would look like
    with pytest.raises(UserError) as e:
        source_parity(model, str(KERAS), "logits", "keras_digits_cnn.onnx")
    assert str(e.value).startswith("model.path: keras_digits_cnn.onnx: the converted model differs from the ONNX file")


def test_a_newer_opset_and_weights_behind_constant_and_identity_nodes(tmp_path):
    # opset 21: onnx2torch registers Identity up to version 16, so the graph goes down to opset 17
    # first; the conv reads its weights through a Constant node and its bias through an Identity
    # (as torch.onnx writes shared tensors), which onnx2torch would not find among the initializers
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 1, 3, 3], rng.standard_normal(36).tolist())
    bias = helper.make_tensor("b", TensorProto.FLOAT, [4], rng.standard_normal(4).tolist())
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["w_const"], value=weight), helper.make_node("Identity", ["b"], ["b_id"]),
         helper.make_node("Conv", ["x", "w_const", "b_id"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Identity", ["c"], ["i"]), helper.make_node("Relu", ["i"], ["y"])],
        "newer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])], [bias])
    path = tmp_path / "newer.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    model = onnx_model(path=path)
    assert [type(m).__name__ for m in model.modules()].count("Conv2d") == 1
    assert model.source_parity["value"] < 1e-6


# ---------------------------------------------------------------- stages and the engine


def test_int8_engine_agrees_with_the_original_file(digits, val, tmp_path):
    model = onnx_model()
    ctx = context(digits, copy.deepcopy(model), evaluate="top1")
    quantized = stage(QuantizeInt8, params(QuantizeInt8Params)).apply(model, ctx)
    assert ctx.notes["quantized_layers"] == 4 and not ctx.notes["float_layers"]
    engine = stage(OnnxRuntimeTarget, params(OnnxRuntimeParams, precision="int8")).build(quantized, ctx, tmp_path)
    assert not {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul"} & set(ctx.notes["kernels"]), ctx.notes["kernels"]
    x, y = val
    out, ref = engine(x.numpy()), original(KERAS, x.numpy())
    stats = compare(out, ref, "int8", classifier=True)
    print(f"INT8 engine vs the Keras file: relative error {stats['relative_error']:.4f}, "
          f"top-1 agreement {stats['agreement']:.4f}, engine top-1 {(out.argmax(1) == y.numpy()).mean():.4f}")
    # Tolerance: 8 quantizers (4 layers' per-channel int8 weights and uint8 inputs) each add rounding
    # noise of about one 8-bit step relative to the signal (2^-8); independent, they add in
    # quadrature: sqrt(8) * 2^-8 = 0.011; x4 for layers amplifying their inputs' noise -> 0.05.
    # Measured 0.007; a wrong scale, layout or dropped layer gives > 0.2.
    assert stats["relative_error"] <= 0.05
    assert stats["agreement"] >= 0.95
    # a run's checkpoint rebuilds it: convert the file again, swap in the quantized layers, load the weights
    save_checkpoint(quantized, tmp_path / "model.safetensors", {"kind": "onnx", "path": str(KERAS)})
    rebuilt = load_checkpoint(tmp_path / "model.safetensors")
    assert np.array_equal(run(rebuilt, x), run(quantized, x))


def kept(new: torch.Tensor, old: torch.Tensor) -> list[int]:
    """Which rows of `old` the rows of `new` are (pruning keeps rows, in order)."""
    return [next(i for i in range(len(old)) if torch.equal(new[j], old[i])) for j in range(len(new))]


def test_structured_pruning_removes_whole_channels_through_the_converted_flatten(digits, val, tmp_path):
    model = onnx_model()
    before = copy.deepcopy(model)
    ctx = context(digits, before, evaluate="top1")
    pruned = stage(PruneStructured, params(PruneStructuredParams, ratio=0.5)).apply(model, ctx)
    assert ctx.notes["widths"] == {CONV1: "8->4", CONV2: "16->8", DENSE1: "32->16"}
    w = {n: pruned.get_submodule(n).weight.detach() for n in (CONV1, CONV2, DENSE1, DENSE2)}
    w0 = {n: before.get_submodule(n).weight.detach() for n in (CONV1, CONV2, DENSE1, DENSE2)}
    kept1 = kept(w[CONV1], w0[CONV1])
    kept2 = kept(w[CONV2], w0[CONV2][:, kept1])
    features = [c * 16 + s for c in kept2 for s in range(16)]  # channels-first flatten of 4x4 maps
    kept3 = kept(w[DENSE1], w0[DENSE1][:, features])
    assert torch.equal(w[DENSE2], w0[DENSE2][:, kept3])
    # the pruned model computes what the original does with the removed units' outputs zeroed
    with torch.no_grad():
        for name, keep in ((CONV1, kept1), (CONV2, kept2), (DENSE1, kept3)):
            layer, gone = before.get_submodule(name), [i for i in range(len(w0[name])) if i not in keep]
            layer.weight[gone] = 0
            layer.bias[gone] = 0
    x = val[0]
    assert np.allclose(run(pruned, x), run(before, x), atol=1e-5)
    save_checkpoint(pruned, tmp_path / "model.safetensors", {"kind": "onnx", "path": str(KERAS)})
    assert np.array_equal(run(load_checkpoint(tmp_path / "model.safetensors"), x), run(pruned, x))
    engine = stage(OnnxRuntimeTarget, params(OnnxRuntimeParams)).build(pruned, ctx, tmp_path)
    assert compare(engine(x.numpy()), run(pruned, x), "fp32", classifier=True)["passed"]


def test_magnitude_pruning_on_the_converted_model(digits, val):
    model = onnx_model()
    ctx = context(digits, copy.deepcopy(model), evaluate="top1")
    pruned = stage(PruneMagnitude, params(PruneMagnitudeParams, ratio=0.5)).apply(model, ctx)
    assert set(ctx.notes["layer_sparsity"]) == {CONV1, CONV2, DENSE1, DENSE2}
    weights = [pruned.get_submodule(n).weight for n in ctx.notes["layer_sparsity"]]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.5, abs=0.01)
    x, y = val
    assert (run(pruned, x).argmax(1) == y.numpy()).mean() >= 0.9


# ---------------------------------------------------------------- errors


def one_line_error(**keys) -> str:
    with pytest.raises(UserError) as e:
        onnx_model(**keys)
    assert len(e.value.problems) == 1 and "\n" not in str(e.value)
    return str(e.value)


def test_path_errors(tmp_path):
    assert one_line_error(path="") == "params.path: give the ONNX file to compress"
    assert one_line_error(path=tmp_path / "model.pt") == f"params.path: expected an .onnx file, got {tmp_path / 'model.pt'}"
    assert one_line_error(path=tmp_path / "none.onnx") == f"params.path: file not found: {tmp_path / 'none.onnx'}"
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(bytes(range(256)) * 8)
    message = one_line_error(path=junk)
    assert message.startswith("params.path: ") and str(junk) in message and "not an ONNX model" in message


def test_unsupported_op_is_named_with_its_domain_and_a_cut_that_avoids_it(tmp_path):
    # a graph with an ai.onnx.ml op (ONNX Runtime runs it; onnx2torch has no converter for it)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Scaler", ["r"], ["y"], domain="ai.onnx.ml",
                                                                    offset=[0.0, 0.0], scale=[2.0, 2.0])],
        "scaler", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])])
    path = tmp_path / "scaler.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                       helper.make_opsetid("ai.onnx.ml", 3)]), str(path))
    message = one_line_error(path=path)
    assert message == (f"params.path: {path}: onnx2torch cannot convert op Scaler (domain ai.onnx.ml, opset 3); "
                       "cut the graph before it with model.output=TENSOR, or export the model without it")
    assert onnx_model(path=path, output="r").source_parity["value"] == 0  # cut before it: just the Relu
    # skl2onnx's classifier: its first output, label, needs ArrayFeatureExtractor; probabilities does not
    assert one_line_error(path=SKLEARN) == (
        f"params.path: {SKLEARN}: onnx2torch cannot convert op ArrayFeatureExtractor (domain ai.onnx.ml, opset 1); "
        "cut the graph before it with model.output=probabilities")
    assert one_line_error(path=SKLEARN, output="probabilitys") == (
        f"params.output: {SKLEARN} has no tensor 'probabilitys' (did you mean 'probabilities'?); "
        "graph outputs: label, probabilities")


def test_external_data_outside_the_folder_is_refused(tmp_path):
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    weight.data_location = TensorProto.EXTERNAL
    del weight.float_data[:]
    weight.external_data.add(key="location", value="../outside.bin")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])], [weight])
    path = tmp_path / "model.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert "'../outside.bin', which is not a file inside the model's folder" in one_line_error(path=path)


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_recipe_with_an_onnx_file_to_an_int8_engine(tmp_path, val):
    from compressor.api import compress

    report, engine = compress(None, ["model=onnx", f"model.path={KERAS}", "pipeline=[quantize]"], output_dir=tmp_path)
    assert report["status"] == "ok", report["gates"]
    assert report["engine"]["precision"] == "int8" and report["engine"]["parity"]["passed"]
    x = val[0].numpy()
    out, ref = engine(x), original(KERAS, x)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) <= 0.05  # the tolerance derived above


def test_validate_names_a_file_that_is_not_onnx(tmp_path, cli_inproc):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xff" * 100)
    result = cli_inproc("validate", "model=onnx", f"model.path={junk}")
    assert result.returncode != 0
    assert f"model.path: {junk} is not an ONNX model" in result.stdout + result.stderr
