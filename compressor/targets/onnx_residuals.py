"""Q/DQ on residual Adds of an exported INT8 graph, so that ONNX Runtime (and TensorRT) run
conv -> add -> conv in integers.

Why: the quantize stages fake-quantize the inputs of Conv/Linear layers. A conv whose output
feeds a residual Add then has no QuantizeLinear after it, ONNX Runtime cannot fuse it into
QLinearConv, and it runs in float on weights dequantized at every call (resnet18 came out slower
than FP32). Here each Add fed by a Conv gets its inputs and output quantized (uint8, per tensor,
min/max over calibration batches run through the graph itself), reusing the Q/DQ pair a tensor
already has, as ONNX Runtime's own quantizer does. Attention-mask Adds are left alone: no Conv feeds them.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def quantize_residual_adds(model: onnx.ModelProto, batches: list[np.ndarray]) -> onnx.ModelProto:
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    fed_by_conv = lambda t: t in producer and producer[t].op_type == "Conv"  # noqa: E731
    adds = [n for n in g.node if n.op_type == "Add" and len(n.input) == 2 and any(map(fed_by_conv, n.input))
            and all(t in producer and producer[t].op_type != "Constant" for t in n.input)]
    tensors = list(dict.fromkeys(t for n in adds for t in [*n.input, n.output[0]]
                                 if producer[t].op_type != "DequantizeLinear"))
    if not tensors or not batches:
        return model
    ranges = _calibrate(model, tensors, batches)
    for t in tensors:
        dq = _existing_dq(g, t) or _insert_qdq(g, t, *ranges[t])
        for node in g.node:
            if node.op_type != "QuantizeLinear" and node.output[0] != dq:
                node.input[:] = [dq if i == t else i for i in node.input]
    return model


def _calibrate(model: onnx.ModelProto, tensors: list[str], batches: list[np.ndarray]) -> dict[str, tuple]:
    """min/max of each tensor over the batches, from ONNX Runtime running the graph as it is."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:  # a file, not bytes: models over 2 GB
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    lo = {t: 0.0 for t in tensors}
    hi = {t: 0.0 for t in tensors}
    for x in batches:
        for t, v in zip(tensors, session.run(tensors, {name: x})):
            lo[t], hi[t] = min(lo[t], float(v.min())), max(hi[t], float(v.max()))
    return {t: (lo[t], hi[t]) for t in tensors}


def _existing_dq(g: onnx.GraphProto, t: str) -> str | None:
    """The DequantizeLinear output of a per-tensor Q/DQ pair `t` already goes through."""
    inits = {i.name: i for i in g.initializer}
    for q in g.node:
        if q.op_type == "QuantizeLinear" and q.input[0] == t and q.input[1] in inits \
                and numpy_helper.to_array(inits[q.input[1]]).size == 1:
            dq = next((n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]), None)
            if dq is not None:
                return dq.output[0]
    return None


def _insert_qdq(g: onnx.GraphProto, t: str, lo: float, hi: float) -> str:
    """uint8 asymmetric, zero exactly representable: the same rule as the stages' activations."""
    scale = max((hi - lo) / 255.0, 1e-12)
    zero_point = int(min(255, max(0, round(-lo / scale))))
    base = f"{t}_residual"
    g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), base + "_scale"),
                          numpy_helper.from_array(np.array(zero_point, np.uint8), base + "_zero_point")])
    q = helper.make_node("QuantizeLinear", [t, base + "_scale", base + "_zero_point"], [base + "_q"],
                         name=base + "_QuantizeLinear")
    dq = helper.make_node("DequantizeLinear", [base + "_q", base + "_scale", base + "_zero_point"], [base + "_dq"],
                          name=base + "_DequantizeLinear")
    at = next(i for i, n in enumerate(g.node) if t in n.output) + 1
    g.node.insert(at, dq)
    g.node.insert(at, q)
    return base + "_dq"
