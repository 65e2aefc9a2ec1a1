"""Image data from disk and synthetic inputs.

`imagefolder`: a folder of class subfolders (torchvision's ImageFolder); a `val/` and
`train/` inside are used as splits, otherwise one folder is split deterministically.
`synthetic`: random inputs of a given shape, for calibration and latency only; the report
marks the metric unavailable rather than inventing one."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from compressor.core.files import folder_problem
from compressor.data.common import check_loader
from compressor.core.interfaces import DataSplits

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class ImageFolderParams:
    root: str = "???"
    image_size: int = 224
    resize: Optional[int] = None  # shorter side before the center crop; default image_size * 8/7
    mean: list = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list = field(default_factory=lambda: list(IMAGENET_STD))
    batch_size: int = 32
    workers: int = 0
    val_fraction: float = 0.2  # used when root has no train/ and val/ subfolders
    calibration_size: int = 256

    def check(self):
        if problem := folder_problem(self.root) or _image_folder_problem(Path(self.root)):
            yield "root", problem
        if self.image_size < 8:
            yield "image_size", f"must be >= 8, got {self.image_size}"
        yield from check_loader(self)


def _image_folder_problem(root: Path) -> str | None:
    """What torchvision's ImageFolder would refuse: no class subfolders, or a class without images
    (read from `train/` and `val/` when root has both)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    splits = [root / "train", root / "val"] if (root / "train").is_dir() and (root / "val").is_dir() else [root]
    for split in splits:
        classes = sorted(p for p in split.iterdir() if p.is_dir())
        if not classes:
            return f"{split} has no class subfolders (one folder of images per class)"
        for c in classes:
            if not any(f.suffix.lower() in IMG_EXTENSIONS for f in c.rglob("*")):
                return f"class folder {c} has no images ({', '.join(IMG_EXTENSIONS)})"
    return None


def build_imagefolder(params: ImageFolderParams, seed: int = 0) -> DataSplits:
    """Images from a folder of class subfolders (torchvision's ImageFolder), or its train/ and val/."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.Resize(params.resize or int(params.image_size * 8 / 7)),
        transforms.CenterCrop(params.image_size),
        transforms.ToTensor(),
        transforms.Normalize(params.mean, params.std),
    ])
    root = Path(params.root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, val = datasets.ImageFolder(root / "train", tf), datasets.ImageFolder(root / "val", tf)
        num_classes = len(train.classes)
    else:
        full = datasets.ImageFolder(root, tf)
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(full), generator=g).tolist()
        n_val = max(1, int(len(full) * params.val_fraction))
        train, val = Subset(full, order[n_val:]), Subset(full, order[:n_val])
        num_classes = len(full.classes)
    calib = Subset(train, list(range(min(params.calibration_size, len(train)))))
    g = torch.Generator().manual_seed(seed)
    kw = dict(batch_size=params.batch_size, num_workers=params.workers)
    return DataSplits(train=DataLoader(train, shuffle=True, generator=g, **kw), val=DataLoader(val, **kw),
                      calib=DataLoader(calib, **kw), num_classes=num_classes,
                      input_shape=(3, params.image_size, params.image_size))


@dataclass
class SyntheticParams:
    shape: list = field(default_factory=lambda: [3, 224, 224])  # one sample
    num_classes: Optional[int] = None
    samples: int = 64
    batch_size: int = 16

    def check(self):
        if not self.shape or any(not isinstance(d, int) or d < 1 for d in self.shape):
            yield "shape", f"must be a list of positive ints, got {self.shape}"
        if self.samples < 1:
            yield "samples", f"must be >= 1, got {self.samples}"


def build_synthetic(params: SyntheticParams, seed: int = 0) -> DataSplits:
    """Random inputs of a given shape, for calibration and latency only (no metric)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn([params.samples] + list(params.shape), generator=g)
    y = torch.zeros(params.samples, dtype=torch.long)
    ds = TensorDataset(x, y)
    dl = DataLoader(ds, batch_size=params.batch_size)
    return DataSplits(train=dl, val=dl, calib=dl, num_classes=params.num_classes,
                      input_shape=tuple(params.shape), labelled=False)
