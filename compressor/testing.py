"""Builders for tests of compressor and of its plugins: a stage's Context, params as a recipe would
give them, the packaged digits data and CNN, data splits made of tensors, and a tiny BERT folder.
Everything here is real (real data, real models, the real parser); nothing is mocked.

    from compressor.testing import context, digits, digits_cnn, params
    stage = MyStage()
    stage.params = params(MyStageParams, ratio=0.5)
    model = stage.apply(digits_cnn(), context(digits(), digits_cnn()))
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compressor.core.interfaces import Context, DataSplits
from compressor.core.params import parse_params
from compressor.errors import UserError


def context(data: DataSplits | None, teacher: nn.Module | None = None,
            evaluate: Callable[[nn.Module], dict[str, float]] | str | None = None, device: str = "cpu",
            **fields: Any) -> Context:
    """The Context a stage gets from the runner: `teacher` is the model before the pipeline;
    `evaluate` a function, or a metric name ("top1") measured on `data.val`, or None (no metric)."""
    if isinstance(evaluate, str):
        from compressor.measure.stats import evaluate as measure, predict_torch

        metric = evaluate
        evaluate = lambda m: measure(predict_torch(m, torch.device(device)), data.val, [metric])  # noqa: E731
    return Context(data=data, device=torch.device(device), teacher=teacher, evaluate=evaluate or (lambda m: {}),
                   log=logging.getLogger("compressor.test"), progress=None, **fields)


def params(cls: type, **keys: Any) -> Any:
    """`cls` built from recipe keys, checked as a recipe's would be (raises UserError)."""
    obj, problems = parse_params(cls, keys, "params")
    if problems:
        raise UserError(problems)
    return obj


def stage(cls: type, params: Any) -> Any:
    """A stage (or target) object with its params set, as the plan builds it."""
    obj = cls()
    obj.params = params
    return obj


def digits(**keys: Any) -> DataSplits:
    """The packaged 8x8 digits (scikit-learn), split as the `digits` dataset does."""
    from compressor.data.digits import DigitsParams, build

    return build(params(DigitsParams, **keys))


def digits_cnn(load_weights: bool = True, **keys: Any) -> nn.Module:
    """The packaged digits CNN, trained (its shipped weights) or freshly initialised."""
    from compressor.models.digits_cnn import DigitsCNNParams, build

    return build(params(DigitsCNNParams, **keys), load_weights=load_weights).eval()


def tensor_data(x: torch.Tensor, y: torch.Tensor | None = None, num_classes: int | None = 10, batch_size: int = 16,
                labelled: bool = True) -> DataSplits:
    """`x` with labels `y` (zeros when None) as the train, validation and calibration split alike:
    data for a stage that needs inputs of the right shape, not a dataset."""
    y = torch.zeros(len(x), dtype=torch.long) if y is None else y
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    return DataSplits(train=loader, val=loader, calib=loader, num_classes=num_classes, input_shape=tuple(x.shape[1:]),
                      labelled=labelled)


TINY_BERT_WORDS = ["good", "great", "fine", "nice", "bad", "awful", "poor", "sad", "the", "movie", "was", "very", "a", "film"]


def tiny_bert(folder: Path, num_labels: int = 2) -> Path:
    """A small BERT-like classifier built from a config (no download), with its tokenizer, saved
    as a Hugging Face folder."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + TINY_BERT_WORDS
    BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokens), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, num_labels=num_labels, pad_token_id=0)
    BertForSequenceClassification(config).save_pretrained(folder, safe_serialization=True)
    return folder


def sentiment_csv(path: Path, n: int = 160) -> Path:
    """A labelled CSV (text,label) of short sentences from the tiny BERT's words: "good" words
    label 1, "bad" words label 0; deterministic."""
    import random

    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(n):
        label = i % 2
        word = rng.choice(TINY_BERT_WORDS[:4] if label else TINY_BERT_WORDS[4:8])
        rows.append(f"the movie was very {word},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path
