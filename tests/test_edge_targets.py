"""The default digits model, quantized once, sent to the three edge targets in one run: each engine
really built, ExecuTorch and LiteRT really run (Core ML is built and checked from its spec: it runs
only on Apple systems); the runtime speed gate against each runtime's own FP32 engine."""
import pytest

pytest.importorskip("executorch")
pytest.importorskip("litert_torch")
pytest.importorskip("coremltools")

from compressor import load_engine  # noqa: E402
from compressor.api import compress  # noqa: E402

FAST = ["pipeline=[quantize]", "eval.iters=10", "eval.warmup=2"]


@pytest.fixture(scope="module")
def edge_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("edge") / "run"
    # an impossible speed-up: the gate must refuse every engine that is not that much faster
    report, _ = compress(None, ["targets=[executorch,litert,coreml]", "eval.min_runtime_speedup=1000", *FAST], out)
    return report, out


def test_one_quantized_model_reaches_the_three_edge_targets(edge_run):
    report, out = edge_run
    by = {e["target"]: e for e in report["engines"]}
    assert list(by) == ["executorch", "litert", "coreml"] and all(e["precision"] == "int8" for e in by.values())
    for kind in ("executorch", "litert"):  # run here by their own runtimes: metric and parity measured
        e = by[kind]
        assert e["parity"]["passed"] and e["metric"]["top1"] > 0.95, (kind, e["parity"], e["metric"])
        assert e["latency_ms"]["p50"] > 0 and (out / e["path"]).is_file()
        assert report["gates"][f"parity@{kind}" if kind != "executorch" else "parity"]["passed"]
    assert by["executorch"]["notes"]["delegated_share"] == 1.0
    assert by["litert"]["notes"]["float_ops"] == {}  # full integer: nothing left in float
    core = by["coreml"]
    assert core["not_run"] == "not run: Core ML runs only on Apple systems"
    assert "parity" not in core and "metric" not in core and "latency_ms" not in core  # no made-up numbers
    assert core["notes"]["weight_storage"] and core["notes"]["int8_layers_exact"]
    assert not any(k.endswith("@coreml") for k in report["gates"])
    assert (out / "engine" / "measure_on_mac.py").is_file()
    assert load_engine(out / core["path"]).not_run  # the package reopens (a folder, not a file)
    md = (out / "report.md").read_text()
    assert "## Engines side by side" in md and "not run: Core ML runs only on Apple systems" in md


def test_runtime_speed_gate_refuses_an_engine_not_faster_than_its_own_fp32(edge_run):
    report, _ = edge_run
    assert report["status"] == "failed_gate"
    for kind in ("executorch", "litert"):
        e = next(e for e in report["engines"] if e["target"] == kind)
        r = e["runtime_fp32"]
        assert r["latency_ms"]["p50"] > 0 and r["size_bytes"] > 3 * e["size_bytes"]  # a real FP32 engine, timed
        gate = report["gates"]["min_runtime_speedup" if kind == "executorch" else f"min_runtime_speedup@{kind}"]
        assert gate["value"] == r["speedup"] and not gate["passed"]


def test_edge_engines_table_is_legible_at_80_columns_and_their_output_is_logged(edge_run):
    import os

    from rich.console import Console

    from compressor.report.writer import print_table

    report, out = edge_run
    console = Console(width=80, record=True, file=open(os.devnull, "w"))
    print_table(report, console)
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 and "…" not in line for line in lines), "\n".join(lines)
    assert any("coreml int8" in line and "not run" in line for line in lines)
    # what the LiteRT converter's C++ writes to descriptor 2 at each conversion: in the run's log file, under its name
    assert "][litert][INFO] - " in (out / "compressor.log").read_text()


def test_ls_targets_says_what_each_needs(cli_inproc, monkeypatch):
    r = cli_inproc("ls", "targets")
    assert r.returncode == 0
    rows = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("  ")}
    for kind in ("executorch", "litert", "coreml"):
        assert kind in rows and rows[kind].endswith("ready")  # installed here (CI installs every extra)
    # without the package, the target says which extra to install, at validate as in ls
    from compressor.targets.executorch import ExecuTorchTarget

    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "executorch" else object())
    assert ExecuTorchTarget.requires() == [("", "ExecuTorch is not installed: pip install 'compressor[executorch]'")]
