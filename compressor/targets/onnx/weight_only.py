"""`WeightOnly` layers as ONNX Runtime's MatMulNBits (com.microsoft domain): packed INT4/INT8
weights with a scale (and zero point) per group, dequantized inside the kernel.

Why our own writer rather than onnxruntime.quantization's MatMulNBitsQuantizer: the stage has
already chosen the integers, and the report measured the model made of them; writing those
integers (not re-quantizing the float weights) keeps engine and report exactly the same model.
The exported graph holds each Linear as Gemm (W) or, for 3-D inputs, MatMul (W transposed); the
layer is found by its weight's values."""
from __future__ import annotations


import numpy as np
import onnx
from onnx import helper, numpy_helper
from torch import nn

from compressor.modules.quant import WeightOnly
from compressor.targets.onnx.match import layer_of, linear_keys


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """uint8 values -> bytes along the last axis, low nibble first for 4 bits (padded to even)."""
    if bits == 8:
        return q.astype(np.uint8)
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros(q.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def weight_only_matmuls(proto: onnx.ModelProto, model: nn.Module) -> onnx.ModelProto:
    layers = {}
    for m in model.modules():
        if isinstance(m, WeightOnly):
            w = m.inner.weight.detach().float().numpy()
            layers.update(dict.fromkeys(linear_keys(w), m))
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    nodes = []
    for node in g.node:
        m = layer_of(node, inits, layers)
        if m is None:
            nodes.append(node)
            continue
        base = f"{node.output[0]}_nbits"
        n_out, k_in = m.inner.weight.shape
        g.initializer.extend([numpy_helper.from_array(_pack(m.integers().numpy(), m.bits), base + "_B"),
                              numpy_helper.from_array(m.scale.numpy().astype(np.float32), base + "_scales")])
        inputs = [node.input[0], base + "_B", base + "_scales"]
        if not m.symmetric:
            g.initializer.append(numpy_helper.from_array(_pack(m.zero_point.numpy(), m.bits), base + "_zero_points"))
            inputs.append(base + "_zero_points")
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        out = base + "_out" if bias else node.output[0]
        nodes.append(helper.make_node("MatMulNBits", inputs, [out], name=base, domain="com.microsoft",
                                      K=k_in, N=n_out, bits=m.bits, block_size=m.group_size))
        if bias:
            nodes.append(helper.make_node("Add", [out, bias], [node.output[0]], name=base + "_bias"))
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    kept = [i for i in g.initializer if i.name in used]  # the float weights go
    del g.initializer[:]
    g.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return proto
