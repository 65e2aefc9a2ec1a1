"""report.md's plots: per step, and size by layer before and after the pipeline."""
import pytest

from tests.conftest import load_report


def test_size_by_layer_adds_up_to_the_reported_sizes(default_run):
    run_dir = default_run[1]
    report = load_report(run_dir)
    layers = report["layer_bytes"]
    # the baseline size is its safetensors file (a header more than the tensors)
    assert sum(layers["baseline"].values()) == pytest.approx(report["baseline"]["size_bytes"], rel=0.01)
    assert sum(layers["final"].values()) == pytest.approx(report["stages"][-1]["size_bytes"], abs=len(layers["final"]))
    # the pipeline pruned and quantized every conv and linear layer, and folded the BatchNorms away
    assert all(layers["final"][k] < layers["baseline"][k] for k in layers["final"])
    assert not any("BatchNorm" in k for k in layers["final"])
    md = (run_dir / "report.md").read_text()
    assert "](size_by_layer.png)" in md and "](report.png)" in md
    assert (run_dir / "size_by_layer.png").stat().st_size > 5_000
