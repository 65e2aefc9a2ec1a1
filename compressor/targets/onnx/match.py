"""Finding, in an exported ONNX graph, the node that runs a given PyTorch layer: weights are matched
by shape and content (torch.onnx names initializers as it likes), for the graph passes that rewrite
quantized MatMuls and Gathers (`dynamic`, `weight_only`)."""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper


def weight_key(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a.shape, hashlib.sha1(a.tobytes()).hexdigest()


def attr(node: onnx.NodeProto, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def linear_keys(weight: np.ndarray) -> list[tuple]:
    """The keys under which a Linear's weight (out x in) shows up: as a Gemm's B (transB=1) or a
    MatMul's transposed B."""
    return [("Gemm",) + weight_key(weight), ("MatMul",) + weight_key(weight.T)]


def layer_of(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], layers: dict[tuple, Any]) -> Any:
    """The layer (from `layers`, keyed by `linear_keys`) a plain MatMul or Gemm node (y = x W^T + b,
    no alpha/beta/transA) computes with a constant weight, or None."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
        return None
    plain = node.op_type == "MatMul" or (attr(node, "transB", 0) == 1 and attr(node, "transA", 0) == 0
                                         and attr(node, "alpha", 1.0) == 1.0 and attr(node, "beta", 1.0) == 1.0)
    return layers.get((node.op_type,) + weight_key(numpy_helper.to_array(inits[node.input[1]]))) if plain else None
