"""Python API, gates, bench and report commands on real runs."""

import numpy as np
import pytest

import compressor
from conftest import cli, load_report, run_dirs

pytestmark = pytest.mark.slow


def test_compress_api_returns_report_and_engine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report, engine = compressor.compress("default", overrides=["pipeline=[quantize]"])
    assert report["status"] == "ok" and [s["name"] for s in report["stages"]] == ["quantize"]
    assert report["skipped"] == ["prune", "finetune"]
    run_dir = run_dirs(tmp_path)[0]
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "compressor.log").stat().st_size > 0
    x = np.zeros((2, 1, 8, 8), np.float32)
    assert engine(x).shape == (2, 10) and engine.precision == "int8"


def test_failed_gate_exits_nonzero_and_keeps_artifacts(tmp_path):
    # an FP32 engine cannot be 1000x faster than PyTorch: the speed gate must fail
    proc = cli("run", "pipeline=[]", "eval.min_speedup=1000", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr[-1500:]
    run_dir = run_dirs(tmp_path)[0]
    r = load_report(run_dir)
    assert r["status"] == "failed_gate"
    assert r["gates"]["min_speedup"]["passed"] is False and r["gates"]["min_speedup"]["value"] < 1000
    assert r["engine"]["precision"] == "fp32" and r["engine"]["parity"]["max_abs"] < 1e-3
    assert (run_dir / "engine" / "model.onnx").is_file()
    # the fp32 engine is the float model: same accuracy as the baseline
    assert abs(r["engine"]["metric"]["top1"] - r["baseline"]["metric"]["top1"]) < 1e-9


def test_bench_and_report_commands(tmp_path, default_run):
    _, run_dir = default_run
    proc = cli("bench", str(run_dir / "engine" / "model.onnx"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "CPUExecutionProvider" in proc.stdout and "int8" in proc.stdout
    result = compressor.bench_engine(run_dir, batch=8, iters=5)
    assert result["latency_ms"]["p50"] > 0 and result["throughput"] > 0
    proc = cli("report", str(run_dir), cwd=tmp_path)
    assert proc.returncode == 0 and "default: ok" in proc.stdout
    md = (run_dir / "report.md").read_text()
    assert "| engine | onnxruntime int8 |" in md and "report.png" in md
    proc = cli("bench", str(tmp_path / "missing.onnx"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: engine: engine file not found")


def test_ls_shows_components_and_providers(tmp_path):
    proc = cli("ls", cwd=tmp_path)
    assert proc.returncode == 0
    for name in ("prune_magnitude", "finetune", "quantize_int8", "onnxruntime", "digits_cnn", "digits", "top1", "default"):
        assert name in proc.stdout, name
    assert "compressor" in proc.stdout  # the provider column
