"""`torchvision_dataset`: any torchvision.datasets classification class (MNIST, FashionMNIST,
CIFAR10, SVHN, ...) read from a local `root`. Nothing is ever downloaded (download=False).

Splits: a class with `train=` gives train=True for training and calibration and train=False
for validation; a class with `split=` gets `train_split` and `val_split` by name; a class
with neither is split by `val_fraction` from the seed. Transforms from the recipe: resize
and center crop to `image_size`, `channels` 1 (grey) or 3 (grey repeated), `mean`/`std`."""
from __future__ import annotations

import inspect
import numbers
from dataclasses import dataclass
from typing import Optional

import torch

from compressor.core.files import folder_problem
from compressor.data.common import check_loader, make_splits, split_by_seed
from compressor.errors import UserError, did_you_mean
from compressor.core.interfaces import DataSplits

_NOT_DATASETS = {"VisionDataset", "DatasetFolder", "ImageFolder"}  # bases; `imagefolder` covers folders


def dataset_names() -> list[str]:
    """torchvision.datasets classes this source can build: a `root` and a `transform`
    argument and no other required one (no video, detection or stereo datasets)."""
    from torchvision import datasets

    names = []
    for name in getattr(datasets, "__all__", dir(datasets)):
        cls = getattr(datasets, name, None)
        if not (inspect.isclass(cls) and issubclass(cls, datasets.VisionDataset)) or name in _NOT_DATASETS:
            continue
        try:
            args = inspect.signature(cls.__init__).parameters
        except (TypeError, ValueError):
            continue
        required = [a for n, a in args.items() if n not in ("self", "root") and a.default is a.empty
                    and a.kind in (a.POSITIONAL_OR_KEYWORD, a.KEYWORD_ONLY)]
        if "root" in args and "transform" in args and not required:
            names.append(name)
    return sorted(names)


@dataclass
class TorchvisionDatasetParams:
    name: str = "???"  # a torchvision.datasets class: MNIST, FashionMNIST, CIFAR10, SVHN, ...
    root: str = "???"  # the folder torchvision reads the dataset's files from
    train_split: str = "train"  # for classes taking split=: the training split's name
    val_split: str = "test"  # for classes taking split=: the validation split's name
    image_size: Optional[int] = None  # resize + center crop to this size; None keeps the stored size
    channels: Optional[int] = None  # 1 (grey) or 3 (grey repeated); None keeps the stored channels
    mean: Optional[list] = None  # normalize after scaling to [0, 1]; one value, or one per channel
    std: Optional[list] = None
    batch_size: int = 64
    workers: int = 0
    val_fraction: float = 0.2  # for classes with neither train= nor split=
    calibration_size: int = 256

    def check(self):
        names = dataset_names()
        if self.name not in names:
            yield "name", f"torchvision.datasets has no classification dataset '{self.name}'" \
                          f"{did_you_mean(self.name, names)}"
        if problem := folder_problem(self.root):
            yield "root", f"{problem} (the {self.name} files must be there; nothing is downloaded)"
        if self.image_size is not None and self.image_size < 1:
            yield "image_size", f"must be >= 1, got {self.image_size}"
        if self.channels not in (None, 1, 3):
            yield "channels", f"must be 1 or 3, got {self.channels}"
        if (self.mean is None) != (self.std is None):
            yield "mean", "give mean and std together"
        elif self.mean is not None:
            if len(self.mean) != len(self.std) or len(self.mean) not in (1, self.channels or len(self.mean)):
                yield "mean", f"mean and std need 1 value or one per channel, got {self.mean} and {self.std}"
            elif any(not s for s in self.std):
                yield "std", f"must not be 0, got {self.std}"
        yield from check_loader(self)


class _Mode:
    """PIL image -> grey ("L") or RGB: grey repeated to three channels, colour averaged to one."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, img):
        return img.convert(self.mode) if hasattr(img, "convert") else img


def _transform(p: TorchvisionDatasetParams):
    from torchvision import transforms

    steps = []
    if p.channels is not None:
        steps.append(_Mode("L" if p.channels == 1 else "RGB"))
    if p.image_size is not None:
        steps += [transforms.Resize(p.image_size), transforms.CenterCrop(p.image_size)]
    steps.append(transforms.ToTensor())
    if p.mean is not None:
        steps.append(transforms.Normalize(p.mean, p.std))
    return transforms.Compose(steps)


def _open(cls, p: TorchvisionDatasetParams, which: str | None, tf):
    """One split of the dataset; which: "train"/"val" for the split, None for the whole."""
    args = inspect.signature(cls.__init__).parameters
    kw = {"transform": tf}
    if "download" in args:
        kw["download"] = False
    key = "data.root"
    if which is not None and "train" in args:
        split = p.train_split if which == "train" else p.val_split
        if split not in ("train", "test"):
            raise UserError(f"{p.name} has only the train and test splits (train=True/False), got '{split}'",
                            key=f"data.{which}_split")
        kw["train"] = split == "train"
    elif which is not None and "split" in args:
        kw["split"] = p.train_split if which == "train" else p.val_split
        key = f"data.{which}_split"
    try:
        return cls(p.root, **kw)
    except ValueError as e:  # torchvision's check of a split name, among others
        raise UserError(f"{p.name}: {str(e).splitlines()[0]}", key=key if "split" in kw else "data.name") from e
    except (RuntimeError, OSError) as e:  # "Dataset not found", a missing file
        raise UserError(f"torchvision's {p.name} found no readable files under {p.root} ({type(e).__name__}); "
                        f"nothing is downloaded: put the dataset there first", key="data.root") from e


def _num_classes(ds) -> int | None:
    classes = getattr(ds, "classes", None)
    if classes:
        return len(classes)
    for attr in ("targets", "labels", "_labels", "y"):
        labels = getattr(ds, attr, None)
        if labels is not None and len(labels):
            try:
                return int(max(int(v) for v in labels)) + 1
            except (TypeError, ValueError):
                return None
    return None


def build(params: TorchvisionDatasetParams, seed: int = 0) -> DataSplits:
    from torchvision import datasets

    cls = getattr(datasets, params.name)
    tf = _transform(params)
    args = inspect.signature(cls.__init__).parameters
    if "train" in args or "split" in args:
        train, val = _open(cls, params, "train", tf), _open(cls, params, "val", tf)
        full = train
    else:
        full = _open(cls, params, None, tf)
        train, val = split_by_seed(full, params.val_fraction, seed, key="data.root")
    if len(train) == 0 or len(val) == 0:
        raise UserError(f"{params.name} under {params.root} has {len(train)} training and {len(val)} validation "
                        f"items", key="data.root")
    x, target = train[0]
    if not isinstance(x, torch.Tensor):
        raise UserError(f"{params.name} items are {type(x).__name__}, not images", key="data.name")
    if isinstance(target, torch.Tensor) and target.numel() == 1:
        target = int(target)
    if not isinstance(target, numbers.Integral):
        raise UserError(f"{params.name} gives {type(target).__name__} targets, not class indices: only "
                        f"classification datasets can be used", key="data.name")
    return make_splits(train, val, params, seed, num_classes=_num_classes(full), input_shape=tuple(x.shape))
