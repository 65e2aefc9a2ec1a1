"""Model and data sources on local files: torchvision models, image folders, safe loading."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from compressor.errors import UserError
from compressor.models.torchvision_zoo import TorchvisionParams, build as build_tv, load_state_dict
from conftest import cli, load_report, run_dirs


def write_image_folder(root, classes=3, per_class=12, size=40):
    """Real PNG files: each class a distinct colour with noise, so a model can tell them apart."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = np.full((size, size, 3), 40, np.uint8)
            img[..., c] = 200
            img = np.clip(img + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")


@pytest.mark.slow
def test_recipe_on_image_folder_with_torchvision_model(tmp_path):
    write_image_folder(tmp_path / "imgs")
    (tmp_path / "folder.yaml").write_text(
        "defaults:\n  - base\n  - model: torchvision\n  - data: imagefolder\n"
        "  - /stage@stages.prune: prune_structured\n  - /stage@stages.ft: finetune\n"
        "  - /stage@stages.quantize: quantize_int8\n  - target: onnxruntime\n  - _self_\n"
        "model: {name: resnet18, num_classes: 3}\n"
        f"data: {{root: {tmp_path / 'imgs'}, image_size: 32, batch_size: 8}}\n"
        "pipeline: [prune, ft, quantize]\nstages:\n  prune: {ratio: 0.3}\n  ft: {epochs: 2, lr: 0.003}\n"
        "  quantize: {calibration_batches: 2}\neval: {max_drop: null, iters: 5, warmup: 1}\n")
    proc = cli("run", "./folder.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = load_report(run_dirs(tmp_path)[0])
    assert r["recipe"] == "folder" and r["status"] == "ok"
    assert r["stages"][0]["params"] < r["baseline"]["params"]
    assert r["engine"]["precision"] == "int8" and r["engine"]["parity"]["passed"]
    assert 0 <= r["engine"]["metric"]["top1"] <= 1


def test_missing_paths_and_unknown_names_are_one_line(tmp_path, cli_inproc):
    proc = cli_inproc("validate", "model=torchvision", "model.name=resnet19", "model.checkpoint=/nope.pt",
                      "data=imagefolder", "data.root=/no/such/folder")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2
    assert any(l.startswith("error: model.name") and "did you mean 'resnet18'" in l for l in lines), lines
    assert any(l.startswith("error: model.checkpoint") for l in lines), lines
    assert any(l.startswith("error: data.root: folder not found") for l in lines), lines


def test_data_that_does_not_fit_the_model(tmp_path):
    # digits are 1x8x8; resnet18 wants 3 channels: one line naming data, no traceback
    proc = cli("run", "model=torchvision", "model.num_classes=10", "pipeline=[]", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: data: inputs of shape (1, 1, 8, 8) do not fit the model")


def test_local_checkpoint_formats(tmp_path):
    from safetensors.torch import save_file

    model = build_tv(TorchvisionParams(name="mobilenet_v3_small", num_classes=4))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "m.pth")
    save_file(state, str(tmp_path / "m.safetensors"))
    for f in ("m.pth", "m.safetensors"):
        loaded = build_tv(TorchvisionParams(name="mobilenet_v3_small", num_classes=4, checkpoint=str(tmp_path / f)))
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('EVIL_MARK', '/tmp/compressor_pwned')}",))


def test_malicious_pickle_is_not_executed(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARK", str(mark))
    torch.save({"weight": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError) as e:
        load_state_dict(tmp_path / "evil.pt")
    assert e.value.problems[0].key == "model.checkpoint"
    assert not mark.exists()


def test_synthetic_data_marks_metric_unavailable(tmp_path, monkeypatch):
    import compressor

    monkeypatch.chdir(tmp_path)
    report, _ = compressor.compress("default", ["data=synthetic", "data.shape=[1,8,8]", "pipeline=[]",
                                                "eval.iters=3", "eval.warmup=1"])
    assert report["baseline"]["metric"] == {} and "metric_unavailable" in report
    assert "max_drop" not in report["gates"] and report["status"] == "ok"
