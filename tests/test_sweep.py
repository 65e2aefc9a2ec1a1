"""A grid sweep writes summary.csv, summary.md and pareto.png from its jobs' reports."""
import csv
import json

import pytest

from compressor.search.sweep import pareto
from tests.conftest import cli, load_report

pytestmark = pytest.mark.slow


def test_grid_sweep_summary_matches_the_jobs(tmp_path, cli_inproc):
    r = cli("run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "pipeline=[prune,quantize]",
            "stages.prune.ratio=0.2,0.4,0.6", "stages.quantize.calibration_batches=1,2", "eval.iters=5", "eval.warmup=1",
            "eval.max_drop=null", cwd=tmp_path)
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


def test_optuna_sweep_returns_the_engines_measurements(tmp_path):
    """Two NSGA-II trials (metric up, latency down): what optuna was told is what the engines measured."""
    import yaml

    r = cli("run", "hparams_search=optuna_latency", "hydra.sweeper.n_trials=2", "pipeline=[prune,quantize]",
            "eval.max_drop=null", "eval.iters=5", "eval.warmup=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    sweep = next(tmp_path.glob("outputs/multirun/*"))
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert len(rows) == 2 and all("stages.prune.ratio=" in row["overrides"] for row in rows)
    # the recipe asks for the sweep itself (no -m): each job still prunes by its own trial's ratio
    ratios = [float(row["overrides"].split("stages.prune.ratio=")[1].split()[0].rstrip(",")) for row in rows]
    kept = {json.loads((sweep / row["job"] / "report.json").read_text())["stages"][0]["params"] for row in rows}
    assert len(kept) == (2 if abs(ratios[0] - ratios[1]) >= 0.05 else len(kept)), (ratios, kept)
    measured = {(round(float(row["metric"]), 6), round(float(row["latency_ms"]), 6)) for row in rows}
    solutions = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["solutions"]
    assert solutions and all((round(s["values"][0], 6), round(s["values"][1], 6)) in measured for s in solutions)


def test_a_failing_job_does_not_stop_a_parallel_sweep(tmp_path):
    """Two jobs on two joblib workers; the one whose training diverges is listed with its
    overrides, the other one finishes, and the exit code says a job failed."""
    r = cli("run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "stages.finetune.lr=0.001,1e9",
            "pipeline=[finetune]", "stages.finetune.epochs=1", "eval.iters=5", "eval.warmup=1", cwd=tmp_path)
    assert r.returncode != 0
    sweep = next(tmp_path.glob("outputs/multirun/*"))
    rows = {row["job"]: row for row in csv.DictReader((sweep / "summary.csv").open())}
    assert rows["0"]["status"] == "ok" and (sweep / "0" / "engine" / "model.onnx").is_file()
    assert rows["1"]["status"] != "ok"
    assert "job 1:" in r.stderr and "stages.finetune.lr=1000000000.0" in r.stderr


def test_ray_launcher_on_a_local_cluster(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    r = cli("run", "-m", "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2", "stages.prune.ratio=0.3,0.5",
            "pipeline=[prune,quantize]", "eval.max_drop=null", "eval.iters=5", "eval.warmup=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    sweep = next(tmp_path.glob("outputs/multirun/*"))
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [row["status"] for row in rows] == ["ok", "ok"]
    for row in rows:
        assert float(row["metric"]) == pytest.approx(load_report(sweep / row["job"])["engine"]["metric"]["top1"])


@pytest.mark.parametrize("overrides,key", [
    (["hparams_search=optuna_latency", "hydra.sweeper.storage=sqlite:////tmp/study.db"], "hydra.sweeper.storage"),
    (["hparams_search=optuna_latency", "hydra.sweeper.custom_search_space=os.system"], "hydra.sweeper.custom_search_space"),
    (["hydra/launcher=slurm", "hydra.launcher.setup=[touch pwned]"], "hydra.launcher.setup"),
    (["hydra/launcher=ray_aws"], "hydra.launcher.ray.cluster.head_start_ray_commands"),
])
def test_sweep_settings_that_run_code_or_write_elsewhere_are_refused(cli_inproc, tmp_path, overrides, key):
    r = cli_inproc("run", "-m", *overrides)
    assert r.returncode == 2 and key in r.stderr and not (tmp_path / "outputs").exists()
    assert not (tmp_path / "pwned").exists()


def test_budget_search_keeps_the_best_engine_after_every_trial(tmp_path):
    """Three trials: INT8 (the quantize stage alone), FP32 (no stage), FP32 on OpenVINO.
    Whenever search.json lists a finished trial, engine/ holds the best engine so far."""
    import hashlib
    import json
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "compressor", "run", "search=budget", "pipeline=[quantize]", "eval.iters=20",
            'search.space=["pipeline=[]","target=openvino"]']
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = set()
    while proc.poll() is None:
        for f in tmp_path.glob("outputs/default/*/search.json"):
            search = json.loads(f.read_text())
            n = len(search["trials"])
            if n not in seen and search["best_trial"] is not None:
                seen.add(n)
                best = f.parent / "trials" / str(search["best_trial"]) / "engine"
                kept = f.parent / "engine"
                assert sorted(p.name for p in kept.iterdir()) == sorted(p.name for p in best.iterdir())
                assert all(hashlib.sha256((kept / p.name).read_bytes()).digest() == hashlib.sha256(p.read_bytes()).digest()
                           for p in best.iterdir())
        time.sleep(0.2)
    out, errs = proc.communicate()
    assert proc.returncode in (0, 3), errs[-2000:]
    run_dir = next(tmp_path.glob("outputs/default/*"))
    search = json.loads((run_dir / "search.json").read_text())
    assert len(search["trials"]) == 3 and seen  # observed while it ran
    measured = [t for t in search["trials"] if t["status"] == "ok"]
    report = load_report(run_dir)
    if measured:
        fastest = min(measured, key=lambda t: t["latency_ms"])
        assert search["best_trial"] == fastest["trial"] and report["status"] == "ok"
        assert report["engine"]["latency_ms"]["p50"] == pytest.approx(fastest["latency_ms"])
        assert all(t["drop"] <= 0.01 for t in measured)
    else:
        assert report["status"] == "failed_gate" and "no candidate" in search["conclusion"]
    assert search["conclusion"] in (run_dir / "report.md").read_text()
    assert (run_dir / "trials" / "summary.md").is_file()


def test_tensorboard_events_hold_the_reports_figures(default_run, tmp_path, cli_inproc):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from compressor.report.tensorboard import write_tensorboard
    from compressor.report.writer import engines

    report = load_report(default_run[1])
    write_tensorboard(report, engines(report), {"stages.prune.ratio": 0.5}, tmp_path / "tb")
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    top1 = [e.value for e in events.Scalars("pipeline/top1")]
    assert top1[0] == pytest.approx(report["baseline"]["metric"]["top1"])
    assert top1[-1] == pytest.approx(report["engine"]["metric"]["top1"])
    assert len(top1) == len(report["stages"]) + 2
    losses = [e.value for e in events.Scalars("train/finetune/loss")]
    assert losses == pytest.approx(report["stages"][1]["notes"]["epoch_loss"], rel=1e-5)
    r = cli_inproc("validate", "logger=tensorbord")
    assert r.returncode == 2 and "logger: must be none or tensorboard" in r.stderr


@pytest.mark.parametrize("overrides,problem", [
    (["digits_student", "hparams_search=optuna_latency"], "hydra.sweeper.params.stages.prune.ratio: 'stages.prune.ratio' is not"),
    (["search=budget", 'search.space=["stages.prun.ratio=0.3"]'], "search.space[0]: 'stages.prun.ratio' is not"),
])
def test_search_keys_the_recipe_lacks_are_found_before_any_trial(cli_inproc, overrides, problem):
    r = cli_inproc("validate", *overrides)
    assert r.returncode == 2 and problem in r.stderr, r.stderr
