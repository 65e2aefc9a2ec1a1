"""Packaged recipes (one per model source), the timm model source, the packaged tiny BERT."""
import json

import numpy as np
import pytest
import torch

from compressor.testing import context, tensor_data
from conftest import cli, load_report, run_dirs

PACKAGED = ["resnet18_int8_ort", "mobilenet_v3_int8_openvino", "bert_dynamic_int8_ort", "vit_prune_distill"]


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_recipe_validates(cli_inproc, tmp_path, name):
    proc = cli_inproc("validate", name)  # runs in tmp_path
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == []  # validation writes nothing


def test_ls_recipes_lists_the_packaged_ones(cli_inproc):
    proc = cli_inproc("ls", "recipes")
    assert proc.returncode == 0, proc.stderr
    for name in PACKAGED + ["default", "digits_student"]:
        assert name in proc.stdout
    assert "digits_rgb32" not in proc.stdout  # a data option, not a recipe


def test_image_recipes_swap_to_an_image_folder(cli_inproc, tmp_path):
    """What the recipes' comments promise: data=imagefolder data.root=DIR replaces the digits."""
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / cls / "0.png")
    proc = cli_inproc("validate", "resnet18_int8_ort", "data=imagefolder", f"data.root={tmp_path / 'imgs'}",
                      "data.image_size=64", "model.num_classes=2")
    assert proc.returncode == 0, proc.stderr


def test_bad_timm_name_is_one_line(cli_inproc):
    proc = cli_inproc("validate", "resnet18_int8_ort", "model=timm", "model.name=resnet_18")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["error: model.name: timm has no model 'resnet_18' (did you mean 'resnet18'?)"], proc.stderr


def test_timm_missing_says_what_to_install(monkeypatch):
    import importlib.util

    from compressor.models.timm_zoo import TimmParams

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a))
    problems = list(TimmParams(name="resnet18").check())
    assert problems == [("kind", "needs the timm package: pip install 'compressor[timm]'")]


def test_timm_pretrained_without_the_hub_is_one_line(monkeypatch, tmp_path):
    """No network (the hub client offline): a UserError naming model.pretrained, no traceback."""
    import huggingface_hub.constants

    from compressor.errors import UserError
    from compressor.models.timm_zoo import TimmParams, build

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache: nothing to fall back on
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    params = TimmParams(name="resnet18", num_classes=10, pretrained=True)
    assert list(params.check()) == []  # timm publishes weights for resnet18
    with pytest.raises(UserError) as e:
        build(params)
    assert e.value.problems[0].key == "model.pretrained" and "model.checkpoint=PATH" in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def _prune(model, size):
    from compressor.stages.prune.structured import PruneStructured, PruneStructuredParams

    ctx = context(tensor_data(torch.rand(4, 3, size, size), batch_size=4))
    stage = PruneStructured()
    stage.params = PruneStructuredParams(ratio=0.5)
    return stage.apply(model, ctx), ctx


def test_timm_model_builds_prunes_exports_and_reloads(tmp_path):
    from compressor.run.checkpoint import load_checkpoint, save_checkpoint
    from compressor.models import build_model
    from compressor.targets.onnx.export import export_onnx
    from compressor.targets.onnxruntime import OrtEngine

    spec = {"kind": "timm", "name": "resnet18", "num_classes": 10}
    torch.manual_seed(0)
    model = build_model(spec)
    before = sum(p.numel() for p in model.parameters())
    model, ctx = _prune(model, 32)
    assert sum(p.numel() for p in model.parameters()) < 0.6 * before and ctx.notes["macs_ratio"] < 0.6
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model.eval()(x).numpy()
    assert out.shape == (2, 10)
    got = OrtEngine(export_onnx(model, x[:1], tmp_path / "model.onnx"))(x.numpy())
    assert np.abs(got - out).max() <= 1e-4 + 1e-3 * np.abs(out).max()  # ONNX Runtime matches PyTorch
    back = load_checkpoint(save_checkpoint(model, tmp_path / "m.safetensors", spec))  # rebuilt through timm
    with torch.no_grad():
        assert torch.allclose(back(x), model(x), atol=1e-5)


def test_timm_local_checkpoint_and_a_wrong_one(tmp_path):
    """A timm-native state dict (safetensors or .pth) loads; timm's fused BN + activation comes
    out as plain torch layers computing the same thing."""
    import timm
    from safetensors.torch import save_file

    from compressor.errors import UserError
    from compressor.models.timm_zoo import TimmParams, build

    torch.manual_seed(0)
    native = timm.create_model("mobilenetv3_small_050", num_classes=10).eval()
    with torch.no_grad():  # BN statistics that are not the identity
        for m in native.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2), m.weight.uniform_(0.5, 2)
    save_file({k: v.contiguous() for k, v in native.state_dict().items()}, str(tmp_path / "m.safetensors"))
    torch.save(native.state_dict(), tmp_path / "m.pth")
    x = torch.rand(2, 3, 32, 32)
    for name in ("m.safetensors", "m.pth"):
        params = TimmParams(name="mobilenetv3_small_050", num_classes=10, checkpoint=str(tmp_path / name))
        assert list(params.check()) == []
        model = build(params)
        assert not any(type(m).__name__ == "BatchNormAct2d" for m in model.modules())
        with torch.no_grad():
            assert torch.allclose(model(x), native(x), atol=1e-6)
    with pytest.raises(UserError, match="does not fit resnet18") as e:
        build(TimmParams(name="resnet18", num_classes=10, checkpoint=str(tmp_path / "m.safetensors")))
    assert e.value.problems[0].key == "model.checkpoint"
    problems = dict(TimmParams(name="resnet18", checkpoint=str(tmp_path / "nope.pt")).check())
    assert problems == {"checkpoint": f"file not found: {tmp_path / 'nope.pt'}"}


def test_small_torchvision_vit_through_kwargs():
    from compressor.models.torchvision_zoo import TorchvisionParams, build

    kwargs = {"image_size": 32, "patch_size": 8, "hidden_dim": 64, "mlp_dim": 128, "num_layers": 2, "num_heads": 4}
    params = TorchvisionParams(name="vit_b_16", num_classes=10, kwargs=kwargs)
    assert list(params.check()) == []
    model = build(params)
    assert model.patch_size == 8 and model.hidden_dim == 64 and len(model.encoder.layers) == 2
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    bad = dict(TorchvisionParams(name="vit_b_16", kwargs={**kwargs, "patch_size": 5}).check())
    assert bad == {"kwargs.patch_size": "must divide image_size 32, got 5"}
    bad = dict(TorchvisionParams(name="vit_b_16", weights="DEFAULT", kwargs=kwargs).check())
    assert "weights" in bad


def test_packaged_tiny_bert_is_small_and_found_by_name():
    from compressor.models.huggingface import HuggingFaceParams
    from compressor.core.packaged import ROOT, resolve

    folder = ROOT / "tiny_bert"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "sentiment.csv", "training.json"} <= names
    assert sum(p.stat().st_size for p in folder.iterdir()) < 400_000
    assert json.loads((folder / "training.json").read_text())["val_accuracy"] >= 0.9
    assert resolve("packaged:tiny_bert") == str(folder) and resolve("/x/y") == "/x/y" and resolve(None) is None
    assert resolve("packaged:../builtins.py") == "packaged:../builtins.py"  # nothing outside the folder
    assert list(HuggingFaceParams(path="packaged:tiny_bert").check()) == []
    assert dict(HuggingFaceParams(path="packaged:nope").check())["path"].endswith("at packaged:nope")


@pytest.mark.slow
def test_bert_recipe_runs_out_of_the_box(tmp_path):
    proc = cli("run", "bert_dynamic_int8_ort", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = load_report(run_dirs(tmp_path)[0])
    assert r["status"] == "ok"
    assert r["stages"][0]["params"] < 0.8 * r["baseline"]["params"]  # heads and neurons removed
    eng = r["engine"]
    assert eng["precision"] == "int8_dynamic" and eng["parity"]["passed"], eng["parity"]
    assert eng["notes"]["integer_kernels"] > 0
    assert "fidelity" in eng["metric"] and 0 < eng["metric"]["fidelity"] <= 1
    assert eng["metric"]["top1"] >= 0.85
