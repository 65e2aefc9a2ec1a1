"""`tensors`: arrays from a numpy `.npz` file (`numpy.savez`): inputs under `x_key`, class
labels under `y_key`. Without labels the data is unlabelled: the report measures fidelity
metrics against the uncompressed model and marks label metrics unavailable.

Floating inputs become float32 (the models' dtype), integer inputs int64 (token ids for
embedding layers). Files are read with `allow_pickle=False`: nothing in them can run code."""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import TensorDataset

from compressor.core.files import file_problem
from compressor.data.common import check_loader, make_splits, split_by_seed
from compressor.errors import UserError, did_you_mean
from compressor.core.interfaces import DataSplits

DEFAULT_Y = "y"


@dataclass
class TensorsParams:
    path: str = "???"  # a .npz file
    val: Optional[str] = None  # a second .npz for validation; default: split `path` by val_fraction
    x_key: str = "x"  # the inputs' array: (samples, ...) float, or int token ids
    y_key: Optional[str] = DEFAULT_Y  # integer class labels (samples,); a file without "y" is unlabelled
    num_classes: Optional[int] = None  # default: the largest label + 1
    batch_size: int = 32
    workers: int = 0
    val_fraction: float = 0.2
    calibration_size: int = 256

    def check(self):
        names = {}
        for key in ("path", "val"):
            path = getattr(self, key)
            if path is None:
                continue
            problem, names[key] = _arrays_in(path)
            if problem:
                yield key, problem
            elif self.x_key not in names[key]:
                yield "x_key", f"no array '{self.x_key}' in {path}{did_you_mean(self.x_key, names[key])}; " \
                               f"it has {', '.join(names[key]) or 'none'}"
        if "path" in names and self.y_key and self.y_key not in names["path"] and self.y_key != DEFAULT_Y:
            yield "y_key", f"no array '{self.y_key}' in {self.path}{did_you_mean(self.y_key, names['path'])}; " \
                           f"it has {', '.join(names['path']) or 'none'}"
        if self.num_classes is not None and self.num_classes < 1:
            yield "num_classes", f"must be >= 1, got {self.num_classes}"
        yield from check_loader(self)


def _arrays_in(path: str) -> tuple[str | None, list[str]]:
    """(problem, array names): reads only the zip directory of the file."""
    if problem := file_problem(path, ("zip",)):
        return problem, []
    if Path(path).suffix != ".npz":
        return f"must be a .npz file (numpy.savez), got {path}", []
    try:
        with np.load(path, allow_pickle=False) as f:
            return None, list(f.files)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        return f"cannot read {path} as .npz ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})", []


def _load(path: str, key: str, params: TensorsParams) -> tuple[torch.Tensor, torch.Tensor | None]:
    try:
        with np.load(path, allow_pickle=False) as f:
            x = f[params.x_key]
            y = f[params.y_key] if params.y_key and params.y_key in f.files else None
    except (OSError, ValueError, zipfile.BadZipFile) as e:  # object arrays need pickle: refused
        raise UserError(f"cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0]})", key=f"data.{key}") from e
    if x.ndim < 2:
        raise UserError(f"'{params.x_key}' in {path} has shape {x.shape}; it needs a leading sample axis and at "
                        f"least one more", key="data.x_key")
    if np.issubdtype(x.dtype, np.floating) or x.dtype == np.bool_:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    elif np.issubdtype(x.dtype, np.integer):
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))
    else:
        raise UserError(f"'{params.x_key}' in {path} is {x.dtype}; inputs must be floats or integer token ids",
                        key="data.x_key")
    if y is None:
        return xt, None
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or len(y) != len(x):
        raise UserError(f"'{params.y_key}' in {path} is {y.dtype} of shape {y.shape}; labels must be integer "
                        f"class indices, one per sample ({len(x)})", key="data.y_key")
    if len(y) and y.min() < 0:
        raise UserError(f"'{params.y_key}' in {path} has a negative label ({y.min()})", key="data.y_key")
    return xt, torch.from_numpy(y.astype(np.int64))


def build(params: TensorsParams, seed: int = 0) -> DataSplits:
    x, y = _load(params.path, "path", params)
    labelled = y is not None
    if params.val:
        xv, yv = _load(params.val, "val", params)
        if xv.shape[1:] != x.shape[1:] or xv.dtype != x.dtype:
            raise UserError(f"{params.val} holds {xv.dtype} samples of shape {tuple(xv.shape[1:])}, but "
                            f"{params.path} {x.dtype} of shape {tuple(x.shape[1:])}", key="data.val")
        if labelled != (yv is not None):
            raise UserError(f"one of {params.path} and {params.val} has labels ('{params.y_key}'), the other not",
                            key="data.val")
    num_classes = None
    if labelled:
        top = int(max(y.max() if len(y) else 0, yv.max() if params.val and len(yv) else 0))
        num_classes = params.num_classes or top + 1
        if top >= num_classes:
            raise UserError(f"label {top} does not fit num_classes={num_classes}", key="data.num_classes")
    else:
        y = torch.zeros(len(x), dtype=torch.long)
        yv = torch.zeros(len(xv), dtype=torch.long) if params.val else None
    if params.val:
        train, val = TensorDataset(x, y), TensorDataset(xv, yv)
    else:
        train, val = split_by_seed(TensorDataset(x, y), params.val_fraction, seed, key="data.path")
    return make_splits(train, val, params, seed, num_classes=num_classes, input_shape=tuple(x.shape[1:]),
                       labelled=labelled)
