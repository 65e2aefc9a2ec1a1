"""The default recipe end to end through the CLI, asserting on what it wrote."""
import json

import numpy as np
import onnx
import pytest
from safetensors import safe_open

from conftest import load_report

pytestmark = pytest.mark.slow


def test_default_run_succeeds(default_run):
    proc, run_dir = default_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert run_dir is not None and run_dir.parent.name == "default"
    assert "Traceback" not in proc.stdout + proc.stderr


def test_run_writes_only_its_folder(default_run, default_run_home):
    """Nothing beside outputs/<recipe>/<time>/ in the working folder, nothing in HOME (no
    matplotlib font cache, no ONNX Runtime telemetry store)."""
    _, run_dir = default_run
    cwd = run_dir.parents[2]
    assert [p.relative_to(cwd) for p in cwd.rglob("*") if run_dir not in (p, *p.parents)] == \
        [run_dir.parent.parent.relative_to(cwd), run_dir.parent.relative_to(cwd)]
    assert sorted(p.relative_to(default_run_home) for p in default_run_home.rglob("*")) == []


def test_output_folder_layout(default_run):
    _, run_dir = default_run
    for rel in [".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "report.json", "report.md",
                "report.png", "manifest.json", "compressor.log", "engine/model.onnx",
                "checkpoints/1_prune/model.safetensors", "checkpoints/2_finetune/model.safetensors",
                "checkpoints/3_quantize/model.safetensors"]:
        assert (run_dir / rel).is_file(), rel
    assert not list(run_dir.rglob("*.tmp*")), "no temporary files left behind"


def test_report_accuracy_and_size(default_run):
    _, run_dir = default_run
    r = load_report(run_dir)
    assert r["status"] == "ok"
    base, eng = r["baseline"], r["engine"]
    assert base["metric"]["top1"] > 0.97
    # the acceptance bounds of the spine: within 1 point, at most 0.3 of the FP32 size
    assert base["metric"]["top1"] - eng["metric"]["top1"] <= 0.01
    assert eng["size_bytes"] <= 0.3 * base["size_bytes"]
    assert eng["size_bytes"] == (run_dir / "engine/model.onnx").stat().st_size
    assert [s["name"] for s in r["stages"]] == ["prune", "finetune", "quantize"]
    # structural pruning at 0.5 removes channels for real: about a quarter of params and MACs left
    prune = r["stages"][0]
    assert prune["kind"] == "prune_structured"
    assert prune["params"] <= 0.3 * base["params"] and prune["macs"] <= 0.3 * base["macs"]
    assert prune["notes"]["macs_ratio"] == pytest.approx(prune["macs"] / base["macs"], rel=0.05)
    # the acceptance of the pruning issue: at least 8x smaller, and faster than the baseline
    assert eng["size_bytes"] * 8 <= base["size_bytes"]
    assert eng["latency_ms"]["p50"] < base["latency_ms"]["p50"]
    assert eng["provider"] == "CPUExecutionProvider"
    assert eng["parity"]["passed"] and eng["parity"]["agreement"] >= 0.95
    assert eng["latency_ms"]["p50"] > 0 and eng["latency_ms"]["p90"] >= eng["latency_ms"]["p50"]
    assert r["gates"]["max_drop"]["passed"]


def test_engine_runs_integer_kernels(default_run):
    _, run_dir = default_run
    r = load_report(run_dir)
    kernels = r["engine"]["notes"]["kernels"]
    assert kernels.get("QLinearConv", 0) == 3 and kernels.get("QGemm", 0) == 2, kernels
    assert "Conv" not in kernels and "Gemm" not in kernels  # nothing left in float
    ops = {n.op_type for n in onnx.load(str(run_dir / "engine/model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = [i for i in onnx.load(str(run_dir / "engine/model.onnx")).graph.initializer if len(i.dims) > 1]
    assert weights and all(i.data_type == onnx.TensorProto.INT8 for i in weights)


def test_manifest_hashes_match(default_run):
    import hashlib

    _, run_dir = default_run
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["seed"] == 0 and "torch" in m["packages"]
    for a in m["artifacts"]:
        assert hashlib.sha256((run_dir / a["path"]).read_bytes()).hexdigest() == a["sha256"], a["path"]


def test_checkpoints_are_safetensors_with_architecture(default_run):
    from compressor import load_checkpoint

    _, run_dir = default_run
    path = run_dir / "checkpoints/3_quantize/model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["model"])["kind"] == "digits_cnn"
    model = load_checkpoint(path)  # rebuilt without pickle: quant wrappers and folded BN included
    import compressor

    engine = compressor.load_engine(run_dir)
    from compressor.testing import digits

    x, _ = next(iter(digits().val))
    import torch

    with torch.no_grad():
        ref = model(x).numpy()
    out = engine(x.numpy())
    assert (ref.argmax(1) == out.argmax(1)).mean() >= 0.95
    assert np.abs(ref - out).max() < 0.5
