"""torch_export target and several targets in one run: every engine built, run on the
validation data, checked against PyTorch and timed, each with its own gates."""
import numpy as np
import pytest
import torch

from compressor import load_engine
from tests.conftest import cli, load_report, run_dirs

FAST = ["eval.iters=5", "eval.warmup=1", "stages.finetune.epochs=1"]


@pytest.fixture(scope="module")
def two_engines(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("two_engines")
    proc = cli("run", "targets=[onnxruntime,torch_export]", "pipeline=[prune,finetune]", *FAST, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run_dirs(cwd)[0]


def test_one_recipe_builds_and_reports_several_engines(two_engines):
    report = load_report(two_engines)
    engines = report["engines"]
    assert [e["target"] for e in engines] == ["onnxruntime", "torch_export"]
    assert report["engine"] == engines[0]  # the contract's `engine` is the first target's
    for e in engines:
        assert (two_engines / e["path"]).is_file() and e["size_bytes"] > 0
        assert e["parity"]["passed"] and e["metric"]["top1"] > 0.95
        assert e["throughput"]["batch"] == 32 and e["throughput"]["samples_per_s"] > 0
    assert engines[0]["path"] == "engine/model.onnx" and engines[1]["path"] == "engine/model.pt2"
    # each engine's size counts its own files only
    assert engines[0]["size_bytes"] == (two_engines / "engine/model.onnx").stat().st_size
    assert {"parity", "max_drop", "parity@torch_export", "max_drop@torch_export"} <= set(report["gates"])
    md = (two_engines / "report.md").read_text()
    assert "## Engine: onnxruntime fp32" in md and "## Engine: torch_export fp32" in md


def test_several_engines_print_a_table_legible_at_80_columns(two_engines):
    import os

    from rich.console import Console

    from compressor.report.writer import print_table

    console = Console(width=80, record=True, file=open(os.devnull, "w"))
    print_table(load_report(two_engines), console)
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 and "…" not in line for line in lines), "\n".join(lines)
    assert any("onnxruntime fp32" in line for line in lines) and any("torch_export fp32" in line for line in lines)
    assert any(line.startswith("gate parity@torch_export: ") for line in lines)


def test_exported_program_reloads_with_a_dynamic_batch(two_engines):
    engine = load_engine(two_engines / "engine" / "model.pt2")
    assert engine.precision == "fp32" and engine.provider == "torch.export:cpu"
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    onnx = load_engine(two_engines / "engine" / "model.onnx")
    assert engine(x).shape == (5, 10)
    assert np.abs(engine(x) - onnx(x)).max() < 1e-4  # the same model, two runtimes


def test_bench_command_reads_every_engine_of_a_run(two_engines, cli_inproc):
    for name in ("model.onnx", "model.pt2"):
        r = cli_inproc("bench", str(two_engines / "engine" / name), "--batch", "4")
        assert r.returncode == 0 and "throughput/s (b=4)" in r.stdout


def test_torch_export_runs_bf16(tmp_path):
    from compressor.api import compress

    report, engine = compress(None, ["target=torch_export", "+stage@stages.half=quantize_bf16",
                                     "pipeline=[half]", "eval.iters=3", "eval.warmup=1"], tmp_path / "run")
    e = report["engine"]
    assert e["target"] == "torch_export" and e["precision"] == "bf16"
    assert e["parity"]["passed"] and e["metric"]["top1"] > 0.95
    assert engine.dtype == torch.bfloat16


def test_target_lists_are_checked(cli_inproc):
    r = cli_inproc("validate", "targets=[onnxruntime,torch_export,onnxruntime,nope]")
    assert r.returncode == 2
    assert "targets[1].precision: target 'torch_export' cannot run int8" in r.stderr  # default pipeline ends in INT8
    assert "targets[2]: target 'onnxruntime' is listed twice" in r.stderr
    assert "targets[3].kind: unknown target 'nope'" in r.stderr
    r = cli_inproc("validate", "targets=[onnxruntime,{kind: torch_export, compile: true}]", "pipeline=[prune]")
    assert r.returncode == 0 and "target  torch_export (fp32)" in r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this check is for machines without a CUDA GPU")
def test_torch_export_on_cuda_is_refused_without_a_gpu(cli_inproc):
    r = cli_inproc("validate", "target=torch_export", "target.device=cuda", "pipeline=[prune]")
    assert r.returncode == 2 and "target.device: cuda was asked for but this machine has no CUDA GPU" in r.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine: torch.compile at FP16/BF16 on CUDA needs one")
@pytest.mark.parametrize("half", ["quantize_fp16", "quantize_bf16"])
def test_torch_export_compiled_on_cuda(tmp_path, half):
    proc = cli("run", "target=torch_export", "target.device=cuda", "target.compile=true", f"+stage@stages.half={half}",
               "pipeline=[half]", "device=cuda", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    e = load_report(run_dirs(tmp_path)[0])["engine"]
    assert e["parity"]["passed"] and e["provider"] == "torch.export + torch.compile:cuda"
