"""PyTorch -> ONNX, shared by every target that reads ONNX.

Why the TorchScript exporter (dynamo=False): in torch 2.14 the dynamo exporter cannot trace
`fake_quantize_*` ops (no fake-tensor kernel for the cachemask variants), while the
TorchScript exporter turns them into QuantizeLinear/DequantizeLinear pairs. For a quantized
model two passes follow: ONNX Runtime's basic (portable) optimizer folds each weight's
QuantizeLinear into an int8 initializer, and `quantize_bias` stores biases as int32 with
scale = input scale x weight scale, as ONNX Runtime's own quantizer does; without it ORT
keeps Gemm in float.
A Flatten before a Linear becomes the equivalent Reshape (see `flatten_to_reshape`). A conv that
feeds a residual Add carries its own output Q/DQ from the stage (QuantWrapper.quantize_output),
so it too runs as QLinearConv; nothing is quantized here that the PyTorch model does not
quantize. Weight-only layers become MatMulNBits (see `onnx_weight_only`).
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

from compressor.core.atomic import atomic_path
from compressor.modules.quant import QuantEmbedding, QuantWrapper, as_input, is_dynamic, is_per_token, is_quantized, is_weight_only
from compressor.targets.onnx.dynamic import int8_embeddings, per_token_matmuls
from compressor.targets.onnx.weight_only import weight_only_matmuls

OPSET = 17


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int = OPSET,
                uint8_weights: bool = False) -> Path:
    """`uint8_weights`: an INT8 model's weights that would saturate a u8 x s8 kernel are stored as
    uint8 (see `saturating_weights_to_uint8`); for ONNX Runtime on x86 CPUs without VNNI."""
    model = model.eval()
    dynamic, per_token, source = is_dynamic(model), is_per_token(model), model
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
        if per_token:  # our own integer graph (onnx_dynamic): ORT's quantizer has no per-token scales
            proto = per_token_matmuls(onnx.load(str(raw)), source)
        elif dynamic:
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
            proto = quantize_bias(flatten_to_reshape(pad_into_conv(onnx.load(str(folded)))))
            if uint8_weights:
                proto = saturating_weights_to_uint8(proto)
        else:
            proto = onnx.load(str(raw))
        if any(isinstance(m, QuantEmbedding) for m in source.modules()):
            proto = int8_embeddings(proto, source)
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
        elif isinstance(m, QuantEmbedding):  # its table already holds the dequantized values
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


def pad_into_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    """Pad(zeros) -> QuantizeLinear -> DequantizeLinear -> Conv: the padding moves into the Conv's
    `pads` (ONNX allows them asymmetric), the QuantizeLinear reads the Pad's input. The same
    values: a zero quantizes to the zero point, which is what a quantized conv pads with. Without
    it ONNX Runtime cannot fuse the conv (TensorFlow-style SAME padding of stride-2 convs, e.g.
    EfficientNet-Lite's, is a ZeroPad2d before the conv) and runs it in float."""
    g = model.graph
    consts = _constants(g)
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    dead = []
    for pad in g.node:
        if pad.op_type != "Pad" or len(pad.input) < 2 or pad.input[1] not in consts or pad.output[0] in outputs:
            continue
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        value = consts.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(())
        pads = consts[pad.input[1]].reshape(-1).tolist()
        users = consumers.get(pad.output[0], [])
        if mode != b"constant" or value is None or np.any(value != 0) or len(pads) < 6 or any(pads[:2]) \
                or any(pads[len(pads) // 2:len(pads) // 2 + 2]) or len(pads) != 2 * (len(pads) // 2) \
                or len(users) != 1 or users[0].op_type != "QuantizeLinear" or len(pad.input) > 3:
            continue
        q = users[0]
        dqs = consumers.get(q.output[0], [])
        convs = [c for d in dqs if d.op_type == "DequantizeLinear" for c in consumers.get(d.output[0], [])]
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs) or not convs \
                or any(c.op_type != "Conv" or c.input[0] not in {d.output[0] for d in dqs} for c in convs) \
                or any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for c in convs for a in c.attribute):
            continue
        rank = len(pads) // 2 - 2
        extra = pads[2:2 + rank] + pads[4 + rank:]
        for c in convs:
            old = next((a for a in c.attribute if a.name == "pads"), None)
            current = list(old.ints) if old is not None else [0] * (2 * rank)
            if old is not None:
                c.attribute.remove(old)
            c.attribute.append(helper.make_attribute("pads", [int(a + b) for a, b in zip(current, extra)]))
        q.input[0] = pad.input[0]
        dead.append(pad)
    for pad in dead:
        g.node.remove(pad)
    return model


def saturating_weights_to_uint8(model: onnx.ModelProto) -> onnx.ModelProto:
    """int8 weights (zero point 0) of a Conv with group=1, a Gemm or a MatMul, with a value
    beyond +-64, become uint8 with zero point 128: the same dequantized values.
    Why: on x86 without VNNI, ONNX Runtime multiplies u8 activations by s8 weights with
    VPMADDUBSW, whose pairwise sums saturate at int16 once |w| exceeds 64 (255 * 64 * 2 < 2^15);
    its u8 x u8 kernels widen to 16 bits first and never saturate (slower: about 1.2x the time of
    those layers). Depthwise convs (group > 1) run a kernel that does not saturate and keep int8;
    7-bit weights (reduce_range) stay int8 and fast. ONNX Runtime needs one zero point for all
    channels of a QLinearConv weight: 128 is."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def gemm_like(node, weight: str) -> bool:
        if node.op_type == "Conv":
            return node.input[1] == weight and next((a.i for a in node.attribute if a.name == "group"), 1) == 1
        return node.op_type in ("Gemm", "MatMul") and node.input[1] == weight

    for dq in g.node:
        if dq.op_type != "DequantizeLinear" or len(dq.input) < 3 or dq.input[0] not in inits \
                or dq.input[2] not in inits or len(consumers.get(dq.input[0], [])) != 1:
            continue
        w = numpy_helper.to_array(inits[dq.input[0]])
        zero = numpy_helper.to_array(inits[dq.input[2]])
        users = consumers.get(dq.output[0], [])
        if w.dtype != np.int8 or np.any(zero != 0) or not users or not all(gemm_like(u, dq.output[0]) for u in users) \
                or int(np.abs(w.astype(np.int16)).max(initial=0)) <= 64:
            continue
        inits[dq.input[0]].CopyFrom(numpy_helper.from_array((w.astype(np.int16) + 128).astype(np.uint8), dq.input[0]))
        name = dq.input[0] + "_uint8_zero_point"
        g.initializer.append(numpy_helper.from_array(np.full(zero.shape, 128, np.uint8), name))
        dq.input[2] = name
    return model


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
