"""The reference CNN for scikit-learn's 8x8 handwritten digits, shipped trained.

Reproduce the packaged weights (deterministic on CPU, about 20 s):
    python -m compressor.models.digits_cnn
The accuracy it reached is stored in the file's metadata (`accuracy`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from compressor.core.files import file_problem
from compressor.errors import UserError

PACKAGED = Path(__file__).with_name("digits_cnn.safetensors")


@dataclass
class DigitsCNNParams:
    width: int = 32  # channels of the first conv; later convs double it
    num_classes: int = 10
    checkpoint: str | None = None  # a .safetensors file of this architecture; None = the packaged one

    def check(self):
        if self.width < 1:
            yield "width", f"must be positive, got {self.width}"
        if self.num_classes < 1:
            yield "num_classes", f"must be positive, got {self.num_classes}"
        if self.checkpoint and (problem := file_problem(self.checkpoint, ("safetensors",))):
            yield "checkpoint", problem


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class DigitsCNN(nn.Sequential):
    def __init__(self, width: int = 32, num_classes: int = 10):
        w = width
        super().__init__(
            *_block(1, w), *_block(w, 2 * w), nn.MaxPool2d(2),
            *_block(2 * w, 4 * w), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(4 * w * 4, 8 * w), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(8 * w, num_classes),
        )


def build(params: DigitsCNNParams, load_weights: bool = True) -> nn.Module:
    model = DigitsCNN(params.width, params.num_classes)
    if load_weights:
        path = Path(params.checkpoint) if params.checkpoint else PACKAGED
        if not path.is_file():
            raise UserError(f"checkpoint file not found: {path}", key="model.checkpoint")
        try:
            model.load_state_dict(load_file(str(path)))
        except RuntimeError as e:
            raise UserError(f"{path} does not fit DigitsCNN(width={params.width}): {str(e).splitlines()[0]}",
                            key="model.checkpoint") from e
    return model.eval()


def packaged_accuracy() -> float:
    with safe_open(str(PACKAGED), framework="pt") as f:
        return float(json.loads(f.metadata()["accuracy"]))


def train_reference(epochs: int = 40, seed: int = 0) -> tuple[nn.Module, float]:
    from compressor.data.digits import DigitsParams, build as build_digits
    from compressor.training.loop import fit, accuracy

    torch.manual_seed(seed)
    data = build_digits(DigitsParams(batch_size=64), seed=seed)
    model = DigitsCNN()
    fit(model, data.train, epochs=epochs, lr=2e-3, optimizer="adamw", weight_decay=1e-4, schedule="cosine")
    return model.eval(), accuracy(model, data.val)


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    model, acc = train_reference()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(PACKAGED), metadata={"accuracy": json.dumps(acc), "command": "python -m compressor.models.digits_cnn"})
    print(f"validation accuracy {acc:.4f}, wrote {PACKAGED} ({PACKAGED.stat().st_size} bytes)")
