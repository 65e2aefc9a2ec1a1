"""The exported ONNX graph, in the form TensorRT's ONNX parser accepts.

TensorRT quantizes symmetrically: every QuantizeLinear/DequantizeLinear has a signed zero
point of 0, and a DequantizeLinear reads INT8, FP8 or INT4 values only ("Working with
Quantized Types" and "Explicit Quantization" in the TensorRT 10 developer guide). The INT8
graph that `compressor.targets.onnx.export.export_onnx` writes is made for ONNX Runtime's
integer kernels and differs in two ways, undone here:

- activations are uint8 with a zero point (asymmetric). Each becomes int8 with zero point 0
  and a scale covering the same range, s * max(z, 255 - z) / 127. A tensor after a ReLU
  (z = 0) loses one bit of resolution: the price of TensorRT's symmetric INT8, which the
  report's parity measures.
- biases are int32 behind a DequantizeLinear (what QLinearConv wants). Each becomes the float
  bias it stands for; TensorRT fuses the bias into the INT8 convolution itself.

INT8 weights keep their integers (TensorRT reads pre-quantized weights behind a
DequantizeLinear), clipped to [-127, 127], the weight range TensorRT uses. Opset imports of
domains that no node uses (ONNX Runtime's optimizer leaves com.microsoft and others) are
dropped. Float graphs pass through unchanged but for that last step.

Written by hand: no library converts between the two Q/DQ conventions.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

QDQ = ("QuantizeLinear", "DequantizeLinear")


def to_tensorrt_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Rewrite `model` in place; returns it and counts of what changed."""
    g = model.graph
    consts = _constants(g)
    stats = {"activations_to_int8": 0, "biases_to_float": 0, "weights_clipped": 0}
    symmetric: dict[tuple[str, str], tuple[str, str]] = {}  # (scale, uint8 zero point) -> int8 pair
    removed = []
    for node in g.node:
        if node.op_type not in QDQ:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        zp_name = node.input[2] if len(node.input) > 2 else ""
        zp = consts.get(zp_name) if zp_name else None
        x = consts.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if x is not None and x.dtype == np.int32:  # a quantized bias: store the float it stands for
            value = _dequantize(x, consts[node.input[1]], zp, axis)
            g.initializer.append(numpy_helper.from_array(value, node.output[0]))
            removed.append(node)
            stats["biases_to_float"] += 1
        elif zp is not None and zp.dtype == np.uint8:  # an asymmetric activation
            key = (node.input[1], zp_name)
            if key not in symmetric:
                symmetric[key] = _symmetric_pair(g, consts[node.input[1]], zp, f"{key[0]}__{key[1]}")
            node.input[1], node.input[2] = symmetric[key]
            stats["activations_to_int8"] += node.op_type == "QuantizeLinear"
        elif x is not None and x.dtype == np.int8 and (x == -128).any():  # weights: TensorRT's range
            _replace_constant(g, node.input[0], np.maximum(x, -127).astype(np.int8))
            consts[node.input[0]] = np.maximum(x, -127).astype(np.int8)
            stats["weights_clipped"] += 1
    for node in removed:
        g.node.remove(node)
    _drop_unused(g)
    used = {n.domain for n in g.node} | {"", "ai.onnx"}
    kept = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    onnx.checker.check_model(model)
    return model, stats


def has_int8_qdq(model: onnx.ModelProto) -> bool:
    consts = _constants(model.graph)
    return any(n.op_type == "DequantizeLinear" and n.input[0] in consts and consts[n.input[0]].dtype == np.int8
               for n in model.graph.node)


def has_fp8_qdq(model: onnx.ModelProto) -> bool:
    fp8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2}
    zero_points = {n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    return any(i.name in zero_points and i.data_type in fp8 for i in model.graph.initializer)


def _symmetric_pair(g: onnx.GraphProto, scale: np.ndarray, zp: np.ndarray, base: str) -> tuple[str, str]:
    """int8 scale and zero point covering the range of a uint8 (scale, zero point) pair."""
    z = zp.astype(np.float64)
    wider = scale.astype(np.float64) * np.maximum(z, 255.0 - z) / 127.0
    names = (f"{base}__int8_scale", f"{base}__int8_zero_point")
    g.initializer.extend([numpy_helper.from_array(wider.astype(scale.dtype), names[0]),
                          numpy_helper.from_array(np.zeros(zp.shape, dtype=np.int8), names[1])])
    return names


def _dequantize(x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int) -> np.ndarray:
    s = scale.astype(np.float64)
    z = zp.astype(np.float64) if zp is not None else np.zeros_like(s)
    if s.ndim == 1 and x.ndim > 1:  # per-axis parameters broadcast along `axis`
        shape = [1] * x.ndim
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return ((x.astype(np.float64) - z) * s).astype(scale.dtype)


def _constants(g: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def _replace_constant(g: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    for init in g.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(value, name))
            return
    for n in g.node:
        if n.op_type == "Constant" and n.output[0] == name:
            n.attribute[0].t.CopyFrom(numpy_helper.from_array(value, name))
            return


def _drop_unused(g: onnx.GraphProto) -> None:
    """Initializers and Constant nodes that nothing reads any more."""
    read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for init in [i for i in g.initializer if i.name not in read]:
        g.initializer.remove(init)
    for node in [n for n in g.node if n.op_type == "Constant" and n.output[0] not in read]:
        g.node.remove(node)
