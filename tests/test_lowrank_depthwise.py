"""lowrank and depthwise: real factorisations of the packaged digits CNN, measured (outputs, MACs,
the exported ONNX graph, checkpoints), and one full run through the command line."""
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compressor.run.checkpoint import layer_specs, load_checkpoint, module_spec, save_checkpoint
from compressor.errors import UserError
from compressor.modules.factorized import Factorized
from compressor.measure.stats import count_macs
from compressor.core.params import parse_params
from compressor.stages.rewrite.depthwise import Depthwise, DepthwiseParams, depthwise_pair
from compressor.stages.rewrite.lowrank import LowRank, LowRankParams, eligible, lowrank_pair, svd
from compressor.targets.onnx.export import export_onnx
from compressor.targets.onnxruntime import OrtEngine
from compressor.testing import context, digits, digits_cnn, params
from conftest import cli, load_report, run_dirs


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def x(data):
    return torch.cat([x for x, _ in data.val])


def rewrite(stage, stage_params, data):
    """The packaged CNN after `stage` with `stage_params`, and the stage's notes."""
    stage.params = stage_params
    ctx = context(data, digits_cnn(), evaluate="top1")
    model = stage.apply(digits_cnn(), ctx)
    return model, ctx.notes


def pairs(model):
    return [m for m in model.modules() if isinstance(m, Factorized)]


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_full_rank_pairs_reproduce_the_cnn(x):
    reference = digits_cnn()
    model = digits_cnn()
    names = [n for n, m in model.named_modules() if eligible(m)]
    for name in names:  # every conv and linear, at full rank (the stage would keep none: none is cheaper)
        layer = model.get_submodule(name)
        u, s, vh = svd(layer)
        model.set_submodule(name, lowrank_pair(layer, u, s, vh, len(s)))
    assert len(pairs(model)) == len(names) == 5
    assert (outputs(model, x) - outputs(reference, x)).abs().max() < 1e-4


def test_energy_and_rank_choose_ranks_that_cut_macs(data, x):
    base = count_macs(digits_cnn(), x)
    # energy 0.9: the first conv (9 x 32 weights) would need rank 8, past its break-even (r < 7.02)
    model, notes = rewrite(LowRank(), params(LowRankParams, epochs=0, energy=0.9), data)
    assert len(pairs(model)) == 4 and set(notes["skipped"]) == {"0"}
    assert 0.90 < count_macs(model, x) / base < 0.95
    assert min(notes["energy_kept"].values()) >= 0.9
    model, notes = rewrite(LowRank(), params(LowRankParams, epochs=0, energy=0.8), data)
    assert len(pairs(model)) == 5 and count_macs(model, x) / base < 0.75
    # a fixed rank: MACs of each pair are r * (in*k*k + out) per output position, as measured
    model, notes = rewrite(LowRank(), params(LowRankParams, epochs=0, rank=8), data)
    assert notes["ranks"] == {"3": 8, "7": 8, "12": 8, "15": 8}
    assert notes["layer_macs"]["3"] == [32 * 9 * 64 * 64, 8 * (32 * 9 + 64) * 64]  # 8x8 map
    assert notes["layer_macs"]["12"] == [512 * 256, 8 * (512 + 256)]
    assert notes["factorized_macs_before"] == 2 * 1179648 + 131072 + 2560
    assert notes["factorized_macs_after"] == 8 * ((288 + 64) * 64 + (576 + 128) * 16 + 512 + 256 + 256 + 10)
    assert model[3][0].out_channels == 8 and model[3][1].kernel_size == (1, 1)


def test_nothing_cheaper_and_bad_patterns_are_one_line_errors(data):
    # the params are valid as recipe keys: the stage refuses them on this model
    full = params(LowRankParams, epochs=0, energy=1.0)
    batchnorm = params(DepthwiseParams, epochs=0, layers=["1"])
    nothing = params(LowRankParams, epochs=0, ignore=["nope*"])
    first = params(DepthwiseParams, epochs=0, layers=["0"])
    with pytest.raises(UserError) as e:  # full energy keeps full ranks: no pair is cheaper
        rewrite(LowRank(), full, data)
    assert e.value.problems[0].key == "energy" and "no layer gets cheaper" in str(e.value)
    with pytest.raises(UserError) as e:
        rewrite(Depthwise(), batchnorm, data)  # a BatchNorm
    assert e.value.problems[0].key == "layers"
    with pytest.raises(UserError) as e:
        rewrite(LowRank(), nothing, data)
    assert e.value.problems[0].key == "ignore"
    with pytest.raises(UserError) as e:  # only the first conv asked for, and keep_first keeps it
        rewrite(Depthwise(), first, data)
    assert e.value.problems[0].key == "layers" and "keep_first" in str(e.value)


def test_params_are_checked_with_their_keys():
    _, problems = parse_params(LowRankParams, {"energy": 1.5, "rank": 0}, "stages.lr")
    assert {p.key for p in problems} == {"stages.lr.energy", "stages.lr.rank"}
    _, problems = parse_params(LowRankParams, {"energy": 0.0}, "stages.lr")
    assert [p.key for p in problems] == ["stages.lr.energy"]
    parsed, problems = parse_params(DepthwiseParams, {"epochs": 0}, "stages.dw")  # no recovery: allowed here
    assert not problems and parsed.train.epochs == 0
    _, problems = parse_params(DepthwiseParams, {"epochs": -1}, "stages.dw")
    assert [p.key for p in problems] == ["stages.dw.epochs"]


def test_rank_one_slices_make_an_exact_depthwise_pair():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1, bias=True)
    with torch.no_grad():  # every input channel's 10 x 9 slice has rank 1
        conv.weight.copy_(torch.randn(10, 6, 1, 1) * torch.randn(1, 6, 3, 3))
    pair, error = depthwise_pair(conv)
    x = torch.randn(2, 6, 9, 9)
    assert error < 1e-5 and (outputs(pair, x) - outputs(conv, x)).abs().max() < 1e-5
    assert pair[0].groups == 6 and pair[0].stride == (2, 2) and pair[1].bias is not None


def test_depthwise_exports_grouped_convs_and_cuts_macs(data, x, tmp_path):
    model, notes = rewrite(Depthwise(), params(DepthwiseParams, epochs=0), data)
    assert notes["replaced"] == ["3", "7"] and type(model[0]) is nn.Conv2d  # the first conv kept
    assert count_macs(model, x) / count_macs(digits_cnn(), x) < 0.2
    path = export_onnx(model, x[:1], tmp_path / "dw.onnx")
    groups = sorted(a.i for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"
                    for a in n.attribute if a.name == "group" and a.i > 1)
    assert groups == [32, 64]  # the in_channels of convs 3 and 7
    engine = OrtEngine(path)
    assert np.abs(engine(x.numpy()) - outputs(model, x).numpy()).max() < 1e-4
    model, notes = rewrite(Depthwise(), params(DepthwiseParams, epochs=0, keep_first=False), data)
    assert notes["replaced"] == ["0", "3", "7"]


@pytest.mark.parametrize("stage,stage_params", [(LowRank(), params(LowRankParams, epochs=0, energy=0.8)),
                                                (Depthwise(), params(DepthwiseParams, epochs=0))],
                         ids=["lowrank", "depthwise"])
def test_checkpoints_rebuild_factorized_models(data, x, tmp_path, stage, stage_params):
    model, _ = rewrite(stage, stage_params, data)
    specs = layer_specs(model)
    assert specs["3"]["type"] == "Factorized" and not any(n.startswith("3.") for n in specs)  # children inside
    path = save_checkpoint(model, tmp_path / "model.safetensors", {"kind": "digits_cnn"})
    loaded = load_checkpoint(path)  # strict: every weight must fit the rebuilt pairs
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    assert torch.equal(outputs(loaded, x), outputs(model, x))


def test_plain_sequentials_are_not_recorded():
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 2))
    assert module_spec(model[0]) is None and set(layer_specs(model)) == {"0.0", "1"}


def test_quantized_models_are_refused(data):
    from compressor.stages.quantize.int8 import QuantizeInt8, QuantizeInt8Params

    q = QuantizeInt8()
    q.params = QuantizeInt8Params(calibration_batches=1, max_drop=None)
    model = q.apply(digits_cnn(), context(data, digits_cnn(), evaluate="top1"))
    stage = LowRank()
    stage.params = params(LowRankParams, epochs=0)
    with pytest.raises(UserError, match="before the quantize stages"):
        stage.apply(model, context(data, digits_cnn(), evaluate="top1"))


def test_recipe_validation_names_the_key(cli_inproc):
    proc = cli_inproc("validate", "+stage@stages.lr=lowrank", "pipeline=[lr]", "stages.lr.energy=0")
    assert proc.returncode == 2 and "error: stages.lr.energy: must be in (0, 1], got 0" in proc.stderr


@pytest.mark.slow
def test_run_depthwise_then_lowrank_end_to_end(tmp_path):
    proc = cli("run", "+stage@stages.dw=depthwise", "+stage@stages.lr=lowrank", "pipeline=[dw,lr]",
               "stages.dw.epochs=2", "stages.lr.epochs=1", "eval.max_drop=0.03", "eval.iters=5", "eval.warmup=1",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_dir = run_dirs(tmp_path)[-1]
    report = load_report(run_dir)
    dw, lr = report["stages"]
    assert report["status"] == "ok" and report["engine"]["parity"]["passed"]
    assert dw["macs"] < 0.2 * report["baseline"]["macs"] and lr["macs"] < dw["macs"]
    assert set(lr["notes"]["ranks"]) == {"12", "15"}  # the depthwise pairs are left alone
    model = load_checkpoint(run_dir / lr["checkpoint"])
    assert len(pairs(model)) == 4 and model[3][0].groups == 32
