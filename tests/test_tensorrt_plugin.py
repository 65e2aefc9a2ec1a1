"""The TensorRT target plugin (plugins/compressor-tensorrt): registered through its entry point,
validated here without TensorRT, and (on a machine with TensorRT and a GPU) built and run."""
import copy
from importlib import metadata

import numpy as np
import onnx
import pytest
import torch

from compressor.registry import TARGETS
from compressor.stages.quantize.float16 import QuantizeFP16, QuantizeFloatParams
from compressor.stages.quantize.int8 import QuantizeInt8, QuantizeInt8Params
from compressor.targets.onnx.export import export_onnx
from compressor.testing import context, digits, digits_cnn

NO_TENSORRT = ("TensorRT cannot be installed on this machine (its pip package downloads its libraries at install "
               "time) and there is no CUDA GPU")


def _runtime_ready() -> bool:
    from compressor_tensorrt.environment import tensorrt_problem

    return tensorrt_problem() is None and torch.cuda.is_available()


needs_tensorrt = pytest.mark.skipif(not _runtime_ready(), reason=NO_TENSORRT)


def _int8_digits(data):
    model = digits_cnn()
    stage = QuantizeInt8()
    stage.params = QuantizeInt8Params(calibration_batches=4)
    ctx = context(data, model)
    return stage.apply(model, ctx), ctx


# ---------------------------------------------------------------- runs everywhere


def test_registered_through_its_entry_point(cli_inproc):
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="compressor.targets")}
    assert eps.get("tensorrt") == "compressor_tensorrt.target"
    entry = TARGETS.get("tensorrt")
    assert entry.provider == "compressor-tensorrt"
    assert entry.obj.suffixes == (".plan",) and "int8" in entry.obj.precisions
    proc = cli_inproc("ls", "targets")
    assert proc.returncode == 0
    row = next(line for line in proc.stdout.splitlines() if line.split()[:1] == ["tensorrt"])
    assert "compressor-tensorrt" in row


def test_validate_names_what_to_install(cli_inproc):
    proc = cli_inproc("validate", "target=tensorrt")
    if _runtime_ready():
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: target:") and "pip install compressor-tensorrt[tensorrt]" in lines[0], lines[0]
    assert "TensorRT is not installed" in lines[0] or "no CUDA GPU" in lines[0], lines[0]


def test_requires_message_names_the_extra():
    from compressor_tensorrt.target import TensorRTParams, TensorRTTarget

    problems = TensorRTTarget.requires(TensorRTParams(precision="int8"))
    if _runtime_ready():
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0][0] == ""
        assert "pip install compressor-tensorrt[tensorrt]" in problems[0][1]


def test_bad_params_are_refused_naming_their_keys(cli_inproc):
    proc = cli_inproc("validate", "target=tensorrt", "target.precision=int4")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: target.precision:") and "int4" in lines[0], lines
    proc = cli_inproc("validate", "target=tensorrt", "target.opt_batch=128", "target.workspace_gb=0")
    assert proc.returncode == 2
    assert "target.opt_batch" in proc.stderr and "target.workspace_gb" in proc.stderr


def test_plugin_recipe_is_listed(cli_inproc):
    proc = cli_inproc("ls", "recipes")
    assert "digits_tensorrt" in proc.stdout


def test_load_engine_dispatches_plan_files_to_the_plugin(tmp_path):
    from compressor import load_engine
    from compressor.errors import UserError

    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not an engine")
    if _runtime_ready():
        with pytest.raises(UserError, match="cannot load"):
            load_engine(plan)
    else:
        with pytest.raises(UserError, match="compressor-tensorrt"):
            load_engine(plan)


def test_int8_graph_rewritten_for_tensorrt_runs_and_agrees(tmp_path):
    """The Q/DQ form TensorRT takes (int8 activations with zero point 0, float biases), checked
    with ONNX Runtime: same predictions as the fake-quantized PyTorch model."""
    import onnxruntime as ort

    from compressor_tensorrt.qdq import has_int8_qdq, to_tensorrt_qdq

    data = digits()
    model, _ = _int8_digits(data)
    path = export_onnx(model, data.example_input(), tmp_path / "int8.onnx")
    graph, stats = to_tensorrt_qdq(onnx.load(str(path)))
    assert stats["activations_to_int8"] >= 5 and stats["biases_to_float"] == 5, stats
    assert has_int8_qdq(graph)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.graph.initializer}
    for node in graph.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits[node.input[2]] if len(node.input) > 2 and node.input[2] in inits else None
            assert zp is None or (zp.dtype == np.int8 and not zp.any()), node.name
            assert inits.get(node.input[0], np.zeros(1, np.int8)).dtype != np.int32, node.name
    assert {o.domain for o in graph.opset_import} <= {"", "ai.onnx"}
    out = tmp_path / "int8.trt.onnx"
    onnx.save(graph, str(out))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    same = total = 0
    with torch.no_grad():
        for x, _ in data.val:
            ref = model(x).numpy()
            got = session.run(None, {"input": x.numpy()})[0]
            same += int((got.argmax(1) == ref.argmax(1)).sum())
            total += len(x)
            assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
    assert same / total >= 0.98


# ---------------------------------------------------------------- needs TensorRT and a GPU


@needs_tensorrt
def test_fp16_engine_parity_timing_cache_and_load_engine(tmp_path):
    from compressor import load_engine
    from compressor_tensorrt.target import TensorRTParams, TensorRTTarget

    data = digits()
    fp32 = digits_cnn()
    stage = QuantizeFP16()
    stage.params = QuantizeFloatParams()
    fp16 = stage.apply(copy.deepcopy(fp32), context(data, fp32))
    cache = tmp_path / "timing.cache"
    target = TensorRTTarget()
    target.params = TensorRTParams(timing_cache=str(cache), max_batch=32)
    ctx = context(data, fp32)
    engine = target.build(fp16, ctx, tmp_path / "engine")
    assert (tmp_path / "engine" / "model.plan").is_file()
    assert cache.is_file() and cache.stat().st_size > 0
    assert engine.precision == "fp16" and engine.provider.startswith("tensorrt:")
    assert ctx.notes["precision_flags"]["network"] == "strongly_typed"
    assert ctx.notes["tensorrt_version"].startswith("10.") and ctx.notes["compute_capability"]
    x, _ = next(iter(data.val))  # 64 samples: more than max_batch, so run in two chunks
    with torch.no_grad():
        ref = fp32(x).numpy()
    out = np.asarray(engine(x.numpy()), dtype=np.float32)
    assert np.abs(out - ref).max() <= 2e-2 * max(1.0, np.abs(ref).max())
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.98

    loaded = load_engine(tmp_path / "engine" / "model.plan")
    assert type(loaded).__name__ == "TensorRTEngine" and loaded.precision == "fp16"
    assert loaded.input_shape[1:] == [1, 8, 8]
    np.testing.assert_allclose(np.asarray(loaded(x.numpy()), dtype=np.float32), out, atol=1e-3)

    again = context(data, fp32)  # a second build reads the cache the first one wrote
    target.build(fp16, again, tmp_path / "engine2")
    assert again.notes["timing_cache"]["loaded_bytes"] > 0


@needs_tensorrt
def test_int8_engine_agrees_with_the_quantized_model(tmp_path):
    from compressor_tensorrt.target import TensorRTParams, TensorRTTarget

    data = digits()
    model, ctx = _int8_digits(data)
    target = TensorRTTarget()
    target.params = TensorRTParams(precision="int8", timing_cache=str(tmp_path / "timing.cache"))
    ctx.notes = {}
    engine = target.build(model, ctx, tmp_path / "engine")
    assert engine.precision == "int8" and ctx.notes["onnx_rewrites"]["activations_to_int8"] >= 5
    same = total = right = right_ref = 0
    with torch.no_grad():
        for x, y in data.val:
            ref = model(x).numpy()
            out = np.asarray(engine(x.numpy()), dtype=np.float32)
            same += int((out.argmax(1) == ref.argmax(1)).sum())
            right += int((out.argmax(1) == y.numpy()).sum())
            right_ref += int((ref.argmax(1) == y.numpy()).sum())
            total += len(y)
    assert same / total >= 0.95
    assert right / total >= right_ref / total - 0.02


@needs_tensorrt
@pytest.mark.slow
def test_compress_with_tensorrt_target_end_to_end(tmp_path):
    from compressor import compress, load_engine

    report, engine = compress("default", overrides=["target=tensorrt", f"target.timing_cache={tmp_path / 'tc'}"],
                              output_dir=tmp_path / "run")
    assert report["engine"]["target"] == "tensorrt" and report["engine"]["path"].endswith("model.plan")
    assert report["engine"]["parity"]["passed"], report["engine"]["parity"]
    assert report["engine"]["notes"]["gpu"]
    assert load_engine(tmp_path / "run").provider.startswith("tensorrt:")
