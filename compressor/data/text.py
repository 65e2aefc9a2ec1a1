"""Text classification data from local files (csv, json lines or a json list), tokenized with
the tokenizer saved in a local folder. Inputs are padded token ids of a fixed length."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from compressor.interfaces import DataSplits


@dataclass
class HFDatasetParams:
    train: str = "???"  # a .csv, .jsonl or .json file
    val: Optional[str] = None  # default: split `train` by val_fraction
    tokenizer: str = "???"  # a folder with a saved tokenizer (often the model's folder)
    text_column: str = "text"
    label_column: str = "label"
    max_length: int = 64
    batch_size: int = 16
    val_fraction: float = 0.2
    calibration_size: int = 128

    def check(self):
        for key in ("train", "val"):
            path = getattr(self, key)
            if path is not None and not Path(path).is_file():
                yield key, f"file not found: {path}"
            elif path is not None and Path(path).suffix not in (".csv", ".jsonl", ".json"):
                yield key, f"must be .csv, .jsonl or .json, got {path}"
        if not Path(self.tokenizer).is_dir():
            yield "tokenizer", f"folder not found: {self.tokenizer}"
        if self.max_length < 2:
            yield "max_length", f"must be >= 2, got {self.max_length}"


def read_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def _encode(rows: list[dict], p: HFDatasetParams, tokenizer, labels: list) -> TensorDataset:
    from compressor.errors import UserError

    missing = {p.text_column, p.label_column} - set(rows[0]) if rows else set()
    if missing:
        raise UserError(f"column(s) {sorted(missing)} not in the file; it has {sorted(rows[0])}", key="data.text_column")
    enc = tokenizer([str(r[p.text_column]) for r in rows], padding="max_length", truncation=True,
                    max_length=p.max_length, return_tensors="pt")
    y = torch.tensor([labels.index(str(r[p.label_column])) for r in rows], dtype=torch.long)
    return TensorDataset(enc["input_ids"], y)


def build(params: HFDatasetParams, seed: int = 0) -> DataSplits:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(params.tokenizer, local_files_only=True)
    train_rows = read_rows(params.train)
    val_rows = read_rows(params.val) if params.val else None
    labels = sorted({str(r[params.label_column]) for r in train_rows + (val_rows or [])}, key=_numeric_first)
    train = _encode(train_rows, params, tokenizer, labels)
    if val_rows is None:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
        n_val = max(1, int(len(train) * params.val_fraction))
        train, val = Subset(train, order[n_val:]), Subset(train, order[:n_val])
    else:
        val = _encode(val_rows, params, tokenizer, labels)
    calib = Subset(train, list(range(min(params.calibration_size, len(train)))))
    g = torch.Generator().manual_seed(seed)
    bs = params.batch_size
    return DataSplits(train=DataLoader(train, batch_size=bs, shuffle=True, generator=g),
                      val=DataLoader(val, batch_size=bs), calib=DataLoader(calib, batch_size=bs),
                      num_classes=len(labels), input_shape=(params.max_length,))


def _numeric_first(label: str):
    return (0, float(label), "") if label.replace(".", "", 1).lstrip("-").isdigit() else (1, 0.0, label)
