"""Reliability on real runs: SIGKILL at several points then `resume=`, bit-exact reruns, a NaN
engine failing its gate, and a batch too large for memory."""
import hashlib
import json
import os
import resource
import subprocess
import sys

import onnx
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open

from conftest import cli, load_report, run_dirs

QUICK = ["stages.finetune.epochs=2", "eval.iters=5", "eval.warmup=1"]

# Runs the CLI and SIGKILLs it at an exact point: on the audit event Python raises for an
# os.replace (`os.rename`) onto a path ending in SUFFIX, before the rename ("before") or on the
# first audit event after it has returned ("after"). Polling the folder cannot hit a window of
# microseconds (a checkpoint written, its record not yet); the program itself is untouched.
KILLER = """
import os, signal, sys
suffix, when = sys.argv[1], sys.argv[2]
landed = None  # "after": the path, killed on the first event once it is in place (any thread)

def hook(event, args):
    global landed
    if landed and os.path.exists(landed):
        landed = None  # os.kill raises an audit event of its own
        os.kill(os.getpid(), signal.SIGKILL)
    if event == "os.rename" and str(args[1]).endswith(suffix):
        if when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        landed = os.fspath(args[1])

sys.addaudithook(hook)
sys.argv = ["compressor"] + sys.argv[3:]
from compressor.cli import entry
entry()
"""


def killed_run(cwd, suffix, when, *args):
    proc = subprocess.run([sys.executable, "-c", KILLER, suffix, when, "run", *args], cwd=cwd,
                          env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, f"not killed at {suffix} ({when}): rc {proc.returncode}\n{proc.stderr[-1500:]}"
    (run_dir,) = {p.parents[1] for p in cwd.glob("outputs/*/*/.hydra/config.yaml")}
    return run_dir


def strict_json(path):
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def visible_files(run_dir):
    """Every file a user or tool sees, each checked complete by reading it whole."""
    files = {}
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir)
        if not p.is_file() or p.name.startswith("."):  # hidden: a temporary file, never an artifact
            continue
        assert ".tmp" not in p.name, rel
        if p.suffix == ".json":
            strict_json(p)
        elif p.suffix == ".safetensors":
            with safe_open(str(p), framework="pt") as f:
                for k in f.keys():
                    f.get_tensor(k)
        elif p.suffix == ".onnx":
            onnx.checker.check_model(onnx.load(str(p)), full_check=True)
        elif p.suffix == ".png":
            Image.open(p).verify()
        elif p.suffix == ".yaml":
            yaml.safe_load(p.read_text())
        files[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return files


def model_hashes(run_dir):
    """sha256 of each checkpoint and engine file, from manifest.json (checked against the files)."""
    m = strict_json(run_dir / "manifest.json")
    out = {}
    for a in m["artifacts"]:
        assert hashlib.sha256((run_dir / a["path"]).read_bytes()).hexdigest() == a["sha256"], a["path"]
        if a["path"].endswith("model.safetensors") or a["path"].startswith("engine/"):
            out[a["path"]] = a["sha256"]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, shared by every kill point."""
    cwd = tmp_path_factory.mktemp("reference")
    proc = cli("run", *QUICK, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run_dirs(cwd)[0]


EXACT = ("params", "macs", "size_bytes", "sparsity", "checkpoint")

# (name, suffix of the file whose os.replace is the kill point, before/after it, what the killed
# folder holds, what it lacks, the stage resume continues after)
POINTS = [
    ("checkpoint_without_record", "/checkpoints/2_finetune/stage.safetensors", "before",
     ["checkpoints/2_finetune/model.safetensors", "checkpoints/2_finetune/train/finetune.safetensors"],
     ["checkpoints/2_finetune/stage.safetensors"], "prune"),
    ("during_engine_build", "/engine/model.onnx", "before",
     ["checkpoints/3_quantize/stage.safetensors"], ["engine/model.onnx"], "quantize"),
    ("engine_built_no_report", "/report.json", "before",
     ["engine/model.onnx", "report.png"], ["report.json", "manifest.json"], "quantize"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,suffix,when,present,absent,after", POINTS, ids=[p[0] for p in POINTS])
def test_sigkill_then_resume_ends_like_an_uninterrupted_run(reference, tmp_path, name, suffix, when, present,
                                                           absent, after):
    run_dir = killed_run(tmp_path, suffix, when, *QUICK)
    seen = visible_files(run_dir)  # complete files only, whatever the kill point
    assert all(p in seen for p in present), (present, sorted(seen))
    assert not any(p in seen for p in absent), (absent, sorted(seen))
    engine_before = (run_dir / "engine/model.onnx").stat().st_ino if "engine/model.onnx" in seen else None

    r = cli("run", f"resume={run_dir}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    visible_files(run_dir)
    assert not [p for p in run_dir.rglob("*.tmp*")], "a killed run's temporary files are removed on resume"
    got, want = load_report(run_dir), load_report(reference)
    assert got["status"] == "ok" and got["resumed_after_stage"] == after
    for g, w in zip(got["stages"], want["stages"], strict=True):
        assert g["metric"] == pytest.approx(w["metric"], abs=1e-6), g["name"]
        assert {k: g[k] for k in EXACT} == {k: w[k] for k in EXACT}
    finetune = got["stages"][1]["notes"]
    assert finetune["epoch_loss"] == pytest.approx(want["stages"][1]["notes"]["epoch_loss"], rel=1e-6)
    if name == "checkpoint_without_record":  # its training state said done: not trained again
        assert finetune["resumed_from_epoch"] == 2
    assert got["engine"]["metric"] == pytest.approx(want["engine"]["metric"], abs=1e-6)
    assert [got["engine"][k] for k in ("precision", "size_bytes")] == [want["engine"][k] for k in ("precision", "size_bytes")]
    assert got["engine"]["parity"]["max_abs"] == pytest.approx(want["engine"]["parity"]["max_abs"], abs=1e-6)
    assert got["engine"]["size_bytes"] == (run_dir / "engine/model.onnx").stat().st_size
    if engine_before is not None:  # the killed run's engine is not trusted: built again
        assert (run_dir / "engine/model.onnx").stat().st_ino != engine_before
    # CPU runs are bit-exact: a resumed run writes the very same checkpoints and engine
    assert got["not_bit_exact"] == []
    assert model_hashes(run_dir) == model_hashes(reference)


@pytest.mark.slow
def test_same_recipe_and_seed_give_identical_files(default_run, tmp_path):
    """The default recipe run twice: every checkpoint and the engine hash the same, except for
    the stages the report lists as not bit-exact (none on CPU)."""
    proc, first = default_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = cli("run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    second = run_dirs(tmp_path)[0]
    report = load_report(second)
    assert report["not_bit_exact"] == [] and load_report(first)["not_bit_exact"] == []
    assert "Bit-exact: the same recipe and seed" in (second / "report.md").read_text()
    a, b = model_hashes(first), model_hashes(second)
    assert sorted(a) == ["checkpoints/1_prune/model.safetensors", "checkpoints/2_finetune/model.safetensors",
                         "checkpoints/3_quantize/model.safetensors", "engine/model.onnx"]
    skip = {s["checkpoint"] for s in report["stages"] if s["name"] in report["not_bit_exact"]}
    assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def test_training_stages_are_not_bit_exact_on_cuda():
    """What the report lists on a GPU: stages that train (CUDA backward kernels use atomics),
    and TensorRT, whose builder times kernels; read from the classes, no GPU needed."""
    from compressor.recipe.load import check
    from compressor.recipe.compose import locate
    from compressor.recipe.plan import not_bit_exact

    (plan,) = check(locate("default"), [])
    assert not_bit_exact(plan) == []
    plan.device = "cuda:0"
    assert not_bit_exact(plan) == ["prune", "finetune"]


@pytest.mark.slow
def test_nan_engine_fails_its_gate_and_keeps_artifacts(tmp_path):
    """A model checkpoint with one NaN weight in its classifier: the engine's outputs hold NaN,
    the run ends failed_gate (exit 3) with gate nan_inf failed, report.json stays strict JSON,
    and the checkpoint and engine are kept."""
    from compressor.run.checkpoint import save_checkpoint
    from compressor.testing import digits_cnn

    model = digits_cnn()
    with torch.no_grad():
        model[-1].weight[3, 0] = float("nan")
    ckpt = save_checkpoint(model, tmp_path / "nan.safetensors", {"kind": "digits_cnn"})
    proc = cli("run", f"model.checkpoint={ckpt}", "pipeline=[prune]", "eval.iters=5", "eval.warmup=1", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]
    run_dir = run_dirs(tmp_path)[0]
    r = strict_json(run_dir / "report.json")
    assert r["status"] == "failed_gate"
    samples = r["engine"]["parity"]["samples"]  # one NaN logit (class 3) per sample
    assert r["gates"]["nan_inf"] == {"limit": 0, "value": samples, "passed": False}
    assert r["gates"]["parity"]["passed"] is False and r["engine"]["parity"]["max_abs"] is None
    assert f"gate nan_inf: {samples} (limit 0) FAILED" in proc.stdout
    assert (run_dir / "engine/model.onnx").is_file() and (run_dir / "checkpoints/1_prune/model.safetensors").is_file()
    visible_files(run_dir)
    assert cli("report", str(run_dir), cwd=tmp_path).returncode == 0  # rebuilt from the strict JSON


@pytest.mark.slow
def test_nan_activations_stop_calibration_with_one_line(tmp_path):
    from compressor.run.checkpoint import save_checkpoint
    from compressor.testing import digits_cnn

    model = digits_cnn()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("inf")
    ckpt = save_checkpoint(model, tmp_path / "inf.safetensors", {"kind": "digits_cnn"})
    proc = cli("run", f"model.checkpoint={ckpt}", "pipeline=[quantize]", "eval.iters=5", "eval.warmup=1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: stages.quantize: calibration saw NaN or Inf at the input of layer ")
    assert load_report(run_dirs(tmp_path)[0])["status"] == "error"


# Address space for the out-of-memory run: up to training (torch, the data, the collated batch)
# it maps about 6.4 GiB here (MALLOC_ARENA_MAX keeps glibc from reserving 64 MiB per thread); one training batch of
# all 1,779 training digits at 224x224 through ResNet-18 needs tens of GiB more, its first conv
# output alone 5.3 (it fails from about 7 GiB to beyond 16).
MEMORY_LIMIT = 10 << 30


@pytest.mark.slow
def test_batch_too_large_for_memory_is_one_line_naming_stage_and_batch(tmp_path):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    proc = subprocess.run(
        [sys.executable, "-m", "compressor", "run", "resnet18_int8_ort", "pipeline=[finetune]", "data.image_size=224",
         "data.val_fraction=0.01", "data.batch_size=100000", "eval.iters=2", "eval.warmup=1", "eval.max_drop=null"],
        cwd=tmp_path, env={**os.environ, "COLUMNS": "200", "MALLOC_ARENA_MAX": "2"}, preexec_fn=limit,
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith("error: stages.finetune: out of memory at data.batch_size=100000 (could not allocate ")
    assert lines[0].endswith("; lower data.batch_size")
    report = load_report(run_dirs(tmp_path)[0])
    assert report["status"] == "error" and report["error"] == lines[0][len("error: "):]
    assert report["baseline"]["metric"]  # the baseline ran at this batch size; training did not fit
