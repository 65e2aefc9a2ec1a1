"""PyTorch -> ONNX, shared by every target that reads ONNX.

Why the TorchScript exporter (dynamo=False): in torch 2.14 the dynamo exporter cannot trace
`fake_quantize_*` ops (no fake-tensor kernel for the cachemask variants), while the
TorchScript exporter turns them into QuantizeLinear/DequantizeLinear pairs. For a quantized
model two passes follow: ONNX Runtime's basic (portable) optimizer folds each weight's
QuantizeLinear into an int8 initializer, and `quantize_bias` stores biases as int32 with
scale = input scale x weight scale, as ONNX Runtime's own quantizer does; without it ORT
keeps Gemm in float.
A Flatten before a Linear becomes the equivalent Reshape (see `flatten_to_reshape`), and residual
Adds fed by convs get Q/DQ from calibration batches (see `onnx_residuals`). Weight-only layers
become MatMulNBits (see `onnx_weight_only`).
"""
from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from compressor.atomic import atomic_path
from compressor.quant import QuantWrapper, as_input, is_dynamic, is_quantized, is_weight_only
from compressor.targets.onnx_residuals import quantize_residual_adds
from compressor.targets.onnx_weight_only import weight_only_matmuls

OPSET = 17


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int = OPSET,
                calib: list[torch.Tensor] | None = None) -> Path:
    """`calib`: input batches for an INT8 model's residual Adds (see onnx_residuals)."""
    model = model.eval()
    dynamic = is_dynamic(model)
    if dynamic:  # ONNX Runtime's own quantize_dynamic writes the integer graph from the float one
        model = _dequantized_copy(model)
    example = as_input(model, example.cpu())
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        fast = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)  # the fused attention fast path has no ONNX export
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
                torch.onnx.export(
                    model, (example,), str(raw), dynamo=False, opset_version=opset,
                    input_names=["input"], output_names=["output"],
                    dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                )
        finally:
            torch.backends.mha.set_fastpath_enabled(fast)
        if dynamic:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            out = Path(tmp) / "dynamic.onnx"
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.WARNING)  # ORT's quantizer logs a line per node through the root logger
            try:
                quantize_dynamic(str(raw), str(out), weight_type=QuantType.QInt8, per_channel=True,
                                 op_types_to_quantize=["MatMul", "Gemm"],  # what the stage quantized
                                 reduce_range=getattr(model, "_reduce_range", False))
            finally:
                root.setLevel(level)
            proto = onnx.load(str(out))
        elif is_weight_only(model):
            proto = weight_only_matmuls(onnx.load(str(raw)), model)
        elif is_quantized(model):
            folded = Path(tmp) / "folded.onnx"
            _ort_basic_optimize(raw, folded)
            proto = quantize_bias(flatten_to_reshape(onnx.load(str(folded))))
            batches = [as_input(model, x.cpu()).numpy() for x in calib or []]
            proto = quantize_residual_adds(proto, batches)
        else:
            proto = onnx.load(str(raw))
    onnx.checker.check_model(proto, full_check=True)
    with atomic_path(path) as out:
        onnx.save(proto, str(out))
    return path


def _dequantized_copy(model: nn.Module) -> nn.Module:
    """Float model whose Linear weights already sit on the int8 grid of the dynamic stage:
    re-quantizing them (per channel, symmetric) gives exactly the stage's integers."""
    import copy

    model = copy.deepcopy(model)
    reduce = False
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantWrapper) and m.dynamic:
            with torch.no_grad():
                m.inner.weight.copy_(m.quantized_weight())
            reduce = reduce or m.weight_bits == 7
            model.set_submodule(name, m.inner)
    model._reduce_range = reduce
    return model


def _ort_basic_optimize(src: Path, dst: Path) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def flatten_to_reshape(model: onnx.ModelProto) -> onnx.ModelProto:
    """Flatten(axis=1) -> Reshape(0, -1), the same op: ONNX Runtime moves Q/DQ pairs across
    Reshape but not across Flatten, so a conv before a Flatten would otherwise stay float."""
    g = model.graph
    shape_name = "flatten_to_reshape_shape"
    used = False
    for node in g.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if node.op_type == "Flatten" and axis == 1:
            node.op_type = "Reshape"
            del node.attribute[:]
            node.input.append(shape_name)
            used = True
    if used:
        g.initializer.append(numpy_helper.from_array(np.array([0, -1], dtype=np.int64), shape_name))
    return model


def quantize_bias(model: onnx.ModelProto) -> onnx.ModelProto:
    """Conv/Gemm fed by DequantizeLinear input and weight: store the float bias as int32."""
    g = model.graph
    consts = _constants(g)
    producer = {o: n for n in g.node for o in n.output}
    for node in list(g.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in consts:
            continue
        dx, dw = producer.get(node.input[0]), producer.get(node.input[1])
        if not (dx and dw and dx.op_type == "DequantizeLinear" and dw.op_type == "DequantizeLinear"):
            continue
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i == 0 for a in node.attribute):
            continue
        sx, sw = consts.get(dx.input[1]), consts.get(dw.input[1])
        if sx is None or sw is None or sx.size != 1:
            continue
        bias = consts[node.input[2]].astype(np.float64)
        scale = (float(sx) * sw.astype(np.float64)).reshape(-1) * np.ones_like(bias)
        q = np.clip(np.rint(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
        name = node.output[0] + "_bias_quantized"  # per node: ORT's optimizer may share one bias among several
        g.initializer.extend([
            numpy_helper.from_array(q, name),
            numpy_helper.from_array(scale.astype(np.float32), name + "_scale"),
            numpy_helper.from_array(np.zeros_like(q), name + "_zero_point"),
        ])
        dq = helper.make_node("DequantizeLinear", [name, name + "_scale", name + "_zero_point"],
                              [name + "_dq"], axis=0, name=name + "_DequantizeLinear")
        g.node.insert(list(g.node).index(node), dq)
        node.input[2] = name + "_dq"
    return model
