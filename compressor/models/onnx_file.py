"""An ONNX file as the model (the route from TensorFlow/Keras via tf2onnx, scikit-learn via
skl2onnx, or any exporter), converted to PyTorch by onnx2torch so that every stage applies.
Needs `pip install 'compressor[onnx-source]'`.

What happens, in order:
- the file is checked as data (external data must lie inside its folder: compressor.core.untrusted)
  and its graph cut to the one output the model returns (`output`: e.g. a scikit-learn
  classifier's `probabilities`, leaving its `label` branch and the ops only that branch uses);
- every op is looked up in onnx2torch's converter registry first, so an op it cannot convert is
  named in one line (with its domain and opset) instead of a traceback from inside the converter.
  A file of a newer opset than onnx2torch knows is first converted to an older one by onnx's
  version converter (the newest of 17..13 at which every op converts);
- the graph is rewritten, each rewrite computing the same thing, so that the stages find the
  layers they act on (quantize and prune stages see nn.Conv*/nn.Linear only; onnx2torch makes
  nn.Linear from a Gemm with constant weights, but keeps a MatMul as a matmul on a buffer, and
  reads a Conv's weights from initializers only):
  * Constant nodes, and Identity nodes of initializers (torch.onnx writes those), become initializers;
  * Conv -> Mul -> Add with per-channel constants (a Keras BatchNormalization as tf2onnx writes
    it) is folded into the conv's weights and bias;
  * Keras' Flatten as tf2onnx writes it, [Transpose to channels-last] + Reshape to (-1, K) (K a
    constant, or computed at run time), before a MatMul/Gemm with constant weights, becomes
    Flatten(axis=1), the transpose folded into the weights' row order: K would otherwise break as
    soon as pruning removes channels, and channels-first order is what Torch-Pruning maps;
  * MatMul(x, constant 2-D weights) [+ Add(constant bias)] on a 2-D x becomes Gemm (tf2onnx and
    skl2onnx write dense layers that way);
- after conversion, onnx2torch's constant-shape Reshapes become torch.reshape calls (see
  `plain_reshapes`) and every weight is made contiguous;
- the converted module is run beside ONNX Runtime on the ORIGINAL file, on a few deterministic
  random inputs; the result is `model.source_parity` (for the report), and a relative error above
  1e-4 is an error: a converter bug must not pass silently.

Layers keep the ONNX node names (onnx2torch replaces dots with slashes, e.g.
`sequential_1/conv2d_1/BiasAdd`); a dense layer made from a MatMul is named after that node. The
build is deterministic, so a checkpoint rebuilds by converting the file again and loading the
state dict (constants the graph reads live in it as `initializers.onnx_initializer_N`)."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper, shape_inference, version_converter
from torch import nn

from compressor.core.files import file_problem
from compressor.core.untrusted import check_onnx_external_data
from compressor.errors import UserError, did_you_mean

MISSING = "needs onnx2torch: pip install 'compressor[onnx-source]'"
MAX_RELATIVE_ERROR = 1e-4  # float32 conversions measure ~1e-7; a wrong op or layout is > 1e-2
PARITY_BATCHES = (1, 2, 4)  # batch sizes of the parity inputs where the batch dimension is free
# opsets tried (newest first) when onnx2torch lacks an op at the file's opset: it registers most
# ops at their versions up to opset 17, so e.g. torch.onnx's opset-20 Identity converts at 17
OLDER_OPSETS = (17, 16, 15, 14, 13)
FREE_DIM = 32  # size given to any other symbolic dimension (image side, sequence length)


@dataclass
class OnnxParams:
    path: str = "???"  # the .onnx file (its external data, if any, must lie in its folder)
    output: str = ""  # the graph output (or any tensor) the model returns; empty: the first graph output

    def check(self):
        if importlib.util.find_spec("onnx2torch") is None:
            yield "kind", MISSING
            return
        if not self.path:
            yield "path", "give the ONNX file to compress"
        elif not self.path.lower().endswith(".onnx"):
            yield "path", f"expected an .onnx file, got {self.path}"
        elif problem := file_problem(self.path, ("onnx",)):
            yield "path", problem
        else:
            try:  # the graph alone (no weights): unreadable files, wrong outputs, unsupported ops
                _cut(_read(self.path, weights=False), self.path, self.output)
            except UserError as e:
                yield from ((p.key.removeprefix("model."), p.message) for p in e.problems)


def build(params: OnnxParams, load_weights: bool = True) -> nn.Module:
    """An ONNX file from any exporter (tf2onnx, skl2onnx, ...) converted to PyTorch by onnx2torch.
    Returns an fx GraphModule with `source_parity` set; `load_weights=False` (a checkpoint rebuilding
    it) skips the parity run, since the checkpoint's state dict replaces the weights."""
    try:
        import onnx2torch
    except ImportError as e:
        raise UserError(MISSING, key="model.kind") from e

    original = _read(params.path, weights=True)
    cut, output = _cut(original, params.path, params.output)
    rewritten = rewrite_for_stages(cut)
    try:
        model = onnx2torch.convert(rewritten)
    except Exception as e:  # a converter that exists but refuses this node's attributes
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{params.path}: onnx2torch could not convert it: {type(e).__name__}: {first}",
                        key="model.path") from e
    with torch.no_grad():  # onnx2torch stores Gemm weights as transposed views: torch.nn.utils.prune needs .view(-1)
        for t in [*model.parameters(), *model.buffers()]:
            t.data = t.data.contiguous()
    plain_reshapes(model)
    model.eval()
    if load_weights:
        reference = params.path if _same_interface(original, cut, output) else cut
        model.source_parity = source_parity(model, reference, output, params.path)
        # GraphModule's deepcopy (the runner's teacher copy) keeps only the attributes listed here
        model.meta.setdefault(torch.fx.graph_module._USER_PRESERVED_ATTRIBUTES_KEY, {})["source_parity"] = \
            model.source_parity
    return model


# ---------------------------------------------------------------- reading and cutting


def _read(path: str, weights: bool):
    check_onnx_external_data(path, key="model.path")  # also refuses a file that is not ONNX
    try:
        return onnx.load(str(path), load_external_data=weights)
    except Exception as e:  # external data that is damaged or too short
        raise UserError(f"{path}: cannot read it ({type(e).__name__})", key="model.path") from e


def _cut(model, path: str, output: str):
    """A copy of `model` that computes `output` only (its first graph output when empty), with the
    nodes, inputs and initializers that output needs. Returns (cut model, output name)."""
    graph = model.graph
    outputs = [o.name for o in graph.output]
    produced = {v for n in graph.node for v in n.output} | {i.name for i in graph.input}
    if output and output not in produced:
        raise UserError(f"{path} has no tensor {output!r}{did_you_mean(output, outputs)}; "
                        f"graph outputs: {', '.join(outputs)}", key="model.output")
    if not outputs and not output:
        raise UserError(f"{path} has no graph output", key="model.path")
    output = output or outputs[0]
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    if output not in {v.name for v in [*graph.input, *graph.value_info, *graph.output]}:
        try:  # an inner tensor: its type from shape inference, so that the cut graph's output is typed
            inferred = shape_inference.infer_shapes(model).graph.value_info
            cut.graph.value_info.extend(v for v in inferred if v.name == output)
        except Exception:  # onnx raises its own error types; an untyped output still converts
            pass
    keep_only(cut.graph, output)
    inputs = [i.name for i in cut.graph.input]
    if len(inputs) != 1:
        raise UserError(f"{path}: output {output!r} needs {len(inputs)} inputs ({', '.join(inputs) or 'none'}); "
                        "this model source takes a model with one input", key="model.path")
    unsupported = unconvertible(cut)
    if unsupported:  # ops of a newer opset than onnx2torch registers: the same graph at an older opset may do
        older = _older_opset(cut) if any(not domain for _, domain, _ in unsupported) else None
        if older is not None:
            return older, output
        clean = [o for o in outputs if o != output and not unconvertible(_only(model, o))]
        hint = (f"cut the graph before it with model.output={clean[0]}" if clean else
                "cut the graph before it with model.output=TENSOR, or export the model without it")
        ops = ", ".join(f"{op} (domain {domain or 'ai.onnx'}, opset {version})" for op, domain, version in unsupported[:3])
        raise UserError(f"{path}: onnx2torch cannot convert op{'s' if len(unsupported) > 1 else ''} {ops}; {hint}",
                        key="model.path")
    return cut, output


def _older_opset(model):
    """`model` converted by onnx's version converter to the newest opset (of OLDER_OPSETS) at which
    onnx2torch converts every op, or None."""
    current = _opsets(model).get("", 1)
    for opset in (o for o in OLDER_OPSETS if o < current):
        try:
            older = version_converter.convert_version(model, opset)
        except Exception:  # an op without a down-converter (onnx raises its own error types)
            continue
        if not unconvertible(older):
            return older
    return None


def _only(model, output: str):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    keep_only(copy.graph, output)
    return copy


def keep_only(graph, output: str) -> None:
    """Remove from `graph` (in place) what `output` does not depend on; `output` becomes its one output."""
    needed, nodes = {output}, []
    for node in reversed(graph.node):
        if needed & set(node.output):
            nodes.append(node)
            needed |= {v for v in node.input if v} | _outer_names(node)
    value_info = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
    initializers = [t for t in graph.initializer if t.name in needed]
    constants = {t.name for t in initializers}  # IR < 4 lists initializers among the inputs too
    kept = {"node": nodes[::-1], "initializer": initializers,
            "input": [i for i in graph.input if i.name in needed and i.name not in constants],
            "output": [value_info.get(output) or helper.make_empty_tensor_value_info(output)]}
    for field, values in kept.items():
        values = [type(v).FromString(v.SerializeToString()) for v in values]  # copies: the field is emptied next
        del getattr(graph, field)[:]
        getattr(graph, field).extend(values)


def _outer_names(node) -> set[str]:
    """Names a node's subgraphs (If, Loop, Scan bodies) read from the enclosing graph."""
    names: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for n in g.node:
                names |= {v for v in n.input if v} | _outer_names(n)
    return names


def _opsets(model) -> dict[str, int]:
    return {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}


def convertible(op: str, domain: str, version: int) -> bool:
    """Whether onnx2torch's converter registry holds this op at this opset (its own lookup)."""
    from onnx2torch.node_converters.registry import get_converter

    try:
        get_converter(operation_type=op, version=version, domain=domain)
        return True
    except NotImplementedError:
        return False


def unconvertible(model) -> list[tuple[str, str, int]]:
    """(op, domain, opset) of each op in the graph onnx2torch has no converter for, in graph order."""
    opsets, found = _opsets(model), []
    for node in model.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        key = (node.op_type, domain, opsets.get(domain, 1))
        if key not in found and not convertible(*key):
            found.append(key)
    return found


# ---------------------------------------------------------------- rewrites


def rewrite_for_stages(model):
    """The rewrites of the module docstring, on a copy of `model` (the cut graph)."""
    model = type(model).FromString(model.SerializeToString())
    _constants_as_initializers(model.graph)
    _affine_into_conv(model.graph)
    opset = _opsets(model).get("", 1)
    if convertible("Flatten", "", opset):
        _flatten_before_dense(model.graph, _shapes(model))
    if convertible("Gemm", "", opset):
        _matmul_add_to_gemm(model.graph, _shapes(model))
    output = model.graph.output[0].name
    keep_only(model.graph, output)  # drops the shape arithmetic the flatten no longer reads
    return model


def _constants_as_initializers(graph) -> None:
    """Constant nodes, and Identity nodes of an initializer (torch.onnx writes those for tensors
    used twice), become plain initializers: onnx2torch reads a Conv's or Gemm's weights only from
    initializers, and fails on a KeyError otherwise."""
    outputs = {o.name for o in graph.output}
    initializers = {t.name for t in graph.initializer}
    for node in list(graph.node):
        name = node.output[0] if node.output else ""
        if name in outputs:
            continue
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and \
                [a.name for a in node.attribute] == ["value"]:
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t), name))
        elif node.op_type == "Identity" and node.input[0] in initializers:
            for user in _consumers(graph, name):
                user.input[:] = [node.input[0] if v == name else v for v in user.input]
        else:
            continue
        graph.node.remove(node)
        initializers.add(name)


def _affine_into_conv(graph) -> None:
    """Conv -> Mul(constant per-channel scale) -> Add(constant per-channel shift), in any number
    and order, folded into the conv's weights and bias. tf2onnx writes a Keras 3 BatchNormalization
    that way; left apart, the INT8 engine keeps the conv in float (its output feeds a float Mul)
    and structured pruning cannot shrink the constants with the channels."""
    outputs = {o.name for o in graph.output}
    initializers = {t.name: t for t in graph.initializer}
    for conv in [n for n in graph.node if n.op_type == "Conv" and n.domain in ("", "ai.onnx")]:
        w = initializers.get(conv.input[1]) if len(conv.input) > 1 else None
        if w is None or w.data_type != TensorProto.FLOAT:
            continue
        weight = numpy_helper.to_array(w).copy()
        has_bias = len(conv.input) > 2 and conv.input[2] in initializers
        if len(conv.input) > 2 and not has_bias:
            continue
        bias = numpy_helper.to_array(initializers[conv.input[2]]).copy() if has_bias else np.zeros(len(weight), np.float32)
        channel = (1, len(weight)) + (1,) * (weight.ndim - 2)  # the shape a per-channel constant broadcasts to
        folded = 0
        while True:
            users = _consumers(graph, conv.output[0])
            if len(users) != 1 or conv.output[0] in outputs or users[0].op_type not in ("Mul", "Add"):
                break
            op = users[0]
            other = [v for v in op.input if v != conv.output[0]]
            t = initializers.get(other[0]) if len(other) == 1 else None
            if t is None or t.data_type != TensorProto.FLOAT:
                break
            value = numpy_helper.to_array(t)
            if value.ndim > len(channel) or np.broadcast_shapes(value.shape, channel) != channel:
                break  # not per-channel (it would broadcast the conv's output to another shape)
            value = np.broadcast_to(value, channel).reshape(-1)
            if op.op_type == "Mul":
                weight *= value.reshape(-1, *([1] * (weight.ndim - 1)))
                bias *= value
            else:
                bias += value
            conv.output[0] = op.output[0]
            graph.node.remove(op)
            folded += 1
        if folded:
            conv.input[1:] = [_add_initializer(graph, weight, f"{conv.input[1]}/folded_{conv.output[0]}"),
                              _add_initializer(graph, bias, f"{conv.output[0]}/folded_bias")]


def _shapes(model) -> dict[str, list]:
    """Inferred shape of each value (ints, or None for a symbolic dim); values of unknown rank absent."""
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # shape inference fails on some custom graphs: then nothing is rewritten
        return {}
    shapes = {}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for t in inferred.graph.initializer:
        shapes[t.name] = list(t.dims)
    return shapes


def _float_matrix(graph, name: str):
    """The initializer `name` as a float32 2-D array, or None."""
    t = next((t for t in graph.initializer if t.name == name), None)
    if t is None or t.data_type != TensorProto.FLOAT or len(t.dims) != 2:
        return None
    return numpy_helper.to_array(t)


def _add_initializer(graph, array: np.ndarray, name: str) -> str:
    if name not in {t.name for t in graph.initializer}:  # the same weights read by two layers: made once
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
    return name


def _consumers(graph, value: str) -> list:
    return [n for n in graph.node if value in n.input]


def _attr(node, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _flatten_before_dense(graph, shapes: dict) -> None:
    """[Transpose(perm[0] = 0)] -> Reshape -> MatMul/Gemm(constant W) where the reshape's data has
    static sizes (batch, d1..dk) and W reads K = d1*..*dk features: the reshape can only give
    (batch, K), so it is Flatten(axis=1), the transpose folded into W's rows."""
    outputs = {o.name for o in graph.output}
    for reshape in [n for n in graph.node if n.op_type == "Reshape"]:
        data = shapes.get(reshape.input[0])
        users = _consumers(graph, reshape.output[0])
        if not data or len(data) < 3 or None in data[1:] or len(users) != 1 or reshape.output[0] in outputs:
            continue
        dense = users[0]
        if dense.op_type not in ("MatMul", "Gemm") or dense.input[0] != reshape.output[0] or \
                (dense.op_type == "Gemm" and _attr(dense, "transA", 0)):
            continue
        w = _float_matrix(graph, dense.input[1])
        trans_b = dense.op_type == "Gemm" and _attr(dense, "transB", 0)
        features = int(np.prod(data[1:]))
        if w is None or (w.shape[1] if trans_b else w.shape[0]) != features:
            continue
        source = reshape.input[0]
        producer = next((n for n in graph.node if source in n.output), None)
        if producer is not None and producer.op_type == "Transpose" and len(_consumers(graph, source)) == 1 \
                and source not in outputs:
            perm = list(_attr(producer, "perm", []))
            before = shapes.get(producer.input[0])
            if perm and perm[0] == 0 and before and len(before) == len(perm) and None not in before[1:]:
                # W's rows are in the transposed (e.g. channels-last) order: put them in the input's order
                rows = w.T if trans_b else w
                rows = rows.reshape(*[before[p] for p in perm[1:]], -1)
                rows = rows.transpose(*np.argsort(perm[1:]), rows.ndim - 1).reshape(features, -1)
                dense.input[1] = _add_initializer(graph, rows.T if trans_b else rows,
                                                  f"{dense.input[1]}/rows_in_{'x'.join(map(str, perm))}_order")
                source = producer.input[0]
        flatten = helper.make_node("Flatten", [source], [reshape.output[0]], name=reshape.name or None, axis=1)
        graph.node.insert(list(graph.node).index(reshape), flatten)
        graph.node.remove(reshape)


def _matmul_add_to_gemm(graph, shapes: dict) -> None:
    """MatMul(x, constant W) on a 2-D x, and the Add of a constant bias right after it, as one Gemm."""
    outputs = {o.name for o in graph.output}
    initializers = {t.name: t for t in graph.initializer}
    for matmul in [n for n in graph.node if n.op_type == "MatMul"]:
        x = shapes.get(matmul.input[0])
        w = _float_matrix(graph, matmul.input[1])
        if w is None or not x or len(x) != 2 or matmul.input[0] in initializers:
            continue
        inputs, out, add = [matmul.input[0], matmul.input[1]], matmul.output[0], None
        users = _consumers(graph, out)
        if len(users) == 1 and users[0].op_type == "Add" and out not in outputs:
            other = [v for v in users[0].input if v != out]
            bias = numpy_helper.to_array(initializers[other[0]]) if len(other) == 1 and other[0] in initializers else None
            if bias is not None and bias.dtype == np.float32 and bias.size == w.shape[1] and \
                    bias.shape in ((w.shape[1],), (1, w.shape[1])):
                inputs.append(_add_initializer(graph, bias.reshape(-1), f"{other[0]}/1d"))
                add, out = users[0], users[0].output[0]
        gemm = helper.make_node("Gemm", inputs, [out], name=matmul.name or None)
        graph.node.insert(list(graph.node).index(matmul), gemm)
        graph.node.remove(matmul)
        if add is not None:
            graph.node.remove(add)


def plain_reshapes(model: torch.fx.GraphModule) -> int:
    """onnx2torch's Reshape takes its shape as a tensor and branches on its values, which torch.fx
    cannot trace; the INT8 stage traces the model to fold BatchNorms and find residual Adds (and
    leaves both undone where tracing fails). A reshape to a constant shape with no 0 (copy-a-dim)
    becomes torch.reshape with that shape as ints, computing the same. Returns how many."""
    from onnx2torch.node_converters.reshape import OnnxReshape

    done = 0
    for node in list(model.graph.nodes):
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), OnnxReshape):
            continue
        shape = node.args[1] if len(node.args) == 2 else None
        if not (isinstance(shape, torch.fx.Node) and shape.op == "get_attr"):
            continue
        values = [int(v) for v in model.get_buffer(shape.target).reshape(-1)]
        if 0 in values:
            continue
        with model.graph.inserting_before(node):
            plain = model.graph.call_function(torch.reshape, (node.args[0], tuple(values)))
        node.replace_all_uses_with(plain)
        model.graph.erase_node(node)
        model.delete_submodule(node.target)
        done += 1
    if done:
        model.graph.eliminate_dead_code()  # the shape's get_attr; its buffer stays in the state dict
        model.recompile()
    return done


# ---------------------------------------------------------------- parity with the original


def _same_interface(original, cut, output: str) -> bool:
    """ONNX Runtime can run the original file for this output: a graph output, same single input."""
    return output in {o.name for o in original.graph.output} and \
        [i.name for i in original.graph.input if i.name not in {t.name for t in original.graph.initializer}] == \
        [i.name for i in cut.graph.input]


NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
               "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def parity_inputs(shape: list, type_name: str, seed: int = 0) -> list[np.ndarray]:
    """Deterministic random inputs for a graph input of this shape (ints; names or None where
    symbolic) and ONNX Runtime type: batch sizes 1, 2, 4 where the batch dimension is free (its
    fixed size, three times, where it is not), other free dimensions FREE_DIM; normal floats,
    integers in {0, 1} (valid token ids for any vocabulary)."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    dtype = NUMPY_TYPES.get(type_name, np.float32)
    rng = np.random.default_rng(seed)
    out = []
    for batch in PARITY_BATCHES if not dims or dims[0] is None else (dims[0],) * 3:
        size = [batch, *[d or FREE_DIM for d in dims[1:]]] if dims else []
        if np.issubdtype(dtype, np.floating):
            out.append(rng.standard_normal(size).astype(dtype))
        else:
            out.append(rng.integers(0, 2, size).astype(dtype))
    return out


def source_parity(module: nn.Module, reference, output: str, path: str) -> dict:
    """Relative error ||torch - onnxruntime|| / ||onnxruntime|| over all outputs of the converted
    module and ONNX Runtime running `reference` (the original file's path, or the graph cut from it
    where the output is an inner tensor) on `parity_inputs`."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        session = ort.InferenceSession(reference if isinstance(reference, str) else reference.SerializeToString(),
                                       so, providers=["CPUExecutionProvider"])
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{path}: ONNX Runtime cannot run it, so the conversion cannot be checked: {first}",
                        key="model.path") from e
    graph_input = session.get_inputs()[0]
    inputs = parity_inputs(graph_input.shape, graph_input.type)
    diffs, refs = [], []
    with torch.no_grad():
        for x in inputs:
            ref = np.asarray(session.run([output], {graph_input.name: x})[0], dtype=np.float64)
            out = module(torch.from_numpy(x)).detach().double().numpy()
            if out.shape != ref.shape:
                raise UserError(f"{path}: the converted model returns shape {list(out.shape)} where ONNX Runtime "
                                f"returns {list(ref.shape)}: onnx2torch converted it wrongly", key="model.path")
            diffs.append((out - ref).reshape(-1))
            refs.append(ref.reshape(-1))
    diff, ref = np.concatenate(diffs), np.concatenate(refs)
    rel = float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30))
    parity = {"statistic": "relative_error", "value": rel, "max_abs": float(np.abs(diff).max(initial=0.0)),
              "samples": sum(len(x) for x in inputs), "runtime": f"onnxruntime {ort.__version__}"}
    if not rel <= MAX_RELATIVE_ERROR:  # NaN fails too
        raise UserError(f"{path}: the converted model differs from the ONNX file run by ONNX Runtime "
                        f"(relative error {rel:.3g} > {MAX_RELATIVE_ERROR:g}): an onnx2torch conversion bug",
                        key="model.path")
    return parity
