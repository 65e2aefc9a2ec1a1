"""The openvino target on the digits CNN: FP32 parity, INT8 that really runs integer kernels,
FP16 weights, a full CLI run, load_engine/bench on it, and validation refusals."""
import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import compressor
from compressor.stages.quantize.int8 import QuantizeInt8, QuantizeInt8Params
from compressor.targets.openvino import OpenVinoParams, OpenVinoTarget, OvEngine, import_openvino
from compressor.testing import context, digits, digits_cnn
from conftest import cli, load_report, run_dirs

try:  # imported as the target imports it, without OpenVINO's import-time telemetry
    import_openvino()
except ImportError:
    pytest.skip("OpenVINO is not installed (pip install openvino, or compressor[openvino])", allow_module_level=True)


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def fp32_model():
    return digits_cnn()


def build(model, data, out_dir, **params):
    target = OpenVinoTarget()
    target.params = OpenVinoParams(**params)
    ctx = context(data, model)
    return target.build(model, ctx, out_dir), ctx


def val_arrays(data):
    xs, ys = zip(*data.val)
    return torch.cat(xs), torch.cat(ys).numpy()


def top1(engine, data):
    x, y = val_arrays(data)
    return float((np.asarray(engine(x.numpy())).argmax(1) == y).mean())


def test_fp32_matches_pytorch_at_batch_1_and_many(data, fp32_model, tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"another target's artifact")
    engine, ctx = build(fp32_model, data, tmp_path, precision="fp32")
    x, _ = val_arrays(data)
    with torch.no_grad():
        ref = fp32_model(x).numpy()
    out = engine(x.numpy())  # the whole validation split in one batch
    one = engine(x[:1].numpy())
    assert out.shape == ref.shape and one.shape == (1, 10)
    assert np.abs(out - ref).max() < 1e-4 and np.abs(one - ref[:1]).max() < 1e-4
    assert engine.provider == "openvino:CPU" and engine.precision == "fp32" and engine.inference_precision == "f32"
    assert engine.input_shape[1:] == [1, 8, 8] and engine.input_shape[0] == -1  # dynamic batch
    # the IR, next to what was there: no ONNX of ours, no staging folder left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.onnx", "model.xml"]
    assert (tmp_path / "model.onnx").read_bytes() == b"another target's artifact"
    assert ctx.notes["kernels"].get("Convolution:f32") == 3 and ctx.notes["integer_kernels"] == 0


def test_int8_runs_integer_kernels_within_two_points(data, fp32_model, tmp_path):
    stage = QuantizeInt8()
    stage.params = QuantizeInt8Params(calibration_batches=4)
    ctx = context(data, fp32_model)
    quantized = stage.apply(copy.deepcopy(fp32_model), ctx)
    engine, notes = build(quantized, data, tmp_path, precision="int8")
    kernels = notes.notes["kernels"]
    # every conv and both linears run with u8 activations x i8 weights; none stays float
    integer = {k: v for k, v in kernels.items() if k.split(":")[1] in ("u8", "i8")}
    assert sum(v for k, v in integer.items() if k.startswith("Convolution:")) == 3, kernels
    assert sum(v for k, v in integer.items() if k.startswith("FullyConnected:")) == 2, kernels
    assert not {"Convolution:f32", "FullyConnected:f32"} & set(kernels), kernels
    assert notes.notes["integer_kernels"] == 5 and engine.kernels() == kernels
    fp32_top1 = float((fp32_model(val_arrays(data)[0]).argmax(1).numpy() == val_arrays(data)[1]).mean())
    assert top1(engine, data) >= fp32_top1 - 0.02
    # reopened from disk: the precision comes back from the IR's rt_info, the outputs are the same
    again = OpenVinoTarget.load(tmp_path / "model.xml")
    x = val_arrays(data)[0][:8].numpy()
    assert again.precision == "int8" and np.array_equal(again(x), engine(x))
    assert (tmp_path / "model.bin").stat().st_size < 0.5 * 4 * sum(p.numel() for p in fp32_model.parameters())


def test_fp16_keeps_half_weights(data, fp32_model, tmp_path):
    half = copy.deepcopy(fp32_model).half()
    engine, ctx = build(half, data, tmp_path, precision="fp16")
    assert engine.precision == "fp16" and engine.input_dtype == np.float16
    # half-size weights on disk; computed in f16 only where the CPU has FP16 arithmetic
    assert (tmp_path / "model.bin").stat().st_size < 0.6 * 4 * sum(p.numel() for p in fp32_model.parameters())
    assert ctx.notes["inference_precision"] in ("f16", "f32")
    x, _ = val_arrays(data)
    with torch.no_grad():
        ref = half(x.half()).float().numpy()
    assert np.abs(np.asarray(engine(x.numpy()), np.float32) - ref).max() < 2e-2 * max(1.0, np.abs(ref).max())
    assert OpenVinoTarget.load(tmp_path / "model.xml").precision == "fp16"


def test_fp16_run_through_the_runner(tmp_path):
    report, engine = compressor.compress("default", ["target=openvino", "+stage@stages.h=quantize_fp16", "pipeline=[h]",
                                                     "eval.iters=5"], output_dir=tmp_path)
    e = report["engine"]
    assert report["status"] == "ok" and e["precision"] == "fp16" and e["parity"]["passed"], e
    assert e["size_bytes"] < 0.55 * report["baseline"]["size_bytes"] and engine.precision == "fp16"


def test_unsupported_precision_and_device_refused(cli_inproc):
    proc = cli_inproc("validate", "default", "target=openvino", "target.precision=int4")
    assert proc.returncode == 2 and "target.precision" in proc.stderr and "int4" in proc.stderr, proc.stderr
    # a pipeline leaving a precision OpenVINO has no kernels for here
    proc = cli_inproc("validate", "default", "target=openvino", "+stage@stages.q2=quantize_dynamic", "pipeline=[q2]")
    assert proc.returncode == 2 and "target.precision" in proc.stderr and "int8_dynamic" in proc.stderr, proc.stderr
    proc = cli_inproc("validate", "default", "target=openvino", "target.device=TPU")
    assert proc.returncode == 2 and "target.device" in proc.stderr, proc.stderr
    proc = cli_inproc("validate", "default", "target=openvino")
    assert proc.returncode == 0 and "openvino (int8)" in proc.stdout, proc.stdout + proc.stderr


def test_openvino_imported_without_telemetry(tmp_path):
    """`import openvino` alone writes ~/intel/openvino_ga_cid and posts a usage event; ours must not."""
    code = ("import sys; from compressor.targets.openvino import import_openvino; import_openvino(); "
            "print('openvino_telemetry' in sys.modules)")
    import subprocess

    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.run([sys.executable, "-c", code], env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
    assert list(home.iterdir()) == []


def test_missing_openvino_refused_at_validation_in_one_line(cli_inproc, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    proc = cli_inproc("validate", "default", "target=openvino")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0] == "error: target: OpenVINO is not installed: pip install openvino (or compressor[openvino])"
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def openvino_run(tmp_path_factory):
    """The default recipe (prune, finetune, quantize) built for OpenVINO through the CLI."""
    cwd = tmp_path_factory.mktemp("openvino_run")
    proc = cli("run", "target=openvino", cwd=cwd)
    dirs = run_dirs(cwd)
    return proc, (dirs[0] if dirs else None), cwd


@pytest.mark.slow  # 20-50 s on 2 cores, most of it the recipe's fine-tuning
def test_cli_run_load_engine_and_bench(openvino_run):
    proc, run_dir, cwd = openvino_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = load_report(run_dir)
    e = r["engine"]
    assert r["status"] == "ok" and e["target"] == "openvino" and e["precision"] == "int8", e
    assert e["path"] == "engine/model.xml" and e["provider"] == "openvino:CPU"
    assert e["parity"]["passed"] and e["notes"]["integer_kernels"] >= 5, e
    assert (run_dir / "engine" / "model.xml").is_file() and (run_dir / "engine" / "model.bin").is_file()
    assert sorted(p.name for p in (run_dir / "engine").iterdir()) == ["model.bin", "model.xml"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "engine/model.xml" in json.dumps(manifest) and "engine/model.bin" in json.dumps(manifest)

    engine = compressor.load_engine(run_dir)
    assert isinstance(engine, OvEngine) and engine.precision == "int8"
    x = np.zeros((3, 1, 8, 8), np.float32)
    assert engine(x).shape == (3, 10)
    assert compressor.load_engine(run_dir / "engine").path.name == "model.xml"  # not model.bin
    proc = cli("bench", str(run_dir), cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert "openvino:CPU" in proc.stdout and "int8" in proc.stdout
