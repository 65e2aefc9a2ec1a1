import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=None, env=None, timeout=600):
    """Run `python -m compressor ARGS` as a user would; returns CompletedProcess."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "compressor", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli_inproc(tmp_path, monkeypatch, capsys):
    """The same CLI entry point, in this process (no interpreter start-up per call): for the
    many checks that stop at validation. Returns a function like `cli` giving (code, out, err)."""
    from compressor.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")

    def call(*args):
        code = main(list(args))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return call


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("outputs/**/report.json"))


def load_report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


@pytest.fixture(scope="session")
def default_run_home(tmp_path_factory):
    """The empty HOME the default run sees: it must stay empty."""
    return tmp_path_factory.mktemp("default_run_home")


@pytest.fixture(scope="session")
def default_run(tmp_path_factory, default_run_home):
    """The default recipe run once through the CLI in an empty folder, shared by tests. Its HOME
    (and the XDG folders under it) is empty, and so are the switches the program sets itself."""
    cwd = tmp_path_factory.mktemp("default_run")
    home = default_run_home
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_DATA_HOME": str(home / ".local/share"), "MPLCONFIGDIR": "", "ORT_DISABLE_TELEMETRY": ""}
    proc = cli("run", cwd=cwd, env=env)
    dirs = run_dirs(cwd)
    return proc, (dirs[0] if dirs else None)


WORDS = ["good", "great", "fine", "nice", "bad", "awful", "poor", "sad", "the", "movie", "was", "very", "a", "film"]


def make_tiny_bert(folder: Path, num_labels: int = 2) -> Path:
    """A small BERT-like classifier built from a config (no download), with its tokenizer,
    saved as a Hugging Face folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, num_labels=num_labels, pad_token_id=0)
    BertForSequenceClassification(config).save_pretrained(folder, safe_serialization=True)
    return folder


def make_sentiment_csv(path: Path, n: int = 160) -> Path:
    import random

    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(n):
        label = i % 2
        word = rng.choice(WORDS[:4] if label else WORDS[4:8])
        rows.append(f"the movie was very {word},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path
