"""LiteRT target: a `.tflite` converted by litert-torch, run by the LiteRT interpreter (XNNPACK
delegate) in FP32, FP16 or full-integer INT8.

- fp32: the model as litert-torch converts it (its layout pass gives NHWC convs with fused
  ReLU6 and one input TRANSPOSE).
- fp16: the FP32 file with float16 weights (ai-edge-quantizer's float casting: FLOAT16 constants
  and a DEQUANTIZE each, LiteRT's standard FP16 format); compute stays float32 on CPUs without
  FP16 arithmetic.
- int8: the quantize stage's model, turned into a plain float model whose weights are exactly our
  integers times our scales, converted to FP32 and quantized by ai-edge-quantizer (static, int8
  per-channel symmetric weights, int8 asymmetric per-tensor activations) with a calibration result
  we write: every tensor one of our quantizers reads gets that quantizer's range (the union where
  several read it, and through the ops that keep their input's scale: PAD, TRANSPOSE, RESHAPE,
  pooling), every weight our scale, a residual sum also its whole min/max over all calibration
  samples (it is the residual stream as well as the next conv's input), and the other tensors
  (conv outputs feeding only Adds, logits, ...) the min/max over all calibration samples. Conv/FC
  ops are matched to our layers by
  their weights (same bytes after the layout transpose). Input and output stay float: the
  QUANTIZE/DEQUANTIZE at the edges run inside the interpreter (efficientnet-lite0: 2.4 ms vs 3.1 ms
  with the quantization in numpy).

Why not LiteRT's own routes (efficientnet-lite0, 366 photos, top-1 agreement with PyTorch FP32
all / confident, speed vs LiteRT FP32 at batch 1, 2 threads): litert-torch's PT2E INT8 0.64 / 0.81
at 0.82x (33 TRANSPOSE, 17 PAD and 33 Q/DQ more than FP32); ai-edge-quantizer's own static INT8
0.55 / 0.50 at 1.9x: its calibration averages per-sample ranges (int8 logits top out near 6.9
where FP32 reaches 12.1), and 103 BN-folded channels with all-zero or tiny (1e-8) weights overflow
the int32 bias (bias / (input scale * weight scale)), which the weight scales below avoid. This
route: 0.932 / 1.0, all integer (ONNX Runtime INT8 of the same model: 0.921 / 1.0), 2.0x faster
than LiteRT FP32, 3.5x smaller. Measured alternatives: residual sums clipped to the next conv's
range as in the stage's model, 0.918; a shared tensor with the reading conv's range only, 0.913
(0.891 on the calibration crops, union 0.906); with the residual conv's output range only, 0.904;
MSE-chosen ranges for the conv outputs feeding Adds, 0.918; float ADDs 0.932 but not full
integer; int16 ADDs 0.913 at half the speed (XNNPACK runs no int16).
"""
from __future__ import annotations

import collections
import contextlib
import copy
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compressor.core import quiet
from compressor.core.atomic import atomic_path
from compressor.core.interfaces import Context
from compressor.core.params import one_of
from compressor.errors import UserError
from compressor.modules.quant import QuantWrapper, float_dtype, is_quantized

MISSING = "LiteRT is not installed: pip install 'compressor[litert]'"
COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# ops ai-edge-quantizer gives their input's scale (its SAME_AS_INPUT_SCALE constraint): a range our
# quantizer needs on their output has to be set on their input
SAME_SCALE = ("PAD", "TRANSPOSE", "RESHAPE", "MAX_POOL_2D", "AVERAGE_POOL_2D", "SLICE", "STRIDED_SLICE",
              "SPLIT", "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR", "MIRROR_PAD", "SPACE_TO_DEPTH")
EDGE_OPS = ("QUANTIZE", "DEQUANTIZE")  # float input/output at the edges of an int8 graph, not compute
BIAS_BITS = 30  # int32 bias with one bit of headroom: bias / (input scale * weight scale) < 2^30


@dataclass
class LiteRtParams:
    precision: str = "auto"  # auto: what the pipeline leaves (int8 after a quantize stage, fp16, else fp32)
    threads: int = 0  # interpreter threads; 0 lets LiteRT choose

    def check(self):
        yield from one_of(self.precision, ("auto",) + LiteRtTarget.precisions, "precision")
        if self.threads < 0:
            yield "threads", f"must be >= 0, got {self.threads}"


@contextlib.contextmanager
def _quiet():
    """litert-torch, the LiteRT converter and interpreter and ai-edge-quantizer print progress bars
    and C++ INFO lines (to descriptors 1 and 2): into the run's log file (core/quiet.py)."""
    progress = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"  # litert-torch's own switch for its progress lines
    try:
        with quiet.Captured("litert"):
            yield
    finally:
        if progress is None:
            del os.environ["LITERT_TORCH_SHOW_PROGRESS"]
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = progress


def _names(enum) -> dict[int, str]:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_")}


class _Graph:
    """The main subgraph of a .tflite flatbuffer: ops by type name, tensors, producers."""

    def __init__(self, data: bytes):
        from ai_edge_litert import schema_py_generated as schema

        self.model = schema.ModelT.InitFromPackedBuf(data, 0)
        g = self.model.subgraphs[0]
        ops, types = _names(schema.BuiltinOperator), _names(schema.TensorType)
        codes = [ops[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in self.model.operatorCodes]
        self.ops = [(codes[op.opcodeIndex], op) for op in g.operators]
        self.tensors = g.tensors
        self.type = [types[t.type] for t in g.tensors]
        self.producer = {t: op for _, op in self.ops for t in op.outputs}
        self.kind = {id(op): kind for kind, op in self.ops}

    def name(self, t: int) -> str:
        return self.tensors[t].name.decode()

    def constant(self, t: int) -> np.ndarray | None:
        """A float32 constant's values (None for activations)."""
        buf = self.model.buffers[self.tensors[t].buffer]
        if buf.data is None or self.type[t] != "FLOAT32":
            return None
        return np.frombuffer(bytes(buf.data), np.float32).reshape(self.tensors[t].shape)

    def notes(self) -> dict:
        float_ops = collections.Counter(kind for kind, op in self.ops if kind not in EDGE_OPS and any(
            self.type[t].startswith("FLOAT") for t in op.outputs))
        return {"ops": dict(collections.Counter(kind for kind, _ in self.ops)),
                "tensor_types": dict(collections.Counter(self.type)), "float_ops": dict(float_ops)}

    def precision(self) -> str:
        weights = [self.type[op.inputs[1]] for kind, op in self.ops if kind in COMPUTE_OPS and len(op.inputs) > 1]
        return "int8" if "INT8" in weights else "fp16" if "FLOAT16" in self.type else "fp32"


class LiteRtEngine:
    """A LiteRT interpreter over a built .tflite, callable on a numpy batch of any size: one invoke
    per sample, since the file is converted at batch 1 and a Flatten's RESHAPE keeps that batch
    (resizing the input, where it works, was no faster on efficientnet-lite0)."""

    def __init__(self, path: Path, precision: str | None = None, threads: int = 0):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        with _quiet():  # XNNPACK's "Created delegate" line
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads or None)
            inp = self.interpreter.get_input_details()[0]
            if inp["shape"][0] != 1:
                self.interpreter.resize_tensor_input(inp["index"], [1, *inp["shape"][1:]])
            self.interpreter.allocate_tensors()
        self._in, self._out = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]
        self.precision = precision or _Graph(self.path.read_bytes()).precision()
        # XNNPACK, where it takes ops, shows as DELEGATE nodes (one per partition); no public API says it
        self.partitions = sum(op["op_name"] == "DELEGATE" for op in self.interpreter._get_ops_details())
        self.provider = "litert:xnnpack" if self.partitions else "litert:builtin"
        self.input_shape = [-1, *map(int, self._in["shape"][1:])]
        self.input_dtype = np.float32 if self._in["dtype"] in (np.int8, np.uint8) else np.dtype(self._in["dtype"]).type

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        run, outs = self.interpreter, []
        for i in range(len(x)):
            run.set_tensor(self._in["index"], _to_tensor(x[i:i + 1], self._in))
            run.invoke()
            outs.append(_from_tensor(run.get_tensor(self._out["index"]), self._out))
        return np.concatenate(outs)


def _to_tensor(x: np.ndarray, info: dict) -> np.ndarray:
    """Float input for a file with integer input (one built elsewhere; ours keep float edges)."""
    if info["dtype"] not in (np.int8, np.uint8):
        return x
    scale, zp = info["quantization"]
    limits = np.iinfo(info["dtype"])
    return np.clip(np.round(x / scale + zp), limits.min, limits.max).astype(info["dtype"])


def _from_tensor(y: np.ndarray, info: dict) -> np.ndarray:
    if info["dtype"] not in (np.int8, np.uint8):
        return y
    scale, zp = info["quantization"]
    return (y.astype(np.float32) - zp) * scale


class LiteRtTarget:
    """LiteRT .tflite: FP32, FP16 weights, full-integer INT8 with the quantize stage's ranges."""

    params: LiteRtParams
    precisions = ("fp32", "fp16", "int8")
    suffixes = (".tflite",)

    @staticmethod
    def requires(params: LiteRtParams | None = None) -> list[tuple[str, str]]:
        if not all(importlib.util.find_spec(m) for m in ("litert_torch", "ai_edge_litert", "ai_edge_quantizer")):
            return [("", MISSING)]
        return []

    def build(self, model: nn.Module, ctx: Context, out_dir: Path) -> LiteRtEngine:
        if self.requires():
            raise UserError(MISSING, key="target")
        p = self.params
        precision = p.precision if p.precision != "auto" else \
            "int8" if is_quantized(model) else "fp16" if float_dtype(model) == torch.float16 else "fp32"
        if (precision == "int8") != is_quantized(model):
            raise UserError(f"LiteRT {precision} needs {'a' if precision == 'int8' else 'no'} quantize stage "
                            "before it (int8 comes from the stage's fake-quantized model)", key="target.precision")
        if any(isinstance(m, QuantWrapper) and m.dynamic for m in model.modules()):
            raise UserError("LiteRT INT8 here is static (calibrated activations); dynamic INT8 runs on the "
                            "onnxruntime target", key="target.precision")
        float_model, wrappers = _float_model(model)
        example = ctx.data.example_input(1).float()
        with _quiet():
            import litert_torch

            data = litert_torch.convert(float_model, (example,)).model_content()
            if precision == "int8":
                data, info = _quantize_int8(data, float_model, wrappers, ctx, p.threads)
                ctx.notes.update(info)
            elif precision == "fp16":
                data = _fp16_weights(data)
        path = Path(out_dir) / "model.tflite"
        with atomic_path(path) as tmp:  # a killed run leaves no half-written file
            tmp.write_bytes(data)
        engine = LiteRtEngine(path, precision, p.threads)
        notes = _Graph(data).notes()
        if precision != "int8":
            del notes["float_ops"]
        elif sum(notes["float_ops"].values()) > ctx.notes["layers_float"]:  # more than the stage left in float
            ctx.log.warning("litert: ops still computing in float in the int8 build: %s", notes["float_ops"])
        ctx.notes.update(notes, delegate="XNNPACK" if engine.partitions else None,
                         delegate_partitions=engine.partitions)
        return engine

    @staticmethod
    def load(path: Path) -> LiteRtEngine:
        if LiteRtTarget.requires():
            raise UserError(MISSING, key="engine")
        return LiteRtEngine(Path(path))


def _float_model(model: nn.Module) -> tuple[nn.Module, dict[nn.Module, QuantWrapper]]:
    """A float32 copy with each QuantWrapper replaced by its layer, whose weight becomes our integers
    times our scales (so the converted file holds exactly the fake-quantized weights); returns the
    map from those layers to their wrappers."""
    model = copy.deepcopy(model).float().eval()
    wrappers = {}
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantWrapper):
            with torch.no_grad():
                scale = m.weight_scale.reshape(-1, *[1] * (m.inner.weight.dim() - 1))
                m.inner.weight.copy_(m.weight_integers() * scale)
            model.set_submodule(name, m.inner)
            wrappers[m.inner] = m
    return model, wrappers


def _weight_keys(layer: nn.Module) -> list[bytes]:
    """The bytes of the layer's weight in the layouts LiteRT stores: FULLY_CONNECTED (O, I),
    CONV_2D (O, *k, I), DEPTHWISE_CONV_2D (1, *k, O) (size-1 dimensions change no bytes)."""
    w = layer.weight.detach().float().numpy()
    if w.ndim == 2:
        return [w.tobytes()]
    keys = [np.ascontiguousarray(np.moveaxis(w, 1, -1)).tobytes()]
    if w.shape[1] == 1:
        keys.append(np.ascontiguousarray(np.moveaxis(w[:, 0], 0, -1)).tobytes())
    return keys


def _uint8_range(scale: torch.Tensor, zero_point: torch.Tensor) -> tuple[float, float]:
    """The float range of our uint8 grid; ai-edge-quantizer's int8 grid over it has the same scale
    and the zero point shifted by 128."""
    s, z = float(scale), int(zero_point)
    return -z * s, (255 - z) * s


def _quantize_int8(data: bytes, float_model: nn.Module, wrappers: dict, ctx: Context,
                   threads: int) -> tuple[bytes, dict]:
    from ai_edge_quantizer import calibrator, qtyping, quantizer, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    graph = _Graph(data)
    q = quantizer.Quantizer(data)
    q.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8)
    for edge in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):  # float input and output
        q.update_quantization_recipe(".*", edge, algorithm_key="no_quantize")

    # Calibration: min/max over all samples (ai-edge-quantizer's default averages per-sample ranges).
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(q.get_quantization_recipe())
    calib = calibrator.Calibrator(data, num_threads=threads or os.cpu_count() or 1,
                                  qsv_update_func=qsv_utils.min_max_update)
    signature, spec = next(iter(calib.get_signature_list().items()))
    samples = []  # one per invoke: the file has batch 1 (see LiteRtEngine)
    for x, _ in ctx.data.calib:
        samples += list(x.float().numpy()[:, None])
    if not samples:
        raise UserError("the calibration split is empty", key="data")
    calib.calibrate({signature: [{spec["inputs"][0]: x} for x in samples]}, manager)
    qsv = calib.get_model_qsvs()

    # Our ranges, on the tensors our quantizers read (through same-scale producers), united where shared.
    layers = {key: m for m in float_model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))
              for key in _weight_keys(m)}
    ranges: dict[int, tuple[float, float]] = {}

    def read(t: int, lo: float, hi: float) -> None:
        while True:
            old = ranges.get(t, (lo, hi))
            ranges[t] = min(old[0], lo), max(old[1], hi)
            op = graph.producer.get(t)
            if op is None or graph.kind[id(op)] not in SAME_SCALE:
                return
            t = op.inputs[0]

    matched, unmatched, float_layers = [], 0, 0
    for kind, op in graph.ops:
        if kind not in COMPUTE_OPS:
            continue
        w = graph.constant(op.inputs[1])
        layer = layers.get(w.tobytes()) if w is not None else None
        if layer is None:
            unmatched += 1
        elif layer not in wrappers:  # left in float by the stage (exclude, max_drop): float here too
            float_layers += 1
            scope = ";".join(graph.name(t) for t in op.outputs) + ";"
            q.update_quantization_recipe("^" + re.escape(scope) + "$", qtyping.TFLOperationName(kind),
                                         algorithm_key="no_quantize")
        else:
            wrapper = wrappers[layer]
            read(op.inputs[0], *_uint8_range(wrapper.act_scale, wrapper.act_zero_point))
            if wrapper.quantize_output:
                read(op.outputs[0], *_uint8_range(wrapper.out_scale, wrapper.out_zero_point))
            matched.append((kind, op, wrapper))
    if unmatched:
        ctx.log.warning("litert: %d conv/linear ops of the converted graph match no layer of the model; "
                        "they are quantized with calibrated ranges", unmatched)
    # A residual sum (an ADD's output) is both the stream the next block adds to and the input of the
    # conv that reads it. In the stage's model, as in ONNX Runtime's and ExecuTorch's engines, only the
    # conv's input is clipped to our range and the stream stays float; here one int8 tensor is both,
    # so it also holds the sum's whole calibrated range (efficientnet-lite0: the stream reaches -64
    # where the convs' ranges clip at -32; agreement with FP32 0.918 -> 0.932, all integer).
    widened_sums = 0
    for kind, op in graph.ops:
        t = op.outputs[0]
        if kind == "ADD" and t in ranges and graph.name(t) in qsv:
            seen = qsv[graph.name(t)]
            lo, hi = min(ranges[t][0], float(np.min(seen["min"]))), max(ranges[t][1], float(np.max(seen["max"])))
            widened_sums += (lo, hi) != ranges[t]
            ranges[t] = lo, hi
    for t, (lo, hi) in ranges.items():
        shape = qsv[graph.name(t)]["min"].shape if graph.name(t) in qsv else (1,) * len(graph.tensors[t].shape)
        qsv[graph.name(t)] = {"min": np.full(shape, lo, np.float32), "max": np.full(shape, hi, np.float32)}

    # Weights on our grid: bound 127 * scale gives back our scale, hence our integers. A channel whose
    # bias would not fit int32 at input scale x weight scale (all-zero or tiny weights: BN-folded dead
    # channels) gets the smallest scale where it fits; its few nonzero weights round to ~0.
    widened = 0
    for kind, op, wrapper in matched:
        lo, hi = ranges[op.inputs[0]]
        bias = wrapper.inner.bias
        fit = (bias.detach().float().abs() if bias is not None else torch.zeros_like(wrapper.weight_scale)) \
            / ((hi - lo) / 255 * 2 ** BIAS_BITS)
        scale = torch.maximum(wrapper.weight_scale.float(), fit)
        widened += int((fit > wrapper.weight_scale).sum())
        shape = [1] * len(graph.tensors[op.inputs[1]].shape)
        shape[-1 if kind == "DEPTHWISE_CONV_2D" else 0] = -1
        bound = (127 * scale).numpy().astype(np.float32).reshape(shape)
        qsv[graph.name(op.inputs[1])] = {"min": -bound, "max": bound}

    result = q.quantize(qsv, enable_progress_bar=False, enable_progress_report=False)
    info = {"calibration_samples": len(samples), "stage_ranges": len(ranges),
            "layers_matched": len(matched), "layers_float": float_layers, "layers_unmatched": unmatched,
            "bias_widened_weight_channels": widened, "residual_sums_widened": widened_sums}
    return bytes(result.quantized_model), info


def _fp16_weights(data: bytes) -> bytes:
    """FLOAT16 weights with a DEQUANTIZE each (ai-edge-quantizer's float casting)."""
    from ai_edge_quantizer import qtyping, quantizer

    q = quantizer.Quantizer(data)
    q.add_weight_only_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 16, algorithm_key="float_casting")
    return bytes(q.quantize(enable_progress_bar=False, enable_progress_report=False).quantized_model)
