"""A Llama-family causal language model as one ONNX graph with a KV cache, written op by op from
the weights, and the ONNX Runtime session that decodes with it (`LlmSession`).

Why not torch.onnx: tracing a Hugging Face decoder yields dozens of small ops per layer (rotary
slicing, repeat_kv, mask arithmetic, softmax) that ONNX Runtime does not fuse back, and a batch-1
decode step is nothing but such small calls. The graph here is the one onnxruntime-genai's model
builder emits, made of ONNX Runtime's fused contrib kernels:

    input_ids -> Gather, or GatherBlockQuantized when lm_head is WeightOnly and tied (the embedding
                 reads lm_head's own packed integers: one copy of the table, quantized)
    per layer:  SimplifiedLayerNormalization (layer 0) / SkipSimplifiedLayerNormalization (the
                residual Add fused into the next norm)
                q | k | v as one MatMulNBits (WeightOnly INT4/INT8) or MatMul (float) when the three
                share a grid, else three
                GroupQueryAttention (com.microsoft): rotary embedding from precomputed cos/sin
                caches, causal attention over past + new keys, present = past + new (BNSH)
                o_proj, SkipSimplifiedLayerNormalization, gate | up (packed, Split),
                SiLU(gate) * up, down
    final SkipSimplifiedLayerNormalization, lm_head -> logits

Inputs: input_ids int64 [batch, seq], attention_mask int64 [batch, total_seq] (all ones: this
engine does no padding), past_key_values.{i}.key/.value float32 [batch, kv_heads, past_seq,
head_dim] (past_seq 0 for a prompt). Outputs: logits float32 [batch, seq, vocab],
present.{i}.key/.value [batch, kv_heads, total_seq, head_dim]. GroupQueryAttention reads
seqlens_k = total_len - 1 per row (int32) and total_sequence_length (an int32 scalar), both
computed in the graph from attention_mask.

`portable=True` swaps GroupQueryAttention for ONNX's own RotaryEmbedding + Attention (opset 23):
the graph OpenVINO's IR can hold (compressor/targets/llm_openvino.py).

Beside model.onnx: llm.json (the shapes and token ids a decoder needs) and the tokenizer files.
"""
from __future__ import annotations

import collections
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compressor.core import quiet
from compressor.errors import UserError
from compressor.models.causal_lm import CausalLM
from compressor.modules.quant import WeightOnly
from compressor.targets.onnx.weight_only import _pack

OPSET = 17
PORTABLE_OPSET = 23  # ONNX's RotaryEmbedding and Attention
MAX_CONTEXT = 4096  # rotary caches beyond this would only grow the file (4096 x 64 floats x 2 per model)
ROPE_TYPES = ("default", "linear", "llama3")  # frequencies fixed per position: a precomputed cache is exact
BLOCK_SIZES = (256, 128, 64, 32, 16)  # what MatMulNBits and GatherBlockQuantized accept
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")
MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit: larger models keep their weights in model.onnx.data


# --- export -----------------------------------------------------------------------------------

def export_llm(model: CausalLM, out: Path, accuracy_level: int = 0, portable: bool = False) -> Path:
    """Writes out/model.onnx, out/llm.json and the tokenizer; returns the model.onnx path.
    `accuracy_level`: MatMulNBits' attribute (0: float activations; 4: activations quantized to
    int8 per block inside the kernel, faster on CPUs with integer dot products).
    `portable`: attention as ONNX's own RotaryEmbedding + Attention (opset 23) instead of
    GroupQueryAttention, for OpenVINO (see compressor/targets/llm_openvino.py)."""
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise UserError(f"accuracy_level must be 0..4, got {accuracy_level}", key="target.accuracy_level")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    builder = _GraphBuilder(model, accuracy_level, portable)
    proto = builder.build()
    path = out / "model.onnx"
    if proto.ByteSize() > MAX_PROTO_BYTES:
        onnx.save(proto, str(path), save_as_external_data=True, location="model.onnx.data")
    else:
        onnx.save(proto, str(path))
    meta = _metadata(model, builder)
    (out / "llm.json").write_text(json.dumps(meta, indent=2) + "\n")
    copy_tokenizer(model.tokenizer_dir, out)
    return path


def copy_tokenizer(tokenizer_dir: str | None, out: Path) -> None:
    """The tokenizer (and chat template) beside the engine, so the folder is self-contained."""
    if not tokenizer_dir:
        return
    for name in TOKENIZER_FILES:
        src = Path(tokenizer_dir) / name
        if src.is_file():
            shutil.copyfile(src, Path(out) / name)


def _metadata(model: CausalLM, builder: "_GraphBuilder") -> dict:
    cfg = model.config
    return {"num_layers": builder.num_layers, "num_heads": builder.num_heads, "kv_heads": builder.kv_heads,
            "head_dim": builder.head_dim, "hidden_size": builder.hidden, "vocab_size": builder.vocab,
            "context_length": builder.context, "bos_token_id": cfg.bos_token_id, "eos_token_ids": eos_ids(model),
            "precision": builder.precision(), "accuracy_level": builder.accuracy_level,
            "activation_block": builder.act_block}


def eos_ids(model: CausalLM) -> list[int]:
    """End-of-sequence ids of the config and the generation config together (chat models often list
    the end-of-turn token only in the latter)."""
    ids: list[int] = []
    for source in (model.config, getattr(model.model, "generation_config", None)):
        value = getattr(source, "eos_token_id", None)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    return ids


def block_size(group_size: int) -> int:
    """The MatMulNBits block for a WeightOnly group: the group itself when it is a valid block,
    else the largest valid block dividing it (a per-channel group of 576 runs as 9 blocks of 64
    sharing one scale: the same math)."""
    if group_size >= 16 and group_size & (group_size - 1) == 0:
        return group_size
    for b in BLOCK_SIZES:
        if group_size % b == 0:
            return b
    raise UserError(f"weight-only group size {group_size} is not a multiple of 16: MatMulNBits cannot run it",
                    key="stages.quantize.group_size")


def blocks(m: WeightOnly) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(integers (N, k_blocks, block) uint8, scales (N, k_blocks) float32, zero points (N, k_blocks)
    uint8, block) of a WeightOnly layer, re-blocked by `block_size` (scale and zero point repeated)."""
    q = m.integers().numpy()  # (N, groups, group_size), zero-padded past in_features
    scale, zp = m.scale.float().numpy(), m.zero_point.numpy()
    block = block_size(m.group_size)
    if block != m.group_size:
        repeat, k_blocks = m.group_size // block, -(-m.inner.in_features // block)
        q = q.reshape(q.shape[0], -1, block)[:, :k_blocks]
        scale = np.repeat(scale, repeat, axis=1)[:, :k_blocks]
        zp = np.repeat(zp, repeat, axis=1)[:, :k_blocks]
    return q, np.ascontiguousarray(scale, np.float32), np.ascontiguousarray(zp), block


def packable(modules: list[nn.Module]) -> bool:
    """Linears that one MatMul can compute: all float, or all WeightOnly on the same grid."""
    if all(type(m) is nn.Linear for m in modules):
        return True
    if not all(isinstance(m, WeightOnly) for m in modules):
        return False
    return len({(m.bits, block_size(m.group_size), m.symmetric) for m in modules}) == 1


def _out_features(m: nn.Module) -> int:
    return (m.inner if isinstance(m, WeightOnly) else m).out_features


def _bias(m: nn.Module) -> np.ndarray | None:
    b = (m.inner if isinstance(m, WeightOnly) else m).bias
    return None if b is None else b.detach().float().numpy()


class _GraphBuilder:
    """Collects nodes and initializers; one method per part of the decoder."""

    def __init__(self, model: CausalLM, accuracy_level: int, portable: bool):
        cfg = model.config
        if getattr(cfg, "model_type", None) != "llama":
            raise UserError(f"the LLM engine builds Llama models only, not {getattr(cfg, 'model_type', None)}",
                            key="model")
        if cfg.hidden_act != "silu":
            raise UserError(f"the LLM engine needs a SiLU MLP, not {cfg.hidden_act}", key="model")
        self.model, self.lm = model, model.model
        self.accuracy_level, self.portable = accuracy_level, portable
        self.num_layers = cfg.num_hidden_layers
        self.num_heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hidden, self.vocab = cfg.hidden_size, cfg.vocab_size
        self.head_dim = getattr(cfg, "head_dim", None) or self.hidden // self.num_heads
        self.eps = float(cfg.rms_norm_eps)
        self.context = min(int(cfg.max_position_embeddings), MAX_CONTEXT)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.bits: set[int] = set()
        self.act_block = 0  # > 0: some layers round their activations to int8 (W8A8), the finest block
        self.names: set[str] = set()

    def precision(self) -> str:
        if not self.bits:
            return "fp32"
        if self.act_block and self.bits == {8}:
            return "int8_w8a8"
        return "_".join(f"int{b}" for b in sorted(self.bits)) + "_weight_only"

    # small helpers

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, outputs: int | list[str] = 1, domain: str = "",
             **attrs) -> list[str]:
        if name in self.names:
            raise ValueError(f"duplicate node name {name}")
        self.names.add(name)
        outs = [f"{name}/out{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs

    def one(self, *args, **kwargs) -> str:
        return self.node(*args, **kwargs)[0]

    # the parts

    def linear(self, x: str, module: nn.Module, name: str) -> str:
        return self.packed_linear(x, [module], name)

    def packed_linear(self, x: str, modules: list[nn.Module], name: str) -> str:
        """One MatMul or MatMulNBits computing Linears that read the same input, their outputs
        concatenated (q | k | v): a batch-1 decode step is made of such small kernel calls, and one
        call per layer costs less than three. `packable` says which lists can be packed."""
        n_out = sum(_out_features(m) for m in modules)
        biases = [_bias(m) for m in modules]
        bias = None if all(b is None for b in biases) else np.concatenate(
            [b if b is not None else np.zeros(_out_features(m), np.float32) for b, m in zip(biases, modules)])
        if not isinstance(modules[0], WeightOnly):
            w = np.concatenate([m.weight.detach().float().numpy() for m in modules])  # (N, K)
            y = self.one("MatMul", [x, self.init(f"{name}.weight_t", w.T)], name)
            return y if bias is None else self.one("Add", [y, self.init(f"{name}.bias", bias)], f"{name}/bias")
        first = modules[0]
        parts = [blocks(m) for m in modules]
        q, scales, zero_points = (np.concatenate([part[i] for part in parts]) for i in range(3))
        self.bits.add(first.bits)
        if getattr(first, "act_block", 0):  # the finest: OpenVINO takes one dynamic-quantization group size
            self.act_block = min(self.act_block or first.act_block, first.act_block)
        inputs = [x, self.init(f"{name}.qweight", _pack(q, first.bits)), self.init(f"{name}.scales", scales)]
        if not first.symmetric:  # symmetric: the kernel's default zero point 2^(bits-1) is ours
            inputs.append(self.init(f"{name}.zero_points", _pack(zero_points, first.bits)))
        if bias is not None:
            inputs += [""] * (5 - len(inputs)) + [self.init(f"{name}.bias", bias)]
        return self.one("MatMulNBits", inputs, name, domain="com.microsoft", K=first.inner.in_features, N=n_out,
                        bits=first.bits, block_size=parts[0][3],
                        # W8A8 layers (act_block): int8 activations per block, what the PyTorch model computed
                        accuracy_level=4 if getattr(first, "act_block", 0) else self.accuracy_level)

    def projections(self, x: str, named: dict[str, nn.Module], prefix: str) -> list[str]:
        """The outputs of Linears reading x: packed and split when `packable`, else one by one."""
        modules = list(named.values())
        if not packable(modules):
            return [self.linear(x, m, f"{prefix}.{n}") for n, m in named.items()]
        name = f"{prefix}.{'_'.join(n.removesuffix('_proj') for n in named)}_proj"
        y = self.packed_linear(x, modules, name)
        sizes = self.init(f"{name}.sizes", np.array([_out_features(m) for m in modules], np.int64))
        return self.node("Split", [y, sizes], f"{name}/split", len(modules), axis=-1)

    def norm(self, x: str, weight: torch.Tensor, name: str) -> str:
        # ONNX Runtime registers SimplifiedLayerNormalization in the default domain (its
        # SkipSimplifiedLayerNormalization in com.microsoft); stash_type 1: computed in float32
        gamma = self.init(f"{name}.weight", weight.detach().float().numpy())
        return self.one("SimplifiedLayerNormalization", [x, gamma], name, axis=-1, epsilon=self.eps,
                        stash_type=1)

    def skip_norm(self, x: str, residual: str, weight: torch.Tensor, name: str) -> tuple[str, str]:
        """(norm(x + residual), x + residual): the residual Add fused into the norm."""
        gamma = self.init(f"{name}.weight", weight.detach().float().numpy())
        outs = [f"{name}/out0", "", "", f"{name}/sum"]
        y, _, _, total = self.node("SkipSimplifiedLayerNormalization", [x, residual, gamma], name, outs,
                                   domain="com.microsoft", epsilon=self.eps)
        return y, total

    def embedding(self, ids: str) -> str:
        head, table = self.lm.lm_head, self.lm.model.embed_tokens.weight
        if isinstance(head, WeightOnly) and torch.equal(head.inner.weight, table):
            return self.quantized_embedding(ids, head)
        return self.one("Gather", [self.init("embed_tokens.weight", table.detach().float().numpy()), ids],
                        "embed_tokens")

    def quantized_embedding(self, ids: str, head: WeightOnly) -> str:
        """Tied and quantized: the embedding reads lm_head's own packed integers, the same
        (vocab, k_blocks, blob) initializer, as GatherBlockQuantized rows of k_blocks blocks
        (quantize_axis 2); only the small scales and zero points get a (vocab, k_blocks, 1) copy.
        Both runtimes want `data` to be the initializer itself, not a Reshape of it."""
        _, scales, zero_points, block = blocks(head)
        k_blocks = scales.shape[1]
        scales = self.init("embed_tokens.scales", scales[..., None])
        zp = self.init("embed_tokens.zero_points", _pack(zero_points[..., None], head.bits))
        # "lm_head.qweight": the initializer `lm_head` writes for the same module (packed_linear)
        rows = self.one("GatherBlockQuantized", ["lm_head.qweight", ids, scales, zp], "embed_tokens/blocks",
                        domain="com.microsoft", bits=head.bits, block_size=block, gather_axis=0, quantize_axis=2)
        shape = self.init("embed_tokens.shape", np.array([0, 0, k_blocks * block], np.int64))
        flat = self.one("Reshape", [rows, shape], "embed_tokens/rows")
        if k_blocks * block == self.hidden:
            return flat
        return self.one("Slice", [flat, self.init("embed_tokens.start", np.array([0], np.int64)),  # zero padding
                                  self.init("embed_tokens.end", np.array([self.hidden], np.int64)),
                                  self.init("embed_tokens.axis", np.array([2], np.int64))], "embed_tokens")

    def lm_head(self, x: str) -> str:
        head, table = self.lm.lm_head, self.lm.model.embed_tokens.weight
        if isinstance(head, WeightOnly) or head.weight is not table:
            return self.linear(x, head, "lm_head")
        # tied float: one (vocab, hidden) table for both, lm_head as Gemm(transB) on 2-D rows
        flat = self.one("Reshape", [x, self.init("lm_head.rows", np.array([-1, self.hidden], np.int64))],
                        "lm_head/flat")
        y = self.one("Gemm", [flat, "embed_tokens.weight"], "lm_head", transB=1)
        shape = self.one("Shape", [x], "lm_head/in_shape", end=2)
        full = self.one("Concat", [shape, self.init("lm_head.vocab", np.array([self.vocab], np.int64))],
                        "lm_head/out_shape", axis=0)
        return self.one("Reshape", [y, full], "lm_head/unflat")

    def rotary_caches(self) -> tuple[str, str]:
        """cos/sin (context, head_dim / 2) computed as transformers' LlamaRotaryEmbedding does (its
        own inverse frequencies, float32 products), so positions agree to the last bit."""
        rope = self.lm.model.rotary_emb
        kind = self.model.config.rope_parameters.get("rope_type", "default") if getattr(
            self.model.config, "rope_parameters", None) else "default"
        if kind not in ROPE_TYPES or float(rope.attention_scaling) != 1.0:
            raise UserError(f"rope type {kind} is not supported by the LLM engine (supported: "
                            f"{', '.join(ROPE_TYPES)})", key="model")
        freqs = torch.arange(self.context, dtype=torch.float32)[:, None] * rope.inv_freq.float()[None, :]
        return (self.init("cos_cache", freqs.cos().numpy()), self.init("sin_cache", freqs.sin().numpy()))

    def attention_inputs(self) -> dict[str, str]:
        """What every layer's attention reads besides q, k, v, computed once from the mask.
        GroupQueryAttention: seqlens_k (tokens per row - 1, int32) and total_sequence_length (int32
        scalar). Portable: position ids (batch, seq) of the new tokens and a boolean causal mask
        (seq, total) aligned bottom-right (new token i sees keys up to past + i)."""
        cos, sin = self.rotary_caches()
        shape = self.one("Shape", ["attention_mask"], "total/shape")
        total = self.one("Gather", [shape, self.init("one", np.array(1, np.int64))], "total/len", axis=0)
        if not self.portable:
            ones = self.one("ReduceSum", ["attention_mask", self.init("axis1", np.array([1], np.int64))],
                            "seqlens/sum", keepdims=0)
            seqlens = self.one("Cast", [self.one("Sub", [ones, "one"], "seqlens/minus1")], "seqlens_k",
                               to=TensorProto.INT32)
            return {"seqlens": seqlens, "total": self.one("Cast", [total], "total_sequence_length",
                                                          to=TensorProto.INT32), "cos": cos, "sin": sin}
        ids_shape = self.one("Shape", ["input_ids"], "positions/ids_shape")
        new = self.one("Gather", [ids_shape, "one"], "positions/new", axis=0)
        past = self.one("Sub", [total, new], "positions/past")
        zero = self.init("zero", np.array(0, np.int64))
        positions = self.one("Range", [past, total, "one"], "positions/range")  # (seq,)
        position_ids = self.one("Expand", [positions, ids_shape], "position_ids")  # (batch, seq)
        keys = self.one("Range", [zero, total, "one"], "mask/keys")  # (total,)
        last = self.one("Unsqueeze", [positions, self.init("mask/axis", np.array([1], np.int64))],
                        "mask/last_key")  # (seq, 1)
        mask = self.one("LessOrEqual", [keys, last], "causal_mask")  # (seq, total)
        return {"position_ids": position_ids, "mask": mask, "cos": cos, "sin": sin}

    def attention(self, i: int, x: str, inputs: dict[str, str]) -> str:
        attn, p = self.lm.model.layers[i].self_attn, f"layers.{i}.attn"
        past = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        outs = [f"{p}/out", f"present.{i}.key", f"present.{i}.value"]
        named = {"q_proj": attn.q_proj, "k_proj": attn.k_proj, "v_proj": attn.v_proj}
        if self.portable:
            q, k, v = self.projections(x, named, p)
            y = self.portable_attention(p, q, k, v, past, outs, inputs, float(attn.scaling))
        else:  # GroupQueryAttention reads q | k | v packed in its first input
            packed = packable(list(named.values()))
            qkv = [self.packed_linear(x, list(named.values()), f"{p}.qkv_proj"), "", ""] if packed else \
                self.projections(x, named, p)
            y = self.node("GroupQueryAttention", [*qkv, *past, inputs["seqlens"], inputs["total"], inputs["cos"],
                                                  inputs["sin"]], p, outs, domain="com.microsoft",
                          num_heads=self.num_heads, kv_num_heads=self.kv_heads, do_rotary=1, rotary_interleaved=0,
                          scale=float(attn.scaling))[0]
        return self.linear(y, attn.o_proj, f"{p}.o_proj")

    def portable_attention(self, p: str, q: str, k: str, v: str, past: list[str], outs: list[str],
                           inputs: dict[str, str], scale: float) -> str:
        """ONNX's own RotaryEmbedding and Attention (opset 23) doing what GroupQueryAttention does:
        rotate q and k (half-split, not interleaved), append k and v to the past, causal softmax
        attention with kv heads shared by groups of query heads."""
        rotary = [inputs["cos"], inputs["sin"], inputs["position_ids"]]
        q = self.one("RotaryEmbedding", [q, *rotary], f"{p}/rotary_q", num_heads=self.num_heads, interleaved=0)
        k = self.one("RotaryEmbedding", [k, *rotary], f"{p}/rotary_k", num_heads=self.kv_heads, interleaved=0)
        return self.node("Attention", [q, k, v, inputs["mask"], *past], p, outs, q_num_heads=self.num_heads,
                         kv_num_heads=self.kv_heads, scale=scale, is_causal=0)[0]

    def mlp(self, i: int, x: str) -> str:
        mlp, p = self.lm.model.layers[i].mlp, f"layers.{i}.mlp"
        gate, up = self.projections(x, {"gate_proj": mlp.gate_proj, "up_proj": mlp.up_proj}, p)
        silu = self.one("Mul", [gate, self.one("Sigmoid", [gate], f"{p}/sigmoid")], f"{p}/silu")
        return self.linear(self.one("Mul", [silu, up], f"{p}/gated"), mlp.down_proj, f"{p}.down_proj")

    def build(self) -> onnx.ModelProto:
        layers = self.lm.model.layers
        x = self.embedding("input_ids")
        inputs = self.attention_inputs()
        h = self.norm(x, layers[0].input_layernorm.weight, "layers.0.input_layernorm")
        residual = x
        for i, layer in enumerate(layers):
            if i:  # the previous MLP's residual Add, fused into this layer's first norm
                h, residual = self.skip_norm(x, residual, layer.input_layernorm.weight, f"layers.{i}.input_layernorm")
            a = self.attention(i, h, inputs)
            h, residual = self.skip_norm(a, residual, layer.post_attention_layernorm.weight,
                                         f"layers.{i}.post_attention_layernorm")
            x = self.mlp(i, h)
        h, _ = self.skip_norm(x, residual, self.lm.model.norm.weight, "norm")
        logits = self.lm_head(h)
        self.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
        return self._model()

    def _model(self) -> onnx.ModelProto:
        f32, kv = TensorProto.FLOAT, ["batch_size", self.kv_heads, None, self.head_dim]
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
                  helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                                ["batch_size", "total_sequence_length"])]
        outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", "sequence_length", self.vocab])]
        for i in range(self.num_layers):
            for part in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{part}", f32,
                                                            kv[:2] + ["past_sequence_length"] + kv[3:]))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{part}", f32,
                                                             kv[:2] + ["total_sequence_length"] + kv[3:]))
        graph = helper.make_graph(self.nodes, "llm", inputs, outputs, self.inits)
        opsets = [helper.make_opsetid("", PORTABLE_OPSET if self.portable else OPSET),
                  helper.make_opsetid("com.microsoft", 1)]
        return helper.make_model(graph, opset_imports=opsets, producer_name="compressor")


# --- decoding ---------------------------------------------------------------------------------

class Decoder:
    """`__call__`, `generate` and `speed` over one engine step, `_forward(ids, mask, past) ->
    (logits, present)`, shared by the ONNX Runtime and OpenVINO engines. `past` is whatever the
    engine keeps between steps; `_empty_past(batch, capacity)` starts it for at most `capacity`
    tokens."""

    meta: dict

    def _forward(self, ids: np.ndarray, mask: np.ndarray, past):
        raise NotImplementedError

    def _empty_past(self, batch: int, capacity: int):
        raise NotImplementedError

    @property
    def eos_ids(self) -> list[int]:
        return list(self.meta["eos_token_ids"])

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits (batch, seq, vocab) of a full window, no cache."""
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        if ids.ndim != 2:
            raise UserError(f"input_ids must be (batch, seq), got shape {ids.shape}", key="input_ids")
        self._check_length(ids.shape[1])
        logits, _ = self._forward(ids, np.ones_like(ids), self._empty_past(ids.shape[0], ids.shape[1]))
        return np.asarray(logits)

    def _check_length(self, n: int) -> None:
        if n > self.meta["context_length"]:
            raise UserError(f"{n} tokens exceed the engine's context of {self.meta['context_length']}",
                            key="input_ids")

    def generate(self, prompt_ids: list[int], max_new_tokens: int, greedy: bool = True, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0) -> Iterator[int]:
        """New tokens one at a time: one prefill, then one cached step per token. Stops after
        max_new_tokens, at an end-of-sequence token (not yielded) or at the context length."""
        if not greedy and (temperature <= 0 or not 0 < top_p <= 1):
            raise UserError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}",
                            key="generate")
        rng = np.random.default_rng(seed)
        pick = (lambda lg: int(np.argmax(lg))) if greedy else (lambda lg: _sample(lg, temperature, top_p, rng))
        return self._decode(list(prompt_ids), max_new_tokens, pick, set(self.eos_ids))

    def _decode(self, prompt: list[int], max_new_tokens: int, pick, stop: set[int]) -> Iterator[int]:
        if not prompt:
            raise UserError("the prompt is empty: give at least one token (e.g. the bos token)", key="prompt_ids")
        self._check_length(len(prompt))
        capacity = min(len(prompt) + max_new_tokens, self.meta["context_length"])
        ids, past, total = np.array([prompt], np.int64), self._empty_past(1, capacity), len(prompt)
        for _ in range(max_new_tokens):
            logits, past = self._forward(ids, np.ones((1, total), np.int64), past)
            token = pick(np.asarray(logits)[0, -1])
            if token in stop:
                return
            yield token
            if total == self.meta["context_length"]:
                return
            ids, total = np.array([[token]], np.int64), total + 1

    def speed(self, prompt_len: int = 128, new_tokens: int = 128, repeats: int = 3) -> dict:
        """Batch 1, greedy, a fixed seeded random prompt, end-of-sequence ignored so exactly
        new_tokens are decoded. ttft_ms: prefill and the first token; decode_tokens_per_s: the
        remaining new_tokens - 1 cached steps. Median of `repeats` runs after one warm-up run."""
        prompt = np.random.default_rng(0).integers(3, self.meta["vocab_size"], prompt_len).tolist()
        ttft, rate = [], []
        for r in range(repeats + 1):
            start = time.perf_counter()
            steps = self._decode(prompt, new_tokens, lambda lg: int(np.argmax(lg)), set())
            next(steps)
            first = time.perf_counter()
            n = sum(1 for _ in steps)
            end = time.perf_counter()
            if r:  # the first run warms up allocators and caches
                ttft.append((first - start) * 1e3)
                rate.append(n / (end - first) if n else float("nan"))
        return {"ttft_ms": statistics.median(ttft), "decode_tokens_per_s": statistics.median(rate),
                "prompt_len": prompt_len, "new_tokens": new_tokens, "stat": f"median of {repeats} after 1 warm-up"}


def _sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1:  # nucleus: the fewest most likely tokens whose mass reaches top_p
        order = np.argsort(-p)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(len(p), p=p))


def read_meta(folder: Path) -> dict:
    path = Path(folder) / "llm.json"
    if not path.is_file():
        raise UserError(f"{folder} holds no LLM engine (no llm.json)", key="engine")
    return json.loads(path.read_text())


class LlmSession(Decoder):
    """ONNX Runtime (CPU) over a folder written by `export_llm`. With GroupQueryAttention the KV
    cache is one buffer per layer, sized for the whole generation and bound as both past and
    present (ONNX Runtime's shared-buffer mode, as onnxruntime-genai runs it): each step writes its
    new keys in place instead of copying the grown cache. The portable graph (ONNX Attention) keeps
    the cache in ONNX Runtime's own tensors between steps, without a numpy copy."""

    def __init__(self, folder: str | Path, threads: int = 0):
        import onnxruntime as ort

        folder = Path(folder)
        self.meta = read_meta(folder)
        self.path = folder / "model.onnx"
        self.precision = self.meta["precision"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        with quiet.Captured("onnxruntime"):
            self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        self.provider = self.session.get_providers()[0]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.past_names = [f"past_key_values.{i}.{p}" for i in range(self.meta["num_layers"]) for p in ("key", "value")]
        self.present_names = [n.replace("past_key_values", "present") for n in self.past_names]
        self.shared_kv = "GroupQueryAttention" in self.kernels()
        self._ort = ort

    def _empty_past(self, batch: int, capacity: int) -> list:
        m = self.meta
        shape = (batch, m["kv_heads"], capacity if self.shared_kv else 0, m["head_dim"])
        return [self._ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32)) for _ in self.past_names]

    def _forward(self, ids: np.ndarray, mask: np.ndarray, past: list):
        value = self._ort.OrtValue.ortvalue_from_numpy
        if not self.shared_kv:
            feeds = {"input_ids": value(ids), "attention_mask": value(mask), **dict(zip(self.past_names, past))}
            outs = self.session.run_with_ort_values(self.output_names, feeds)
            return outs[0].numpy(), outs[1:]
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("input_ids", value(ids))
        binding.bind_ortvalue_input("attention_mask", value(mask))
        binding.bind_output("logits")  # first: get_outputs() returns the outputs in binding order
        for past_name, present_name, kv in zip(self.past_names, self.present_names, past):
            binding.bind_ortvalue_input(past_name, kv)
            binding.bind_ortvalue_output(present_name, kv)  # the same buffer: written in place
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy(), past

    def kernels(self) -> dict[str, int]:
        """Op types of model.onnx, counted."""
        graph = onnx.load(str(self.path), load_external_data=False).graph
        return dict(collections.Counter(n.op_type for n in graph.node))
