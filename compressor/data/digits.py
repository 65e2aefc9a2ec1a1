"""scikit-learn's handwritten digits: 1,797 real 8x8 images shipped inside the package,
so the default recipe needs no network. Split 80/20, stratified, fixed by the seed."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from compressor.core.interfaces import DataSplits


@dataclass
class DigitsParams:
    image_size: int = 8  # upsampled (bilinear) when a model wants larger inputs
    channels: int = 1  # 3 repeats the grey channel for RGB models
    batch_size: int = 64
    val_fraction: float = 0.2
    calibration_size: int = 256  # first training images, used to calibrate quantization

    def check(self):
        if self.image_size < 8:
            yield "image_size", f"must be at least 8, got {self.image_size}"
        if self.channels not in (1, 3):
            yield "channels", f"must be 1 or 3, got {self.channels}"
        if not 0 < self.val_fraction < 1:
            yield "val_fraction", f"must be in (0, 1), got {self.val_fraction}"
        if self.batch_size < 1:
            yield "batch_size", f"must be positive, got {self.batch_size}"


def build(params: DigitsParams, seed: int = 0) -> DataSplits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - 0.3) / 0.4  # roughly zero mean, unit variance
    y = torch.tensor(digits.target, dtype=torch.long)
    if params.image_size != 8:
        x = F.interpolate(x, size=params.image_size, mode="bilinear", align_corners=False)
    if params.channels == 3:
        x = x.repeat(1, 3, 1, 1)
    idx_train, idx_val = train_test_split(
        list(range(len(y))), test_size=params.val_fraction, stratify=y.numpy(), random_state=seed
    )
    train = TensorDataset(x[idx_train], y[idx_train])
    val = TensorDataset(x[idx_val], y[idx_val])
    calib = TensorDataset(x[idx_train[: params.calibration_size]], y[idx_train[: params.calibration_size]])
    g = torch.Generator().manual_seed(seed)
    bs = params.batch_size
    return DataSplits(
        train=DataLoader(train, batch_size=bs, shuffle=True, generator=g),
        val=DataLoader(val, batch_size=bs),
        calib=DataLoader(calib, batch_size=bs),
        num_classes=10,
        input_shape=tuple(x.shape[1:]),
    )
