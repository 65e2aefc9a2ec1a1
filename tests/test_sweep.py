"""A grid sweep writes summary.csv, summary.md and pareto.png from its jobs' reports."""
import csv

import pytest

from compressor.sweep import pareto
from tests.conftest import cli, load_report

pytestmark = pytest.mark.slow


def test_grid_sweep_summary_matches_the_jobs(tmp_path, cli_inproc):
    r = cli("run", "-m", "pipeline=[prune,quantize]", "stages.prune.ratio=0.2,0.4,0.6",
            "stages.quantize.calibration_batches=1,2", "eval.iters=5", "eval.warmup=1", "eval.max_drop=null", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    sweep = next(tmp_path.glob("outputs/multirun/*"))
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert len(rows) == 6 and (sweep / "pareto.png").stat().st_size > 10_000
    for row in rows:
        report = load_report(sweep / row["job"])
        assert float(row["metric"]) == pytest.approx(report["engine"]["metric"]["top1"])
        assert float(row["latency_ms"]) == pytest.approx(report["engine"]["latency_ms"]["p50"])
        assert int(row["size_bytes"]) == report["engine"]["size_bytes"]
        assert "stages.prune.ratio=" in row["overrides"] and "eval.iters" not in row["overrides"]  # only what varies
    points = [{"job": r["job"], "metric": float(r["metric"]), "latency_ms": float(r["latency_ms"])} for r in rows]
    assert {r["job"] for r in rows if r["pareto_latency"] == "True"} == pareto(points, "latency_ms")
    assert "summary.md" in r.stderr
    for name in ("summary.csv", "summary.md", "pareto.png"):
        (sweep / name).unlink()
    assert cli_inproc("report", str(sweep)).returncode == 0  # rebuilt from the reports
    assert (sweep / "summary.md").read_text().startswith("# Sweep: 6 jobs")


def test_pareto_front():
    rows = [{"job": "a", "metric": 0.9, "cost": 2.0}, {"job": "b", "metric": 0.8, "cost": 1.0},
            {"job": "c", "metric": 0.8, "cost": 1.5}, {"job": "d", "metric": 0.95, "cost": 3.0}]
    assert pareto(rows, "cost") == {"a", "b", "d"}  # c is beaten by b
