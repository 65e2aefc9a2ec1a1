"""prune_nm, prune_layers and sensitivity on real models and data (issue "Pruning")."""
import copy

import pytest
import torch
import torchvision
from torch import nn

from compressor.measure import stats as measure
from compressor.run.checkpoint import apply_layer_specs, layer_specs
from compressor.errors import UserError
from compressor.stages.prune.layers import PruneLayers, PruneLayersParams, is_residual
from compressor.stages.prune.nm import PruneNM, PruneNMParams, follows_nm
from compressor.stages.prune.structured import PruneStructured, PruneStructuredParams
from compressor.stages.prune.sensitivity import Sensitivity, SensitivityParams, ratios_for_target
from compressor.testing import context, digits as digits_data, digits_cnn, stage, tensor_data

from conftest import cli


@pytest.fixture(scope="module")
def digits():
    return digits_data()



def top1(model, data):
    return measure.evaluate(measure.predict_torch(model, torch.device("cpu")), data.val, ["top1"])["top1"]


# ---------------------------------------------------------------- prune_nm


def test_prune_nm_2_4_holds_in_every_group_and_keeps_the_largest(digits):
    model = digits_cnn()
    before = copy.deepcopy(model)
    ctx = context(digits, model, evaluate="top1")
    stage(PruneNM, PruneNMParams()).apply(model, ctx)
    pruned = ctx.notes["layer_sparsity"]
    assert set(pruned) == {"3", "7", "12", "15"} and ctx.notes["skipped"] == {"0": "input dim 1 is not a multiple of 4"}
    assert all(s == pytest.approx(0.5, abs=0.005) for s in pruned.values())
    assert "ONNX Runtime" in ctx.notes["runtime"] and "tensor cores" in ctx.notes["runtime"]
    assert not any(hasattr(m, "weight_orig") for m in model.modules())  # masks made permanent
    for name in pruned:
        w, w0 = model.get_submodule(name).weight, before.get_submodule(name).weight
        assert follows_nm(w, 2, 4)
        # each group of 4 input-channel weights keeps exactly its 2 largest magnitudes
        groups, groups0 = w.detach().movedim(1, -1).reshape(-1, 4), w0.detach().movedim(1, -1).reshape(-1, 4)
        kept = groups0.abs().topk(2, dim=1).values.sort(dim=1).values
        assert torch.equal(groups.abs().sort(dim=1).values[:, 2:], kept)
    assert torch.equal(model.get_submodule("0").weight, before.get_submodule("0").weight)  # skipped stays dense
    acc = top1(model, digits)
    print(f"digits CNN after 2:4 (no fine-tuning): top1 {acc:.4f}, baseline {top1(before, digits):.4f}")
    assert acc >= 0.98


def test_prune_nm_convs_group_along_input_channels():
    conv = nn.Conv2d(8, 4, 3)
    model = nn.Sequential(conv)
    stage(PruneNM, PruneNMParams(n=1, m=8)).apply(model, context(None, model, evaluate="top1"))
    nonzero = (conv.weight != 0).sum(dim=1)  # over input channels, at each (out, kh, kw)
    assert torch.equal(nonzero, torch.ones_like(nonzero))


def test_prune_nm_exclude_and_params():
    model = digits_cnn()
    with pytest.raises(UserError) as e:
        stage(PruneNM, PruneNMParams(exclude=["head.*"])).apply(model, context(None, model, evaluate="top1"))
    assert e.value.problems[0].key == "exclude"
    ctx = context(None, model, evaluate="top1")
    stage(PruneNM, PruneNMParams(exclude=["1?"])).apply(model, ctx)
    assert set(ctx.notes["layer_sparsity"]) == {"3", "7"}
    assert [k for k, _ in PruneNMParams(n=4, m=4).check()] == ["n"]
    assert [k for k, _ in PruneNMParams(n=1, m=1).check()] == ["m"]


# ---------------------------------------------------------------- prune_layers


class Residual(nn.Module):
    def __init__(self, c, scale=1.0):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))
        with torch.no_grad():
            self.f[2].weight.mul_(scale)

    def forward(self, x):
        return x + self.f(x)


class Projected(Residual):
    def __init__(self, c):
        super().__init__(c)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return self.proj(x) + self.f(x)


def random_data(shape, n=32, classes=10):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g)
    return tensor_data(x, torch.randint(0, classes, (n,), generator=g), num_classes=classes)


def toy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Residual(8), Residual(8, scale=1e-3), Projected(8),
                         Residual(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


def test_residual_detection():
    m = torchvision.models.resnet18(weights=None)
    assert is_residual(m.layer1[0]) and is_residual(m.layer3[1])
    assert not is_residual(m.layer2[0])  # has a downsample: its shortcut is not x
    assert not is_residual(Projected(4)) and is_residual(Residual(4))
    assert is_residual(torchvision.models.resnet50(weights=None).layer1[1])  # Bottleneck


@pytest.mark.parametrize("importance", ["norm", "metric"])
def test_prune_layers_removes_the_least_important_block(importance):
    model = toy()
    data = random_data((3, 8, 8))
    ctx = context(data, model, evaluate="top1")
    x = data.val.dataset.tensors[0]
    ref = model(x).detach()
    ctx.evaluate = lambda m: {"fidelity": -float((m(x).detach() - ref).pow(2).mean())}  # a smooth metric: no ties
    stage(PruneLayers, PruneLayersParams(importance=importance)).apply(model, ctx)
    assert ctx.notes["removed_blocks"] == ["2"]  # the block whose f(x) is almost zero
    assert set(ctx.notes["importance"]) == {"1", "2", "4"}  # "3" adds a projection, not x
    assert isinstance(model[2], nn.Identity) and model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_prune_layers_resnet18_runs_exports_and_reloads(tmp_path):
    from compressor.targets.onnx.export import export_onnx

    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    ctx = context(random_data((3, 32, 32)), model, evaluate="top1")
    stage(PruneLayers, PruneLayersParams(count=2, importance="norm", exclude=["layer1.*"])).apply(model, ctx)
    removed = ctx.notes["removed_blocks"]
    assert set(ctx.notes["importance"]) == {"layer2.1", "layer3.1", "layer4.1"}
    assert len(removed) == 2 and all(isinstance(model.get_submodule(n), nn.Identity) for n in removed)
    assert not any(n.startswith(tuple(r + "." for r in removed)) for n, _ in model.named_modules())  # really gone
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10)
    # a checkpoint's layer specs rebuild the removal on a fresh model; the weights then fit exactly
    fresh = apply_layer_specs(torchvision.models.resnet18(weights=None, num_classes=10), layer_specs(model))
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), out)
    assert export_onnx(model, x[:1], tmp_path / "m.onnx").stat().st_size > 0


def test_prune_layers_refuses_a_model_without_residual_blocks(digits):
    model = digits_cnn()
    with pytest.raises(UserError) as e:
        stage(PruneLayers, PruneLayersParams()).apply(model, context(digits, model, evaluate="top1"))
    assert "no removable residual block" in str(e.value) and "\n" not in str(e.value)
    model = toy()
    with pytest.raises(UserError) as e:
        stage(PruneLayers, PruneLayersParams(count=4, importance="norm")).apply(
            model, context(random_data((3, 8, 8)), model, evaluate="top1"))
    assert e.value.problems[0].key == "count"


# ---------------------------------------------------------------- sensitivity


@pytest.fixture(scope="module")
def scanned(digits):
    model = digits_cnn()
    ctx = context(digits, model, evaluate="top1")
    out = stage(Sensitivity, SensitivityParams(ratios=[0.2, 0.5, 0.8], target_macs_reduction=0.4)).apply(model, ctx)
    return model, out, ctx


def test_sensitivity_table_shape_and_trend(scanned):
    model, out, ctx = scanned
    assert out is model and torch.equal(model[0].weight, digits_cnn()[0].weight)  # unchanged
    scan = ctx.notes["sensitivity"]
    assert list(scan) == ["0", "3", "7", "12"]  # every Conv/Linear but the classifier head "15"
    assert all(list(row) == [0.2, 0.5, 0.8] for row in scan.values())
    falling = [layer for layer, row in scan.items() if row[0.2] >= row[0.5] - 0.005 >= row[0.8] - 0.01]
    assert len(falling) >= 3, scan
    assert scan["0"][0.8] < scan["0"][0.2] - 0.2  # the first conv, 32 channels, is the most sensitive


def test_sensitivity_ratios_feed_prune_structured(scanned, digits):
    model, _, ctx = scanned
    ratios = ctx.handoff.layer_ratios
    assert set(ratios) == {"0", "3", "7", "12"} and ratios == ctx.notes["layer_ratios"]
    assert ctx.notes["macs_reduction"] >= 0.4 - 1e-3
    pruned = copy.deepcopy(model)
    later = context(digits, pruned, evaluate="top1")
    later.handoff = ctx.handoff  # as the runner's one Context carries it from stage to stage
    stage(PruneStructured, PruneStructuredParams(ratios_from_sensitivity=True)).apply(pruned, later)
    example = digits.example_input()
    cut = 1 - measure.count_macs(pruned, example) / measure.count_macs(model, example)
    assert cut == pytest.approx(ctx.notes["macs_reduction"], abs=1e-3)  # the same channel counts
    print(f"sensitivity-chosen ratios {ratios}: MACs -{cut:.1%}, top1 {top1(pruned, digits):.4f} before fine-tuning")
    with pytest.raises(UserError) as e:
        other = digits_cnn()
        stage(PruneStructured, PruneStructuredParams(ratios_from_sensitivity=True)).apply(
            other, context(digits, other, evaluate="top1"))
    assert e.value.problems[0].key == "ratios_from_sensitivity"


def test_ratios_for_target_prefers_the_robust_layer():
    scan = {"a": {0.25: 0.80, 0.5: 0.50}, "b": {0.25: 0.99, 0.5: 0.98}}
    saved = {"a": {0.25: 0.10, 0.5: 0.20}, "b": {0.25: 0.10, 0.5: 0.20}}
    assert ratios_for_target(scan, 1.0, 0.2, saved) == {"a": 0.0, "b": 0.5}
    assert ratios_for_target(scan, 1.0, 0.3, saved) == {"a": 0.25, "b": 0.5}
    with pytest.raises(UserError):
        ratios_for_target(scan, 1.0, 0.5, saved)


def test_report_shows_the_scan(tmp_path):
    from compressor.report.writer import sensitivity_section

    notes = {"baseline": 0.99, "sensitivity": {"0": {"0.2": 0.9, "0.5": 0.5}, "3": {"0.2": 0.98, "0.5": 0.95}},
             "layer_ratios": {"0": 0.0, "3": 0.5}, "macs_reduction": 0.3}
    report = {"baseline": {"metric": {"top1": 0.99}}, "stages": [{"name": "sens", "notes": notes}]}
    text = sensitivity_section(report, tmp_path)
    assert "| layer | 0.2 | 0.5 | chosen ratio |" in text and "| 3 | 0.9800 | 0.9500 | 0.5 |" in text
    assert "](sensitivity.png)" in text and (tmp_path / "sensitivity.png").stat().st_size > 1000
    assert sensitivity_section({"stages": [{"name": "p", "notes": {}}]}, tmp_path) == ""


def test_validate_sensitivity_then_prune_structured():
    proc = cli("validate", "pipeline=[sens,prune,finetune,quantize]", "+stage@stages.sens=sensitivity",
               "stages.prune.ratios_from_sensitivity=true")
    assert proc.returncode == 0, proc.stderr
    assert "sens (sensitivity)" in proc.stdout and "prune (prune_structured)" in proc.stdout
    proc = cli("validate", "+stage@stages.sens=sensitivity", "pipeline=[sens,prune]", "stages.sens.ratios=[0.5,1.5]")
    assert proc.returncode == 2 and "stages.sens.ratios" in proc.stderr
