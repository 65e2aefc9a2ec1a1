"""Any torchvision model by zoo name. Weights: none, a local checkpoint (.safetensors, or
.pt/.pth read with torch.load(weights_only=True)), or a torchvision weights enum name, which
is downloaded only where the machine reaches the hub (a clear error otherwise)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from compressor.errors import UserError, did_you_mean


def zoo_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


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
        if self.checkpoint and not Path(self.checkpoint).is_file():
            yield "checkpoint", f"file not found: {self.checkpoint}"
        if self.weights and self.checkpoint:
            yield "weights", "give weights or checkpoint, not both"


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file, never through a full pickle."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses pickled code: say so in one line
        raise UserError(f"{path} is not a plain state dict that loads without running pickled code ({type(e).__name__})",
                        key="model.checkpoint") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict", key="model.checkpoint")
    return state


def build(params: TorchvisionParams, load_weights: bool = True) -> nn.Module:
    import torchvision

    weights = params.weights if load_weights else None
    try:
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
        state = load_state_dict(params.checkpoint)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(f"{params.checkpoint} does not fit {params.name}: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}", key="model.checkpoint")
    return model.eval()
