"""Files a user hands the program cannot run code or reach outside their folder: pickles in
.pt/.pt2 files load restricted unless the command line says --trust-pickle, and an ONNX
model's external data must lie inside the model's folder."""
import io
import os
import zipfile

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import cli


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARK']}",))


@pytest.fixture
def mark(tmp_path, monkeypatch):
    """The file a malicious pickle would create."""
    path = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARK", str(path))
    return path


def one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if not l.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_malicious_checkpoint_through_the_cli(tmp_path, mark, cli_inproc):
    # subprocesses: the checkpoint is read when the run starts, inside Hydra, whose in-process
    # logging set-up would outlive pytest's captured streams
    torch.save({"conv1.weight": _Evil()}, tmp_path / "model.pt")
    args = ["run", "model=torchvision", "model.name=resnet18", "model.num_classes=10", "model.checkpoint=model.pt",
            "pipeline=[]"]
    line = one_error_line(cli(*args, cwd=tmp_path))
    assert line.startswith("error: model.checkpoint:") and "--trust-pickle" in line, line
    assert not mark.exists()
    # the flag is a command-line flag only: as an override it is refused, and runs nothing
    proc = cli_inproc(*args, "+trust_pickle=true")  # refused at validation, before Hydra runs anything
    assert proc.returncode == 2 and "trust_pickle" in proc.stderr and not mark.exists(), proc.stderr
    # with the flag the file is a full pickle: it runs (the proof that the flag does something), with a warning
    proc = cli(*args, "--trust-pickle", cwd=tmp_path)
    assert proc.stderr.startswith("warning: --trust-pickle"), proc.stderr
    assert mark.exists()
    assert proc.returncode == 2 and "model.checkpoint" in proc.stderr  # an int is not a state dict


def _exported_program(path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(torch.export.export(model, (torch.randn(2, 8),), dynamic_shapes=({0: batch},)), str(path))
    return path


def test_torch_export_archive_cannot_unpickle_code(tmp_path, mark, cli_inproc):
    good = _exported_program(tmp_path / "good.pt2")
    proc = cli_inproc("bench", str(good), "--batch", "2")
    assert proc.returncode == 0, proc.stderr
    # torch.export.load falls back to a full pickle for sample inputs it cannot read restricted
    evil = tmp_path / "evil.pt2"
    buf = io.BytesIO()
    torch.save((_Evil(),), buf)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = buf.getvalue() if item.filename.endswith("sample_inputs/model.pt") else src.read(item)
            dst.writestr(item, data)
    line = one_error_line(cli_inproc("bench", str(evil)))
    assert line.startswith("error: engine:") and "--trust-pickle" in line, line
    assert not mark.exists()


def _external_data_model(folder):
    """y = x @ W + b with W and b stored in weights.bin beside model.onnx."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((16, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return folder / "model.onnx"


def _relocate(path, location):
    """Point every tensor's external data at `location`, as a crafted file would."""
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save_model(model, str(path))


def test_legit_external_data_model_benches(tmp_path, cli_inproc):
    path = _external_data_model(tmp_path / "m")
    assert any(t.data_location == TensorProto.EXTERNAL for t in onnx.load(str(path), load_external_data=False).graph.initializer)
    proc = cli_inproc("bench", str(path), "--batch", "4")
    assert proc.returncode == 0, proc.stderr
    assert "CPUExecutionProvider" in proc.stdout


@pytest.mark.parametrize("where", ["dotdot", "absolute", "etc_passwd", "symlink", "ort_memory", "missing"])
def test_external_data_outside_the_model_folder_refused(tmp_path, cli_inproc, where):
    path = _external_data_model(tmp_path / "m")
    secret = tmp_path / "secret.bin"  # a file outside the model's folder that fits the tensors' offsets
    (tmp_path / "m" / "weights.bin").rename(secret)
    location = {"dotdot": "../secret.bin", "absolute": str(secret), "etc_passwd": "/etc/passwd",
                "symlink": "weights.bin", "ort_memory": "*/_ORT_MEM_ADDR_/*", "missing": "nope.bin"}[where]
    if where == "symlink":  # inside by name, outside once resolved
        (tmp_path / "m" / "weights.bin").symlink_to(secret)
    _relocate(path, location)
    line = one_error_line(cli_inproc("bench", str(path)))
    assert line.startswith("error: engine:") and repr(location) in line and "outside" not in line.split(":")[0], line
