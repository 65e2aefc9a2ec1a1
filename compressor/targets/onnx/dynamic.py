"""Per-token dynamic INT8 Linear layers and int8 embedding tables, written into the float ONNX
export as standard ONNX ops, so ONNX Runtime and OpenVINO both read them.

Per-token Linear (QuantWrapper with activations="per_token"), for an input x of any rank:

    m   = Max(ReduceMax(Abs(x), axis -1), 1e-30)                  one range per token (row)
    q   = QuantizeLinear(x * (127 / m), 1, 128)                    uint8: round half to even, + 128
    acc = MatMulInteger(q, W_u8, 128, 128)                         int32, exact
    y   = (Cast<float>(acc) * w_scale) * (m / 127)  [+ bias]       per-channel, then per-token scale

`compressor.modules.quant.per_token_linear` computes the same ops in the same order in PyTorch.
Why these choices (measured on all-MiniLM-L6-v2, ONNX Runtime 1.32, AMD EPYC with AVX2 only):
- uint8 weights with zero point 128, not int8: ORT's u8s8 kernel on AVX2 without VNNI
  (VPMADDUBSW) saturates its 16-bit pair sums (255 x 127 x 2 > 32767; a random 4096x384x1536
  product was off by up to 1.5e5), the u8u8 kernel widens to 16 bits first and is exact at the
  same speed (263 vs 271 ms), and on VNNI/AMX CPUs ORT routes u8u8 to its u8s8 kernel with the
  weights shifted to int8 at packing time. s8s8 (int8 activations) is exact but 1.8x slower on AVX2.
- a scalar activation zero point: ORT's MatMulInteger takes only a scalar one.
- the two scales never meet in one `Mul(Cast(acc), Mul(s, w_scale))`: ORT fuses that form into
  MatMulIntegerToFloat, whose kernel mishandles a per-row scale on a 3-D input (the embeddings
  came out at cosine 0.63 to the unfused graph). Multiplied one after the other, nothing fuses.
- the elementwise passes, not the integer products, are what the per-token scheme costs (on this
  CPU the u8u8 products take about 0.8x the FP32 MatMul time, and the passes eat most of that
  gain), so they are kept few: the per-row scaling is one Mul and the rounding a per-tensor
  QuantizeLinear with scale 1 and zero point 128 (one fused pass in ORT, a constant scale for
  OpenVINO) instead of Div, Round, Add, Cast: 3285 vs 3351 ms per 32 x 128 batch on 1 thread.
  Tried and dropped: DequantizeLinear (int32 in, per-channel scale) for the Cast and first Mul
  (ORT's int32 DequantizeLinear is slower than the two: 3529 ms); ReduceMax and ReduceMin
  instead of Abs + ReduceMax (3333 ms); QuantizeLinear with the per-row scale itself (a 2-D
  reshape, axis 0) leaves OpenVINO 2026.4 with an empty output.
- one quantization per input tensor: query, key and value share theirs.

int8 embedding table (QuantEmbedding): Gather(int8 table, ids) -> Cast<float> -> Mul(Gather(scales)).
Layers are found by their float weights' values in the export, as in onnx_weight_only (a layer
the forward pass never calls, such as BERT's pooler under mean pooling, is not in the graph; one
written in another form would stay float, and parity would say so)."""
from __future__ import annotations


import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compressor.modules.quant import PER_TOKEN_EPS, PER_TOKEN_ZERO_POINT, QuantEmbedding, QuantWrapper
from compressor.targets.onnx.match import attr, layer_of, linear_keys, weight_key

_EPS, _127, _ONE, _ZP_U8 = "per_token_eps", "per_token_127", "per_token_one", "per_token_zero_point_u8"
_AXES, _ZP_I32 = "per_token_axes", "per_token_zero_point_i32"


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)


def _drop_unused_initializers(g: onnx.GraphProto) -> None:
    used = {i for n in g.node for i in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)


def per_token_matmuls(proto: onnx.ModelProto, model: nn.Module) -> onnx.ModelProto:
    """Replace the MatMul/Gemm of every per-token QuantWrapper of `model` (found by the values
    of its dequantized weight, which the float export holds) with the per-token integer graph."""
    layers = {}
    for m in model.modules():
        if isinstance(m, QuantWrapper) and m.dynamic and m.activations == "per_token":
            w = m.quantized_weight().detach().float().numpy()
            layers.update(dict.fromkeys(linear_keys(w), m))  # tied twins: the same integers
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    opset = _opset(proto)
    g.initializer.extend([
        numpy_helper.from_array(np.array(PER_TOKEN_EPS, np.float32), _EPS),
        numpy_helper.from_array(np.array(127.0, np.float32), _127),
        numpy_helper.from_array(np.array(1.0, np.float32), _ONE),
        numpy_helper.from_array(np.array(PER_TOKEN_ZERO_POINT, np.uint8), _ZP_U8),
        numpy_helper.from_array(np.array([-1], np.int64), _AXES),
    ])
    quantized: dict[str, tuple[str, str]] = {}  # input name -> (uint8 tensor, scale)
    nodes = []
    for node in g.node:
        m = layer_of(node, inits, layers)
        if m is None:
            nodes.append(node)
            continue
        x = node.input[0]
        if x not in quantized:
            quantized[x] = _quantize_rows(nodes, x, opset)
        q, s = quantized[x]
        base = f"{node.output[0]}_per_token"
        w_int = m.weight_integers().detach().numpy().astype(np.int64)  # (out, in), |values| <= qmax
        g.initializer.extend([
            numpy_helper.from_array((w_int.T + PER_TOKEN_ZERO_POINT).astype(np.uint8), base + "_W"),
            numpy_helper.from_array(m.weight_scale.detach().numpy().astype(np.float32), base + "_w_scale"),
        ])
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        out = base + "_out" if bias else node.output[0]
        nodes += [
            helper.make_node("MatMulInteger", [q, base + "_W", _ZP_U8, _ZP_U8], [base + "_acc"], name=base + "_MatMulInteger"),
            helper.make_node("Cast", [base + "_acc"], [base + "_accf"], to=TensorProto.FLOAT, name=base + "_Cast"),
            helper.make_node("Mul", [base + "_accf", base + "_w_scale"], [base + "_col"], name=base + "_MulCol"),
            helper.make_node("Mul", [base + "_col", s], [out], name=base + "_MulRow"),
        ]
        if bias:
            nodes.append(helper.make_node("Add", [out, bias], [node.output[0]], name=base + "_Bias"))
    del g.node[:]
    g.node.extend(nodes)
    _drop_unused_initializers(g)
    return proto


def _quantize_rows(nodes: list, x: str, opset: int) -> tuple[str, str]:
    """Nodes quantizing `x` per row (last axis): returns (uint8 tensor, per-row scale) names."""
    b = f"{x}_per_token"
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18
        reduce = helper.make_node("ReduceMax", [b + "_abs", _AXES], [b + "_max"], keepdims=1, name=b + "_ReduceMax")
    else:
        reduce = helper.make_node("ReduceMax", [b + "_abs"], [b + "_max"], axes=[-1], keepdims=1, name=b + "_ReduceMax")
    nodes += [helper.make_node("Abs", [x], [b + "_abs"], name=b + "_Abs"), reduce,
              helper.make_node("Max", [b + "_max", _EPS], [b + "_m"], name=b + "_Max")]
    nodes += [
        helper.make_node("Div", [_127, b + "_m"], [b + "_inv"], name=b + "_Inverse"),
        helper.make_node("Div", [b + "_m", _127], [b + "_scale"], name=b + "_Scale"),
        helper.make_node("Mul", [x, b + "_inv"], [b + "_scaled"], name=b + "_MulRow"),
        helper.make_node("QuantizeLinear", [b + "_scaled", _ONE, _ZP_U8], [b + "_q"], name=b + "_QuantizeLinear"),
    ]
    return b + "_q", b + "_scale"


def int8_embeddings(proto: onnx.ModelProto, model: nn.Module) -> onnx.ModelProto:
    """Gather from a QuantEmbedding's float table -> Gather from its int8 table times the row's
    scale. Tables the exporter folded into constants (positions of a fixed length) stay as they
    are: they already hold the dequantized values."""
    tables = {}
    for m in model.modules():
        if isinstance(m, QuantEmbedding):
            tables[weight_key(m.inner.weight.detach().float().numpy())] = m
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    nodes, done = [], {}
    for node in g.node:
        m = None
        if node.op_type == "Gather" and node.input[0] in inits and attr(node, "axis", 0) == 0:
            m = tables.get(weight_key(numpy_helper.to_array(inits[node.input[0]])))
        if m is None:
            nodes.append(node)
            continue
        if node.input[0] not in done:  # one int8 copy per table, however many Gathers read it
            base = f"{node.input[0]}_int8"
            g.initializer.extend([
                numpy_helper.from_array(m.integers().numpy(), base),
                numpy_helper.from_array(m.scale.detach().numpy().astype(np.float32).reshape(-1, 1), base + "_scale"),
            ])
            done[node.input[0]] = base
        table = done[node.input[0]]
        out = node.output[0]
        nodes += [
            helper.make_node("Gather", [table, node.input[1]], [out + "_int8"], axis=0, name=out + "_GatherInt8"),
            helper.make_node("Cast", [out + "_int8"], [out + "_float"], to=TensorProto.FLOAT, name=out + "_Cast"),
            helper.make_node("Gather", [table + "_scale", node.input[1]], [out + "_scale"], axis=0, name=out + "_GatherScale"),
            helper.make_node("Mul", [out + "_float", out + "_scale"], [out], name=out + "_Dequantize"),
        ]
    del g.node[:]
    g.node.extend(nodes)
    _drop_unused_initializers(g)
    return proto
