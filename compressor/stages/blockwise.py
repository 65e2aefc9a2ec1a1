"""Layer-by-layer calibration of a causal LM, shared by GPTQ, AWQ, SmoothQuant, SparseGPT and Wanda.

The calibration windows run through the embedding once; then one decoder block at a time: its
Linear layers' inputs are observed (hooks feed per-layer statistics such as X^T X, never the whole
activations), the algorithm changes the block, and the block's outputs (from the changed weights,
so later blocks see the errors earlier ones made) become the next block's inputs. Peak memory is
the model plus one block's inputs and outputs: (samples x tokens x hidden) floats twice, 2 x 33 MB
for 31 windows of 512 tokens on SmolLM2, 2 x 0.5 GB for 128 x 2048 on an 8B model. A model too big
for memory streams its blocks from the safetensors file the same way (docs/DESIGN.md, "Large
models")."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from compressor.errors import UserError
from compressor.models.causal_lm import CausalLM, decoder_layers  # noqa: F401 (decoder_layers: for the stages)

# The Linear layers of a Llama block, in the order they see data, with what feeds them: an RMSNorm
# (whose weight can absorb a per-input-channel scale), or another Linear.
ATTN_IN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MLP_IN = ("mlp.gate_proj", "mlp.up_proj")
LINEARS = ATTN_IN + ("self_attn.o_proj",) + MLP_IN + ("mlp.down_proj",)
# (what feeds the layers, the layers it feeds): AWQ and SmoothQuant scale these input channels
SCALABLE = (("input_layernorm", ATTN_IN), ("self_attn.v_proj", ("self_attn.o_proj",)),
            ("post_attention_layernorm", MLP_IN), ("mlp.up_proj", ("mlp.down_proj",)))


def require_lm(model: nn.Module, stage: str) -> CausalLM:
    if not isinstance(model, CausalLM):
        raise UserError(f"{stage} works on causal language models (model.task: causal_lm)")
    return model


def calibration_ids(ctx, limit: int | None = None) -> torch.Tensor:
    """The calibration split's token windows, (samples, tokens) int64."""
    ids = [x for x, _ in ctx.data.calib]
    if not ids:
        raise UserError("the calibration split is empty", key="data.calibration_size")
    ids = torch.cat(ids)
    return ids[:limit] if limit else ids


def _block_inputs(model: CausalLM, ids: torch.Tensor, batch: int) -> tuple[list[torch.Tensor], list[dict]]:
    """The first block's input for every batch of windows, and the keyword arguments (rotary
    embeddings, causal mask: they follow the batch's shape) the model passes every block with it."""
    first = decoder_layers(model)[0]
    inputs, kwargs = [], []

    class Stop(Exception):
        pass

    def grab(_module, args, kw):
        inputs.append(args[0] if args else kw["hidden_states"])
        kwargs.append({k: v for k, v in kw.items() if k not in ("hidden_states", "past_key_values")} | {"use_cache": False})
        raise Stop

    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            for i in range(0, len(ids), batch):
                try:
                    model(ids[i: i + batch])
                except Stop:
                    pass
    finally:
        handle.remove()
    return inputs, kwargs


def run_block(block: nn.Module, inputs: list[torch.Tensor], kwargs: list[dict]) -> list[torch.Tensor]:
    with torch.no_grad():
        outs = [block(h, **kw) for h, kw in zip(inputs, kwargs)]
    return [o[0] if isinstance(o, tuple) else o for o in outs]


@contextmanager
def observe(block: nn.Module, names: tuple[str, ...], fn: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Call fn(name, x) with the 2-D input (tokens, features) of each named Linear while the block runs."""
    handles = [block.get_submodule(n).register_forward_hook(
        lambda _m, args, _out, n=n: fn(n, args[0].detach().reshape(-1, args[0].shape[-1]).float()))
        for n in names]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def each_block(model: CausalLM, ids: torch.Tensor, progress=None, description: str = "", batch: int = 4
               ) -> Iterator[tuple[int, nn.Module, list[torch.Tensor], list[dict]]]:
    """Yield (index, block, its inputs, kwargs) one block at a time; after the caller has changed the
    block, its outputs on those inputs become the next block's inputs."""
    blocks = decoder_layers(model)
    inputs, kwargs = _block_inputs(model, ids, batch)
    task = progress.add_task(description, total=len(blocks)) if progress is not None else None
    try:
        for i, block in enumerate(blocks):
            yield i, block, inputs, kwargs
            inputs = run_block(block, inputs, kwargs)
            if task is not None:
                progress.advance(task)
    finally:
        if task is not None:
            progress.remove_task(task)


class Hessian:
    """Running X^T X / n of a Linear's inputs (GPTQ, SparseGPT) and per-channel |x| statistics
    (AWQ: mean, SmoothQuant: max, Wanda: L2 norm)."""

    def __init__(self):
        self.xtx = None
        self.n = 0
        self.abs_sum = self.abs_max = self.sq_sum = None

    def add(self, x: torch.Tensor) -> None:
        x = x.float()  # float32 sums, as the reference GPTQ: float64 would triple the calibration time on CPU
        if self.xtx is None:
            k = x.shape[1]
            self.xtx = torch.zeros(k, k)
            self.abs_sum, self.abs_max, self.sq_sum = (torch.zeros(k) for _ in range(3))
        self.xtx += x.T @ x
        self.abs_sum += x.abs().sum(0)
        self.abs_max = torch.maximum(self.abs_max, x.abs().amax(0))
        self.sq_sum += (x * x).sum(0)
        self.n += len(x)

    @property
    def matrix(self) -> torch.Tensor:
        return self.xtx / max(self.n, 1)

    @property
    def abs_mean(self) -> torch.Tensor:
        return self.abs_sum / max(self.n, 1)


def statistics(block: nn.Module, inputs: list[torch.Tensor], kwargs: list[dict], names: tuple[str, ...] = LINEARS
               ) -> dict[str, Hessian]:
    """Run the block on its inputs once and gather each named Linear's input statistics."""
    stats = {n: Hessian() for n in names}
    with observe(block, names, lambda n, x: stats[n].add(x)):
        run_block(block, inputs, kwargs)
    return stats


def linear_of(block: nn.Module, name: str) -> nn.Linear:
    m = block.get_submodule(name)
    return getattr(m, "inner", m)
