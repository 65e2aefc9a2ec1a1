"""prune_structured on torchvision architectures (untrained, small inputs): the model really
shrinks, still runs, exports to ONNX and matches ONNX Runtime, and its pruned architecture
rebuilds from the checkpoint's layer specs without pickle. bench/zoo_pruning.py runs the whole zoo."""
import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from compressor.run.checkpoint import (apply_layer_attrs, apply_layer_specs, fit_bare_params, layer_attrs,
                                   layer_specs)
from compressor.errors import UserError
from compressor.core.interfaces import Context
from compressor.stages.prune.structured import PruneStructured, PruneStructuredParams
from compressor.targets.onnx.export import export_onnx
from compressor.targets.onnxruntime import OrtEngine
from compressor.testing import context, tensor_data

tvm = torchvision.models


def prune(model: nn.Module, size: int, **params) -> tuple[nn.Module, Context]:
    ctx = context(tensor_data(torch.rand(2, 3, size, size), num_classes=1000, batch_size=2))
    stage = PruneStructured()
    stage.params = PruneStructuredParams(**{"ratio": 0.5, **params})
    return stage.apply(model, ctx), ctx


def small_vit():
    model = tvm.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-inits the head: outputs would all be 0
    return model


# (name, builder, input size, rebuild from specs?)  small inputs keep the file under ~90 s on 2 cores
CASES = [
    ("resnet18", lambda: tvm.resnet18(weights=None), 64),
    ("mobilenet_v3_small", lambda: tvm.mobilenet_v3_small(weights=None), 64),
    ("efficientnet_b0", lambda: tvm.efficientnet_b0(weights=None), 64),
    ("densenet", lambda: tvm.DenseNet(growth_rate=12, block_config=(2, 2, 2, 2), num_init_features=24), 64),
    ("vit", small_vit, 32),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,build,size", CASES, ids=[c[0] for c in CASES])
def test_prune_export_and_rebuild(tmp_path, name, build, size):
    torch.manual_seed(0)
    model = build().eval()
    fresh = copy.deepcopy(model)
    x = torch.rand(1, 3, size, size)
    params_before = sum(p.numel() for p in model.parameters())

    model, ctx = prune(model, size)
    params_after = sum(p.numel() for p in model.parameters())
    assert params_after < 0.6 * params_before, (params_before, params_after)  # channels really removed
    assert ctx.notes["params_ratio"] < 0.6 and ctx.notes["macs_ratio"] < 0.6
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 1000)  # the classifier keeps every class

    engine = OrtEngine(export_onnx(model, x, tmp_path / "model.onnx"))
    got = engine(x.numpy())
    assert np.abs(got - out.numpy()).max() <= 1e-4 + 1e-3 * np.abs(out.numpy()).max()

    # The pruned architecture from the checkpoint metadata alone: layer specs + scalar attributes.
    rebuilt = apply_layer_specs(fresh, layer_specs(model))
    apply_layer_attrs(rebuilt, layer_attrs(model))
    fit_bare_params(rebuilt, model.state_dict())  # a ViT's class token and position embedding
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), out)


def test_shufflenet_keeps_shuffled_channels_and_still_shrinks():
    """A channel shuffle is a reshape Torch-Pruning cannot map: the channels through it stay,
    everything else (inside the branches, stem, last conv) is pruned."""
    torch.manual_seed(0)
    model = tvm.shufflenet_v2_x0_5(weights=None).eval()
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    model, ctx = prune(model, 64)
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert after["stage2.1.branch2.0"] == before["stage2.1.branch2.0"] // 2  # inside a branch
    assert after["stage2.1.branch2.5"] == before["stage2.1.branch2.5"]  # feeds the shuffle
    assert ctx.notes["params_ratio"] < 0.6
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1000)


def test_ignore_pattern_that_matches_nothing_is_a_user_error():
    model = tvm.resnet18(weights=None).eval()
    with pytest.raises(UserError) as e:
        prune(model, 32, ignore=["nothing.*"])
    assert e.value.problems[0].key == "ignore"


def test_ignored_layers_keep_their_width():
    model = tvm.resnet18(weights=None).eval()
    model, ctx = prune(model, 32, ignore=["layer4.*"])
    assert model.layer4[1].conv1.out_channels == 512 and model.layer1[0].conv1.out_channels == 32
    assert "fc" in ctx.notes["ignored_layers"]  # the classifier, found from the traced outputs
