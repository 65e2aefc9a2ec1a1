"""What every data source shares: the seeded train/val split, the three loaders, and the
checks on the loader settings (batch size, workers, split fraction, calibration size)."""
from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from compressor.errors import UserError
from compressor.core.interfaces import DataSplits


def installed(package: str) -> bool:
    """Whether `package` can be imported, without importing it (validation stays fast)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # ValueError: the module is None in sys.modules (hidden on purpose)
        return False


def split_by_seed(dataset: Dataset, val_fraction: float, seed: int, key: str = "data") -> tuple[Subset, Subset]:
    """A random (seeded) val_fraction of the items for validation, the rest for training."""
    n = len(dataset)
    n_val = max(1, int(n * val_fraction))
    if n - n_val < 1:
        raise UserError(f"{n} item(s) cannot be split into training and validation data", key=key)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, order[n_val:]), Subset(dataset, order[:n_val])


def make_splits(train: Dataset, val: Dataset, params: Any, seed: int, *, num_classes: int | None,
                input_shape: tuple[int, ...], labelled: bool = True) -> DataSplits:
    """Loaders from the recipe's `batch_size` and `workers`: training shuffled by a seeded
    generator, validation in order, calibration the first `calibration_size` training items."""
    calib = Subset(train, list(range(min(params.calibration_size, len(train)))))
    kw = dict(batch_size=params.batch_size, num_workers=params.workers)
    g = torch.Generator().manual_seed(seed)
    return DataSplits(train=DataLoader(train, shuffle=True, generator=g, **kw), val=DataLoader(val, **kw),
                      calib=DataLoader(calib, **kw), num_classes=num_classes, input_shape=tuple(input_shape),
                      labelled=labelled)


def check_loader(params: Any):
    """(key, message) for the loader settings every source has."""
    if params.batch_size < 1:
        yield "batch_size", f"must be >= 1, got {params.batch_size}"
    if params.workers < 0:
        yield "workers", f"must be >= 0, got {params.workers}"
    if not 0 < params.val_fraction < 1:
        yield "val_fraction", f"must be in (0, 1), got {params.val_fraction}"
    if params.calibration_size < 0:
        yield "calibration_size", f"must be >= 0, got {params.calibration_size}"
