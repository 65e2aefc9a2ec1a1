"""Data sources on real files: tensors (.npz), text, torchvision datasets from a local root
(a tiny MNIST in its raw idx format), hf_dataset from parquet and save_to_disk folders."""
import struct
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from compressor.data import build_data
from compressor.errors import UserError
from compressor.testing import TINY_BERT_WORDS, tiny_bert
from conftest import cli, load_report, run_dirs


def val_inputs(data) -> torch.Tensor:
    return torch.cat([x for x, _ in data.val])


def first_train_labels(data) -> torch.Tensor:
    return next(iter(data.train))[1]


# ---------------------------------------------------------------- tensors


def digits_arrays():
    """scikit-learn's digits as the package's digits source feeds them: (1797, 1, 8, 8) float64."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return ((d.images / 16.0 - 0.3) / 0.4)[:, None], d.target


def test_tensors_splits_dtypes_and_labels(tmp_path):
    x, y = digits_arrays()
    np.savez(tmp_path / "digits.npz", x=x[:100], y=y[:100])
    section = {"kind": "tensors", "path": str(tmp_path / "digits.npz"), "batch_size": 16}
    a, b, c = build_data(section, seed=0), build_data(section, seed=0), build_data(section, seed=1)
    assert (len(a.train.dataset), len(a.val.dataset)) == (80, 20)
    assert a.labelled and a.num_classes == int(y[:100].max()) + 1 and a.input_shape == (1, 8, 8)
    assert val_inputs(a).dtype == torch.float32  # float64 in the file -> the models' float32
    assert torch.equal(val_inputs(a), val_inputs(b)) and torch.equal(first_train_labels(a), first_train_labels(b))
    assert not torch.equal(val_inputs(a), val_inputs(c))
    # every sample lands in exactly one split
    got = torch.cat([val_inputs(a), torch.cat([x for x, _ in a.train])]).flatten(1)
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, torch.tensor(x[:100], dtype=torch.float32).flatten(1).tolist()))
    assert a.train.batch_size == 16 and len(a.calib.dataset) == 80

    # named arrays, a separate validation file, a given num_classes
    np.savez(tmp_path / "tr.npz", inputs=x[:60], labels=y[:60])
    np.savez(tmp_path / "va.npz", inputs=x[60:90], labels=y[60:90])
    d = build_data({"kind": "tensors", "path": str(tmp_path / "tr.npz"), "val": str(tmp_path / "va.npz"),
                    "x_key": "inputs", "y_key": "labels", "num_classes": 12})
    assert (len(d.train.dataset), len(d.val.dataset), d.num_classes) == (60, 30, 12)
    assert torch.equal(torch.cat([y for _, y in d.val]), torch.tensor(y[60:90]))


def test_tensors_token_ids_without_labels(tmp_path):
    ids = np.random.default_rng(0).integers(0, 100, size=(50, 12), dtype=np.int32)
    np.savez(tmp_path / "ids.npz", x=ids)
    d = build_data({"kind": "tensors", "path": str(tmp_path / "ids.npz"), "val_fraction": 0.3}, seed=0)
    assert not d.labelled and d.num_classes is None and d.input_shape == (12,)
    assert (len(d.train.dataset), len(d.val.dataset)) == (35, 15)
    x = val_inputs(d)
    assert x.dtype == torch.int64 and set(x.flatten().tolist()) <= set(ids.flatten().tolist())


def test_tensors_unlabelled_run_reports_fidelity(tmp_path):
    x, _ = digits_arrays()
    np.savez(tmp_path / "x.npz", x=x.astype(np.float32))  # real digits, no labels
    proc = cli("run", "data=tensors", f"data.path={tmp_path / 'x.npz'}", "pipeline=[quantize]",
               "eval.extra_metrics=[agreement,fidelity]", "eval.iters=5", "eval.warmup=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = load_report(run_dirs(tmp_path)[0])
    assert r["status"] == "ok" and "no labels" in r["metric_unavailable"]
    assert set(r["baseline"]["metric"]) == {"agreement", "fidelity"}  # top1 needs labels: left out, not invented
    assert r["baseline"]["metric"]["agreement"] == 1.0 and r["baseline"]["metric"]["fidelity"] == pytest.approx(1.0)
    assert r["engine"]["precision"] == "int8" and set(r["engine"]["metric"]) == {"agreement", "fidelity"}
    assert 0.5 < r["engine"]["metric"]["agreement"] <= 1.0 and 0.9 < r["engine"]["metric"]["fidelity"] <= 1.0
    assert "max_drop" not in r["gates"]


# ---------------------------------------------------------------- torchvision datasets


def digit_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 grey images: class c is a bright 8x8 block at its own place, with noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for img, c in zip(images, labels):
        r, k = divmod(int(c), 4)
        img[2 + 8 * r:10 + 8 * r, 1 + 7 * k:8 + 7 * k] = 230
    return images, labels.astype(np.uint8)


def write_mnist(root, name="MNIST", n_train=300, n_test=100):
    """MNIST's raw idx files, as torchvision.datasets.MNIST reads them from ROOT/MNIST/raw."""
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = digit_images(n, seed)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
    return root


def test_torchvision_mnist_from_raw_files(tmp_path):
    write_mnist(tmp_path)
    section = {"kind": "torchvision_dataset", "name": "MNIST", "root": str(tmp_path), "image_size": 8,
               "channels": 1, "batch_size": 32}
    a, b, c = (build_data(section, seed=s) for s in (0, 0, 1))
    assert (len(a.train.dataset), len(a.val.dataset)) == (300, 100)  # train files / t10k files
    assert a.num_classes == 10 and a.input_shape == (1, 8, 8) and a.labelled
    x = val_inputs(a)
    assert x.shape == (100, 1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(torch.cat([y for _, y in a.val]), torch.tensor(digit_images(100, 1)[1], dtype=torch.long))
    assert torch.equal(first_train_labels(a), first_train_labels(b))
    assert not torch.equal(first_train_labels(a), first_train_labels(c))
    rgb = build_data({**section, "channels": 3, "image_size": 12})
    x3 = val_inputs(rgb)
    assert rgb.input_shape == (3, 12, 12) and torch.equal(x3[:, 0], x3[:, 2])  # grey repeated
    normed = val_inputs(build_data({**section, "channels": 3, "image_size": 12, "mean": [0.5], "std": [0.25]}))
    assert torch.allclose(normed, (x3 - 0.5) / 0.25, atol=1e-6)

    write_mnist(tmp_path, "FashionMNIST", n_train=40, n_test=20)
    f = build_data({**section, "name": "FashionMNIST"})
    assert (len(f.train.dataset), len(f.val.dataset), f.num_classes) == (40, 20, 10)

    with pytest.raises(UserError) as e:
        build_data({**section, "val_split": "validation"})
    assert str(e.value).startswith("data.val_split: MNIST has only the train and test splits")


def write_png_classes(folder, classes=("forest", "river", "sea"), per_class=10, size=16):
    rng = np.random.default_rng(0)
    for i, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for j in range(per_class):
            img = np.clip(rng.integers(0, 50, (size, size, 3)) + np.eye(3, dtype=int)[i] * 200, 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(folder / name / f"{j}.png")


def test_torchvision_split_by_name_and_by_seed(tmp_path):
    # Country211 takes split=train/valid/test; EuroSAT has no split: divided by val_fraction
    write_png_classes(tmp_path / "country211" / "train")
    write_png_classes(tmp_path / "country211" / "valid", per_class=4)
    d = build_data({"kind": "torchvision_dataset", "name": "Country211", "root": str(tmp_path),
                    "val_split": "valid", "channels": 1})
    assert (len(d.train.dataset), len(d.val.dataset), d.num_classes, d.input_shape) == (30, 12, 3, (1, 16, 16))
    with pytest.raises(UserError) as e:
        build_data({"kind": "torchvision_dataset", "name": "Country211", "root": str(tmp_path), "val_split": "dev"})
    assert str(e.value).startswith("data.val_split: Country211: ") and "valid" in str(e.value)

    write_png_classes(tmp_path / "eurosat" / "2750")
    section = {"kind": "torchvision_dataset", "name": "EuroSAT", "root": str(tmp_path), "val_fraction": 0.3}
    a, b, c = (build_data(section, seed=s) for s in (0, 0, 1))
    assert (len(a.train.dataset), len(a.val.dataset), a.num_classes, a.input_shape) == (21, 9, 3, (3, 16, 16))
    assert a.val.dataset.indices == b.val.dataset.indices != c.val.dataset.indices


@pytest.mark.slow
def test_recipe_on_local_mnist(tmp_path):
    write_mnist(tmp_path / "mnist")
    proc = cli("run", "data=torchvision_dataset", "data.name=MNIST", f"data.root={tmp_path / 'mnist'}",
               "data.image_size=8", "data.channels=1", "data.mean=[0.3]", "data.std=[0.4]", "pipeline=[finetune]",
               "stages.finetune.epochs=1", "eval.max_drop=null", "eval.iters=5", "eval.warmup=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = load_report(run_dirs(tmp_path)[0])
    assert r["status"] == "ok" and [s["name"] for s in r["stages"]] == ["finetune"]
    assert len(r["stages"][0]["notes"]["epoch_loss"]) == 1
    for m in (r["baseline"]["metric"], r["stages"][0]["metric"], r["engine"]["metric"]):
        assert 0 <= m["top1"] <= 1 and m["top1"] * 100 == pytest.approx(round(m["top1"] * 100))  # 100 val images
    assert r["engine"]["metric"]["top1"] == pytest.approx(r["stages"][0]["metric"]["top1"], abs=0.02)
    assert not list((tmp_path / "mnist").rglob("*.gz"))  # nothing was downloaded


# ---------------------------------------------------------------- text and hf_dataset


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


def test_text_sentences(tmp_path, tokenizer_dir):
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(TINY_BERT_WORDS, size=int(rng.integers(3, 9)))) for _ in range(40)]
    (tmp_path / "s.txt").write_text("\n".join(lines[:20]) + "\n\n" + "\n".join(lines[20:]) + "\n")  # a blank line
    section = {"kind": "text", "path": str(tmp_path / "s.txt"), "tokenizer": str(tokenizer_dir), "max_length": 10}
    a, b, c = (build_data(section, seed=s) for s in (0, 0, 1))
    assert (len(a.train.dataset), len(a.val.dataset)) == (32, 8)
    assert not a.labelled and a.num_classes is None and a.input_shape == (10,)
    x = val_inputs(a)
    assert x.dtype == torch.int64 and x.shape == (8, 10) and (x[:, 0] == 2).all()  # [CLS] first
    assert torch.equal(x, val_inputs(b)) and not torch.equal(x, val_inputs(c))
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError) as e:
        build_data({**section, "path": str(tmp_path / "bad.txt")})
    assert str(e.value) == f"data.path: {tmp_path / 'bad.txt'} is binary data, not a text file"


def sentiment_rows(n):
    return [{"text": f"the movie was very {TINY_BERT_WORDS[i % 8]}", "label": int(i % 8 < 4)} for i in range(n)]


def test_hf_dataset_parquet_and_saved_folders(tmp_path, tokenizer_dir):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(sentiment_rows(50)).to_parquet(str(tmp_path / "train.parquet"))
    section = {"kind": "hf_dataset", "train": str(tmp_path / "train.parquet"), "tokenizer": str(tokenizer_dir),
               "max_length": 8}
    a, b = build_data(section, seed=0), build_data(section, seed=0)
    assert (len(a.train.dataset), len(a.val.dataset), a.num_classes, a.labelled) == (40, 10, 2, True)
    assert torch.equal(val_inputs(a), val_inputs(b)) and val_inputs(a).dtype == torch.int64

    datasets.Dataset.from_list(sentiment_rows(30)).save_to_disk(str(tmp_path / "one"))
    d = build_data({**section, "train": str(tmp_path / "one"), "val": str(tmp_path / "train.parquet")})
    assert (len(d.train.dataset), len(d.val.dataset)) == (30, 50)

    datasets.DatasetDict({"train": datasets.Dataset.from_list(sentiment_rows(24)),
                          "test": datasets.Dataset.from_list(sentiment_rows(8))}).save_to_disk(str(tmp_path / "dd"))
    d = build_data({**section, "train": str(tmp_path / "dd")})
    assert (len(d.train.dataset), len(d.val.dataset)) == (24, 8)  # the test split validates
    labels = torch.cat([y for _, y in d.val])
    assert labels.tolist() == [r["label"] for r in sentiment_rows(8)]


def test_hf_dataset_without_datasets_package(tmp_path, tokenizer_dir, cli_inproc, monkeypatch):
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    proc = cli_inproc("validate", "data=hf_dataset", f"data.train={tmp_path / 't.parquet'}",
                      f"data.tokenizer={tokenizer_dir}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: data.train: reading .parquet needs the `datasets` package (pip install 'compressor[hf]')"]


# ---------------------------------------------------------------- one-line errors at validation


def test_missing_paths_and_names_are_one_line_each(tmp_path, cli_inproc):
    (tmp_path / "x.npz").write_text("not a zip")
    np.savez(tmp_path / "ok.npz", inputs=np.zeros((4, 2)))
    cases = {
        ("data=tensors", "data.path=/no/such.npz"): "error: data.path: file not found: /no/such.npz",
        ("data=tensors", f"data.path={tmp_path / 'x.npz'}"):
            f"error: data.path: {tmp_path / 'x.npz'} is a text file, not a .npz (zip) archive",
        ("data=tensors", f"data.path={tmp_path / 'ok.npz'}"): "error: data.x_key: no array 'x' in",
        ("data=text", "data.path=/no/s.txt", f"data.tokenizer={tmp_path}"): "error: data.path: file not found: /no/s.txt",
        ("data=hf_dataset", "data.train=/no/t.parquet", f"data.tokenizer={tmp_path}"):
            "error: data.train: file or folder not found: /no/t.parquet",
        ("data=torchvision_dataset", "data.name=MNIST", "data.root=/no/mnist"):
            "error: data.root: folder not found: /no/mnist (the MNIST files must be there; nothing is downloaded)",
        ("data=torchvision_dataset", "data.name=MNSIT", f"data.root={tmp_path}"):
            "error: data.name: torchvision.datasets has no classification dataset 'MNSIT' (did you mean 'MNIST'?)",
    }
    for args, line in cases.items():
        proc = cli_inproc("validate", *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(line), (args, lines)


def test_torchvision_root_without_files(tmp_path):
    # the root exists and is not empty (validation passes) but holds no CIFAR10 files: one line when
    # the data is built
    (tmp_path / "README").write_text("not a dataset")
    with pytest.raises(UserError) as e:
        build_data({"kind": "torchvision_dataset", "name": "CIFAR10", "root": str(tmp_path)})
    assert str(e.value) == (f"data.root: torchvision's CIFAR10 found no readable files under {tmp_path} "
                            f"(RuntimeError); nothing is downloaded: put the dataset there first")
    assert [p.name for p in tmp_path.iterdir()] == ["README"]  # and nothing was written there
