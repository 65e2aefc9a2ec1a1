"""The tiny BERT shipped with the package, so the BERT recipe runs with no download.

`compressor/models/tiny_bert/` holds a BERT-like sentence classifier (2 layers, 4 heads, hidden
size 64) made from a `BertConfig`, its word-level tokenizer (built here from the toy
vocabulary, no download), and the toy sentiment file it was trained on (`sentiment.csv`,
generated here: short movie reviews, label 1 positive, 0 negative). Recipes name
the folder `packaged:tiny_bert` (model.path, data.tokenizer) and the file
`packaged:tiny_bert/sentiment.csv` (data.train).

Reproduce it (deterministic on CPU, a few seconds):
    python -m compressor.models.tiny_bert
The validation accuracy it reached (on the split the recipes use: 20% of the rows, seed 0) is
in `tiny_bert/training.json`.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from compressor.core.packaged import finish_folder, start_folder

FOLDER = Path(__file__).with_name("tiny_bert")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = ["good", "great", "fine", "nice", "wonderful", "excellent", "fun", "lovely"]
NEGATIVE = ["bad", "awful", "poor", "sad", "boring", "terrible", "dull", "weak"]
NOUNS = ["movie", "film", "story", "plot", "acting", "music", "ending", "cast"]
INTENSIFIERS = ["very", "really", "quite", "so", "truly"]
FILLERS = ["the", "a", "was", "is", "and", "what", "i", "found", "it"]
TEMPLATES = [
    "the {n} was {i} {a}",
    "a {a} {n}",
    "what a {a} {n}",
    "i found the {n} {i} {a}",
    "the {n} is {a} and the {m} is {i} {b}",
    "it was a {i} {a} {n}",
]
ROWS = 800
MAX_LENGTH = 16  # tokens, [CLS] and [SEP] included: every generated sentence fits


def vocabulary() -> list[str]:
    return SPECIALS + sorted(set(POSITIVE + NEGATIVE + NOUNS + INTENSIFIERS + FILLERS))


def sentiment_rows(n: int = ROWS, seed: int = 0) -> list[tuple[str, int]]:
    """Balanced toy reviews: (text, label)."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        label = k % 2
        text = rng.choice(TEMPLATES)
        a, b = rng.sample(POSITIVE if label else NEGATIVE, 2)
        n1, n2 = rng.sample(NOUNS, 2)
        rows.append((text.format(n=n1, m=n2, a=a, b=b, i=rng.choice(INTENSIFIERS)), label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    return path


def make(folder: Path = FOLDER, epochs: int = 5, seed: int = 0) -> dict:
    """Write tokenizer, sentiment.csv, the trained model and training.json into `folder`."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from compressor.data.text import HFDatasetParams, build as build_text
    from compressor.models.huggingface import HFClassifier
    from compressor.training.loop import accuracy, fit

    start_folder(folder)
    vocab = vocabulary()
    BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    csv = write_csv(folder / "sentiment.csv", sentiment_rows(seed=seed))
    data = build_text(HFDatasetParams(train=str(csv), tokenizer=str(folder), max_length=MAX_LENGTH), seed=seed)

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=32, num_labels=2, pad_token_id=0)
    config._attn_implementation = "eager"
    bert = BertForSequenceClassification(config)
    model = HFClassifier(bert)
    fit(model, data.train, epochs=epochs, lr=3e-3, optimizer="adamw", weight_decay=1e-2, schedule="cosine",
        seed=seed)
    acc = accuracy(model.eval(), data.val)
    bert.save_pretrained(folder)
    info = {"val_accuracy": round(acc, 4), "epochs": epochs, "rows": ROWS, "max_length": MAX_LENGTH,
            "val_fraction": 0.2, "seed": seed, "command": "python -m compressor.models.tiny_bert"}
    (folder / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    info["files"] = finish_folder(folder)
    return info


if __name__ == "__main__":
    import torch

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    info = make()
    print(f"validation accuracy {info['val_accuracy']:.4f}; {info['files']}")
