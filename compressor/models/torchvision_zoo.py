"""Any torchvision model by zoo name. Weights: none, a local checkpoint (.safetensors, or
.pt/.pth read with torch.load(weights_only=True); a full pickle only with the command-line flag
--trust-pickle), or a torchvision weights enum name, which is downloaded only where the machine
reaches the hub (a clear error otherwise).

`kwargs` go to the zoo builder. The ViT builders (vit_b_16, ...) fix their architecture, so
for them `kwargs` may also override it (patch_size, num_layers, num_heads, hidden_dim,
mlp_dim): a small ViT for small images is `name: vit_b_16, kwargs: {image_size: 32,
patch_size: 8, hidden_dim: 64, mlp_dim: 128, num_layers: 2, num_heads: 4}` (no weights:
published weights fit only the published architecture)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from compressor.errors import UserError, did_you_mean
from compressor.core.files import file_problem, sniff
from compressor.core.untrusted import torch_load

CHECKPOINT_FORMATS = ("safetensors", "pytorch")  # a .pt/.pth loads restricted unless --trust-pickle


def zoo_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


# What each torchvision ViT builder passes VisionTransformer (torchvision/models/vision_transformer.py).
VIT_ARCH = ("patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim")
VIT_DEFAULTS = {
    "vit_b_16": (16, 12, 12, 768, 3072), "vit_b_32": (32, 12, 12, 768, 3072),
    "vit_l_16": (16, 24, 16, 1024, 4096), "vit_l_32": (32, 24, 16, 1024, 4096), "vit_h_14": (14, 32, 16, 1280, 5120),
}


def _vit_overrides(params: "TorchvisionParams") -> dict | None:
    """The VisionTransformer arguments when kwargs change a ViT builder's fixed architecture."""
    if params.name not in VIT_DEFAULTS or not set(VIT_ARCH) & set(params.kwargs):
        return None
    return {"image_size": 224, **dict(zip(VIT_ARCH, VIT_DEFAULTS[params.name])), **params.kwargs}


def _check_vit(params: "TorchvisionParams"):
    import inspect

    from torchvision.models import VisionTransformer

    args = _vit_overrides(params)
    if args is None:
        return
    if params.weights:
        yield "weights", f"weights fit only the published {params.name}; drop them to change kwargs " \
                         f"{', '.join(k for k in VIT_ARCH if k in params.kwargs)}"
    accepted = set(inspect.signature(VisionTransformer).parameters) - {"self", "num_classes"}
    for k in params.kwargs:
        if k not in accepted:
            yield f"kwargs.{k}", f"not an argument of torchvision's VisionTransformer{did_you_mean(k, accepted)}"
    sizes = {k: args.get(k) for k in ("image_size", "patch_size", "hidden_dim", "num_heads")}
    if not all(isinstance(v, int) and v > 0 for v in sizes.values()):
        yield "kwargs", f"image_size, patch_size, hidden_dim and num_heads must be positive integers, got {sizes}"
    elif sizes["image_size"] % sizes["patch_size"]:
        yield "kwargs.patch_size", f"must divide image_size {sizes['image_size']}, got {sizes['patch_size']}"
    elif sizes["hidden_dim"] % sizes["num_heads"]:
        yield "kwargs.num_heads", f"must divide hidden_dim {sizes['hidden_dim']}, got {sizes['num_heads']}"


@dataclass
class TorchvisionParams:
    name: str = "resnet18"
    num_classes: int = 1000
    weights: Optional[str] = None  # e.g. DEFAULT or IMAGENET1K_V1 (needs the hub)
    checkpoint: Optional[str] = None  # a local state dict: .safetensors, .pt or .pth
    kwargs: dict = field(default_factory=dict)  # extra constructor arguments, e.g. {image_size: 64}

    def check(self):
        names = zoo_names()
        if self.name not in names:
            yield "name", f"torchvision has no model '{self.name}'{did_you_mean(self.name, names)}"
        if self.checkpoint and (problem := file_problem(self.checkpoint, CHECKPOINT_FORMATS)):
            yield "checkpoint", problem
        if self.weights and self.checkpoint:
            yield "weights", "give weights or checkpoint, not both"
        if self.name in VIT_DEFAULTS:
            yield from _check_vit(self)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file, never through a full pickle unless the command line says
    --trust-pickle (shared by the timm source)."""
    path = Path(path)
    if sniff(path) == "safetensors":  # by content, not name: a safetensors file named model.pt loads too
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch_load(path, key="model.checkpoint")  # weights_only, unless --trust-pickle
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict", key="model.checkpoint")
    return state


def build(params: TorchvisionParams, load_weights: bool = True) -> nn.Module:
    import torchvision

    weights = params.weights if load_weights else None
    vit = _vit_overrides(params)
    try:
        if vit is not None:
            model = torchvision.models.VisionTransformer(num_classes=params.num_classes, **vit)
        else:
            model = torchvision.models.get_model(params.name, weights=weights, num_classes=params.num_classes,
                                                 **params.kwargs)
    except (OSError, RuntimeError) as e:
        if weights and "download" in str(e).lower() or isinstance(e, OSError):
            raise UserError(f"could not fetch torchvision weights '{weights}' (no network?); download them where "
                            f"you can and pass model.checkpoint=PATH", key="model.weights") from e
        raise
    except (TypeError, ValueError) as e:
        raise UserError(f"torchvision rejected the arguments: {e}", key="model") from e
    if load_weights and params.checkpoint:
        load_checkpoint_into(model, params.checkpoint, params.name)
    return model.eval()


def load_checkpoint_into(model: nn.Module, path: str, name: str) -> None:
    """Load a local checkpoint (see load_state_dict) into `model`; one line naming
    model.checkpoint when it does not fit."""
    state = load_state_dict(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # same names, other shapes
        raise UserError(f"{path} does not fit {name}: {_first_mismatch(str(e))}", key="model.checkpoint") from e
    if missing or unexpected:
        raise UserError(f"{path} does not fit {name}: missing {missing[:3]}, unexpected {unexpected[:3]}",
                        key="model.checkpoint")


def _first_mismatch(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if "size mismatch" in line]
    return lines[0] if lines else message.strip().splitlines()[0]
