"""The shared training loop: gradient accumulation, early stopping, resumable state, a run
killed with SIGKILL mid-epoch and resumed, and two CPU processes under torchrun."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compressor.models.digits_cnn import DigitsCNN
from compressor.core.state import load_state, save_state
from compressor.testing import digits
from compressor.training.loop import fit
from tests.conftest import cli, load_report, run_dirs


def regression(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    return x, y


def mse(model, x, y):
    return nn.functional.mse_loss(model(x).squeeze(-1), y)


def test_accumulation_matches_a_larger_batch():
    """4 batches of 8 accumulated are one step on a batch of 32 (mean losses, SGD)."""
    x, y = regression(32)
    results = []
    for batch, accumulate in ((32, 1), (8, 4)):
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        loader = DataLoader(TensorDataset(x, y), batch_size=batch)
        fit(model, loader, 3, lr=0.05, optimizer="sgd", schedule="constant", accumulate=accumulate, loss_fn=mse)
        results.append(torch.cat([model.weight.flatten(), model.bias]))
    assert torch.allclose(results[0], results[1], atol=1e-5)


def test_state_file_round_trips_optimizer_state(tmp_path):
    model = nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters())
    x, y = regression()
    mse(model, x, y).backward()
    opt.step()
    path = save_state(tmp_path / "s.safetensors", {"opt": opt.state_dict(), "n": 3, "names": ["a", "b"]})
    back = load_state(path)
    assert back["n"] == 3 and back["names"] == ["a", "b"]
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    opt.load_state_dict(back["opt"])  # accepted by torch as it is


def test_resumed_fit_equals_an_uninterrupted_one(tmp_path):
    """A fit that dies inside its third epoch, started again with the same state file,
    continues from the end of epoch 2 and ends with the uninterrupted run's weights."""
    data = digits(batch_size=64)  # seed 0
    batches = len(data.train)

    def train(state=None, die_at=None):
        calls = []

        def loss_fn(model, x, y):
            calls.append(1)
            if len(calls) == die_at:
                raise KeyboardInterrupt  # stands in for the kill
            return nn.functional.cross_entropy(model(x), y)

        torch.manual_seed(0)
        data.train.generator.manual_seed(0)
        model = DigitsCNN(width=4)
        return model, fit(model, data.train, 4, lr=3e-3, loss_fn=loss_fn, state_path=state)

    straight, _ = train()
    state = tmp_path / "train.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(state, die_at=2 * batches + batches // 2)
    assert load_state(state)["epoch"] == 2
    resumed, result = train(state)
    assert result.resumed_from == 2 and len(result.losses) == 4
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_early_stopping_keeps_the_best_epoch():
    x, y = regression(64)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    scores = iter([0.5, 0.9, 0.7, 0.6, 0.95, 0.99])  # best at epoch 2, then 2 epochs worse: stop
    kept = {}

    def validate(model):
        s = next(scores)
        kept[s] = model.weight.detach().clone()
        return s

    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    result = fit(model, loader, 6, lr=0.01, loss_fn=mse, patience=2, validate=validate)
    assert result.stopped_early and result.best_epoch == 2 and len(result.losses) == 4
    assert torch.equal(model.weight, kept[0.9])


def test_training_params_are_checked(cli_inproc):
    r = cli_inproc("validate", "stages.finetune.accumulate=0", "stages.finetune.amp=fp8", "stages.finetune.patience=-1")
    assert r.returncode == 2
    for key in ("stages.finetune.accumulate", "stages.finetune.amp", "stages.finetune.patience"):
        assert key in r.stderr


def test_resume_needs_a_run_folder(cli_inproc, tmp_path):
    r = cli_inproc("run", f"resume={tmp_path}")
    assert r.returncode == 2 and "resume" in r.stderr and "not a run folder" in r.stderr
    r = cli_inproc("run", f"resume={tmp_path}", "seed=3")
    assert r.returncode == 2 and "give nothing else" in r.stderr


RESUMABLE = ["stages.finetune.epochs=4", "eval.iters=5", "eval.warmup=1"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    """The default pipeline killed with SIGKILL inside fine-tuning, resumed with `resume=`: the
    prune stage is not run again, fine-tuning continues from its last epoch, and the result
    equals an uninterrupted run's."""
    straight = tmp_path / "straight"
    straight.mkdir()
    assert cli("run", *RESUMABLE, cwd=straight).returncode == 0
    expected = load_report(run_dirs(straight)[0])

    killed = tmp_path / "killed"
    killed.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "compressor", "run", *RESUMABLE], cwd=killed,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    states = []
    while not states and time.time() < deadline and proc.poll() is None:
        states = list(killed.glob("outputs/**/checkpoints/2_finetune/train/finetune.safetensors"))
        time.sleep(0.02)
    assert states, "fine-tuning never saved a state"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = states[0].parents[3]
    assert not (run_dir / "report.json").exists()
    assert 1 <= load_state(states[0])["epoch"] < 4

    r = cli("run", f"resume={run_dir}", cwd=killed)
    assert r.returncode == 0, r.stderr[-2000:]
    report = load_report(run_dir)
    assert report["resumed_after_stage"] == "prune"
    prune, finetune, quantize = report["stages"]
    same = ("metric", "params", "macs", "size_bytes", "sparsity", "checkpoint")
    assert {k: prune[k] for k in same} == {k: expected["stages"][0][k] for k in same}  # from its record, not run again
    assert finetune["notes"]["resumed_from_epoch"] >= 1
    assert finetune["notes"]["epoch_loss"] == pytest.approx(expected["stages"][1]["notes"]["epoch_loss"], rel=1e-3)
    assert quantize["metric"]["top1"] == pytest.approx(expected["stages"][2]["metric"]["top1"], abs=0.01)
    assert report["engine"]["metric"]["top1"] == pytest.approx(expected["engine"]["metric"]["top1"], abs=0.01)
    assert not (run_dir / "checkpoints" / "2_finetune" / "train").exists()  # resumable state is dropped when done


@pytest.mark.slow
def test_two_cpu_processes_under_torchrun(tmp_path):
    """torchrun --nproc_per_node 2: fine-tuning runs with DistributedDataParallel over gloo,
    and only rank 0 writes a run folder."""
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                        "-m", "compressor", "run", "pipeline=[finetune]", "stages.finetune.epochs=2",
                        "eval.iters=5", "eval.warmup=1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 1 and len(list(tmp_path.glob("outputs/*/*"))) == 1
    report = load_report(dirs[0])
    notes = report["stages"][0]["notes"]
    assert notes["world_size"] == 2 and len(notes["epoch_loss"]) == 2
    assert report["status"] == "ok"
    assert report["stages"][0]["metric"]["top1"] > 0.97
    assert json.loads((dirs[0] / "manifest.json").read_text())
    assert Path(dirs[0] / "compressor.log").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine: mixed precision runs on CUDA only")
def test_distillation_runs_with_mixed_precision_on_cuda(tmp_path):
    proc = cli("run", "digits_student", "pipeline=[student]", "device=cuda", "stages.student.epochs=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    notes = load_report(run_dirs(tmp_path)[0])["stages"][0]["notes"]
    assert notes["amp"] in ("bf16", "fp16") and notes["samples_per_s"] > 0
    assert notes["distilled_metric"]["top1"] > 0.9


def test_training_on_labels_is_refused_for_unlabelled_data(tmp_path):
    r = cli("run", "data=synthetic", "data.shape=[1,8,8]", "pipeline=[finetune]", cwd=tmp_path)
    assert r.returncode == 2
    assert "error: stages.finetune: finetune trains on labels and this data has none" in r.stderr
