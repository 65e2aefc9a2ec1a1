"""Real photographs that ship inside installed packages, for ImageNet classifiers with no
download: scikit-image's sample data and scikit-learn's two sample images. Unlabelled (no
ImageNet ground truth): a run measures fidelity metrics (`agreement`: the same top-1 as the
uncompressed model; `fidelity`) on them, which is what quantization changes.

Each photo gives deterministic square crops at several scales (`scales`: the crop side as a
fraction of the photo's shorter side) and positions (a `grid` x `grid` lattice over the room
the photo leaves, duplicates dropped), each resized to `image_size` (PIL bilinear, antialiased
when shrinking) and, with `flip`, mirrored too. Grey photos are repeated to three channels.
Calibration (the training split, which the quantize stages calibrate on) and evaluation (the
validation split, which every metric is measured on) are different photos; a check refuses a
photo in both. The calibration split interleaves its photos, so its first items (what
`calibration_size` and a stage's `calibration_batches` take) cover every calibration photo.
The defaults give 400 calibration and 398 evaluation inputs at 224x224.

`normalize`: `inception` is (x * 255 - 127) / 128 for x in [0, 1] (TensorFlow-trained models:
EfficientNet-Lite, ...), `imagenet` torchvision's mean/std, `none` leaves x in [0, 1].

Sources and licences (from the packages' own documentation):
- scikit-image (`skimage.data`, needs `pip install 'compressor[real]'`):
  astronaut: Eileen Collins, NASA Great Images database, public domain;
  camera: Lav Varshney, CC0; chelsea (a cat): Stefan van der Walt, CC0;
  coffee: Rachel Michetti (courtesy of Pikolo Espresso Bar), CC0;
  clock (clock_motion, a wall clock under camera motion): Stefan van der Walt, public domain;
  coins: Greek coins from Pompeii, Brooklyn Museum Collection, no known copyright restrictions;
  brick, gravel: CC0Textures, CC0; grass: linolafett on DeviantArt, CC0;
  hubble_deep_field: NASA, public domain; immunohistochemistry (ihc): CMMI, no known copyright restrictions;
  moon: surface of the moon, shipped with scikit-image (BSD-3-Clause package; no separate licence stated);
  page: a scanned page, shipped with scikit-image (BSD-3-Clause package; no separate licence stated);
  retina: Wikimedia Commons "Fundus photograph of normal left eye", CC0;
  rocket: DSCOVR launch on a Falcon 9, SpaceX, public domain;
  text: Wikipedia "File:Corner.png", public domain;
  motorcycle_left: left view of the Middlebury 2014 stereo data set (Scharstein et al., GCPR 2014),
  down-sampled by scikit-image (`skimage.data.stereo_motorcycle`); scikit-image states no licence for it.
- scikit-learn (`sklearn.datasets.load_sample_images`): china (a Chinese temple, Flickr user
  danielbuechele) and flower (Flickr user vultilion), both CC BY 2.0."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from compressor.data.common import installed, make_splits
from compressor.errors import UserError, did_you_mean
from compressor.core.interfaces import DataSplits
from compressor.core.params import one_of

MISSING = "needs the real-models extra: pip install 'compressor[real]'"
NORMALIZE = {"inception": ([127 / 255] * 3, [128 / 255] * 3), "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
             "none": ([0.0] * 3, [1.0] * 3)}


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()
    return load


def _motorcycle_left() -> np.ndarray:
    import skimage.data

    return skimage.data.stereo_motorcycle()[0]


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)
    return load


# name -> (loader, package): every photo is a file inside an installed package
PHOTOS: dict[str, tuple[Callable[[], np.ndarray], str]] = {
    **{n: (_skimage(n), "skimage") for n in (
        "astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
        "immunohistochemistry", "moon", "page", "retina", "rocket", "text")},
    "clock": (_skimage("clock"), "skimage"),
    "motorcycle_left": (_motorcycle_left, "skimage"),
    "china": (_sklearn("china.jpg"), "sklearn"),
    "flower": (_sklearn("flower.jpg"), "sklearn"),
}
CALIBRATION = ["astronaut", "rocket", "camera", "coins", "brick", "grass", "hubble_deep_field",
               "immunohistochemistry", "page", "china"]
EVALUATION = ["chelsea", "coffee", "clock", "motorcycle_left", "flower", "retina", "gravel", "moon", "text"]


@dataclass
class PhotosParams:
    image_size: int = 224
    normalize: str = "inception"  # inception: (x*255-127)/128 | imagenet: torchvision mean/std | none: [0, 1]
    calibration: list = field(default_factory=lambda: list(CALIBRATION))  # photos of the training/calibration split
    evaluation: list = field(default_factory=lambda: list(EVALUATION))  # photos every metric is measured on
    scales: list = field(default_factory=lambda: [1.0, 0.75, 0.5])  # crop side / the photo's shorter side
    grid: int = 3  # crop positions per axis at each scale
    flip: bool = True  # each crop mirrored too
    batch_size: int = 16
    workers: int = 0
    calibration_size: int = 1024  # first calibration items (photos interleaved)

    def check(self):
        if any(PHOTOS[n][1] == "skimage" for n in [*self.calibration, *self.evaluation] if n in PHOTOS) \
                and not installed("skimage"):
            yield "kind", MISSING
        for key in ("calibration", "evaluation"):
            names = getattr(self, key)
            if not names:
                yield key, "must name at least one photo"
            for i, n in enumerate(names):
                if n not in PHOTOS:
                    yield f"{key}[{i}]", f"no photo '{n}'{did_you_mean(str(n), PHOTOS)}; available: {', '.join(PHOTOS)}"
            if len(set(names)) != len(names):
                yield key, "names a photo twice"
        both = sorted(set(self.calibration) & set(self.evaluation))
        if both:
            yield "evaluation", f"{', '.join(map(str, both))} also in calibration: evaluation photos must differ " \
                                f"from the ones the model is calibrated on"
        yield from one_of(self.normalize, tuple(NORMALIZE), "normalize")
        if self.image_size < 32:
            yield "image_size", f"must be >= 32, got {self.image_size}"
        if not self.scales or not all(isinstance(s, (int, float)) and 0.1 <= s <= 1 for s in self.scales):
            yield "scales", f"must be fractions in [0.1, 1], got {self.scales}"
        if self.grid < 1:
            yield "grid", f"must be >= 1, got {self.grid}"
        if self.batch_size < 1:
            yield "batch_size", f"must be >= 1, got {self.batch_size}"
        if self.workers < 0:
            yield "workers", f"must be >= 0, got {self.workers}"
        if self.calibration_size < 0:
            yield "calibration_size", f"must be >= 0, got {self.calibration_size}"


def load_photo(name: str):
    """The photo as an RGB PIL image."""
    from PIL import Image

    try:
        a = PHOTOS[name][0]()
    except ImportError as e:
        raise UserError(MISSING, key="data.kind") from e
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8) if a.max() <= 1 else np.clip(a, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a)).convert("RGB")


def crop_boxes(width: int, height: int, scales, grid: int) -> list[tuple[int, int, int, int]]:
    """Square (left, top, right, bottom) boxes: for each scale, a grid x grid lattice of positions."""
    boxes = []
    for s in scales:
        side = max(1, round(s * min(width, height)))
        xs = sorted({round(v) for v in np.linspace(0, width - side, grid)})
        ys = sorted({round(v) for v in np.linspace(0, height - side, grid)})
        boxes += [(x, y, x + side, y + side) for y in ys for x in xs if (x, y, x + side, y + side) not in boxes]
    return boxes


class PhotoCrops(Dataset):
    """(crop, 0) items, round-robin over the photos: item i is photo i % n's next crop."""

    def __init__(self, names: list[str], params: PhotosParams):
        self.size = params.image_size
        mean, std = NORMALIZE[params.normalize]  # applied to 0..255 values, in numpy (cheaper than torch per item)
        self.mean, self.std = np.float32(255) * np.array(mean, np.float32), np.float32(255) * np.array(std, np.float32)
        self.photos = [load_photo(n) for n in names]
        # a photo much larger than any crop needs is first shrunk by a whole factor (box filter)
        need = params.image_size / min(params.scales)
        self.photos = [im.reduce(int(min(im.size) // need)) if min(im.size) >= 2 * need else im for im in self.photos]
        self.names = list(names)
        per_photo = []
        for i, im in enumerate(self.photos):
            crops = [(i, box, False) for box in crop_boxes(*im.size, params.scales, params.grid)]
            if params.flip:
                crops += [(i, box, True) for (_, box, _) in crops]
            per_photo.append(crops)
        self.items = [c[k] for k in range(max(map(len, per_photo))) for c in per_photo if k < len(c)]

    def __len__(self) -> int:
        return len(self.items)

    def photo_of(self, index: int) -> str:
        return self.names[self.items[index][0]]

    def __getitem__(self, index: int):
        from PIL import Image

        i, box, flip = self.items[index]
        im = self.photos[i].crop(box).resize((self.size, self.size), Image.BILINEAR)
        if flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        x = (np.asarray(im, dtype=np.float32) - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), 0


def build(params: PhotosParams, seed: int = 0) -> DataSplits:
    train, val = PhotoCrops(params.calibration, params), PhotoCrops(params.evaluation, params)
    return make_splits(train, val, params, seed, num_classes=None,
                       input_shape=(3, params.image_size, params.image_size), labelled=False)
