"""OpenVINO target: the same ONNX export as ONNX Runtime, read by OpenVINO's ONNX frontend and
saved as OpenVINO IR (model.xml + model.bin); run with OpenVINO on the requested device, and
record which layers the device actually runs in which precision.

- fp32: float weights kept as they are (no FP16 compression of the IR), and the inference
  precision pinned to f32 (CPUs with AMX default to bf16, which would not be FP32).
- int8: the quantize stage's Q/DQ export. OpenVINO reads activation Q/DQ pairs as FakeQuantize
  and int8 weights as i8 constants; its low-precision transformations then run Convolution and
  FullyConnected with u8 activations x i8 weights (`kernels()` shows `Convolution:u8`).
- fp16: the honest FP16 on a CPU is the weights. The IR keeps the pipeline's FP16 weights (and
  FP16 inputs and outputs, as the ONNX export has them); the inference precision hint asks for
  f16 compute only where the device lists FP16 among its optimization capabilities (ARM, Xeon
  with AMX-FP16). Elsewhere (AVX2/AVX-512 x86, this CI machine) OpenVINO computes those layers in
  f32 on the FP16 weights; the engine's `inference_precision` and `kernels()` say which it was.

Why `core.read_model(model.onnx)` and not `ov.convert_model`: both use the same ONNX frontend,
but convert_model sends OpenVINO's usage telemetry. So does a plain `import openvino` (it writes
~/intel/openvino_ga_cid and a usage counter, and posts an event), and a run must touch nothing
outside its folder: `import_openvino` imports it with the telemetry package hidden, which takes
OpenVINO's own fallback for a missing openvino-telemetry (a no-op stub).
"""
from __future__ import annotations

import collections
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from compressor.errors import UserError
from compressor.core.interfaces import Context
from compressor.models.causal_lm import is_causal_lm
from compressor.core.params import one_of
from compressor.modules.quant import needs_reduce_range
from compressor.targets.onnx.export import export_onnx
from compressor.targets.openvino_import import MISSING, _available, import_openvino  # noqa: F401 (re-exported)

DEVICES = ("CPU", "GPU", "NPU")
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")
INTEGER_PRECISIONS = ("u8", "i8")
_NOT_LAYERS = ("Const", "Input", "Output")  # runtime graph nodes that compute nothing
_RT_KEY = ["compressor", "precision"]  # where the IR's rt_info records what this target built


@dataclass
class OpenVinoParams:
    precision: str = "auto"  # auto: what the pipeline leaves (int8 after a quantize stage, else fp32)
    device: str = "CPU"  # an OpenVINO device present on this machine (only CPU is tested here)
    threads: int = 0  # inference threads; 0 lets OpenVINO choose

    def check(self):
        yield from one_of(self.precision, ("auto",) + OpenVinoTarget.precisions, "precision")
        yield from one_of(self.device, DEVICES, "device")
        if self.threads < 0:
            yield "threads", f"must be >= 0, got {self.threads}"


class OvEngine:
    """A compiled OpenVINO model over a built model.xml, callable on a numpy batch."""

    def __init__(self, path: Path, device: str = "CPU", threads: int = 0, precision: str = "fp32"):
        ov = import_openvino()
        props, hints = ov.properties, ov.properties.hint
        self.path, self.precision = Path(path), precision
        core = ov.Core()
        if not any(d.split(".")[0] == device.split(".")[0] for d in core.available_devices):
            raise UserError(f"OpenVINO here has no {device} device (available: {', '.join(core.available_devices)})",
                            key="target.device")
        half = precision == "fp16" and "FP16" in core.get_property(device, props.device.capabilities())
        config = dict([hints.inference_precision(ov.Type.f16 if half else ov.Type.f32)])
        if threads:
            config.update([props.inference_num_threads(threads)])
        self.compiled = core.compile_model(core.read_model(str(self.path)), device, config)
        self.request = self.compiled.create_infer_request()
        self.provider = f"openvino:{device}"
        # what float layers are computed in: f32, or f16 for an fp16 build on a device with FP16 arithmetic
        self.inference_precision = self.compiled.get_property(hints.inference_precision()).get_type_name()
        first = self.compiled.input(0)
        self.input_shape = [d.get_length() if d.is_static else -1 for d in first.get_partial_shape()]
        self.input_dtype = np.dtype(first.get_element_type().to_dtype()).type

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer({0: np.ascontiguousarray(x, dtype=self.input_dtype)})[0]

    def kernels(self) -> dict[str, int]:
        """`layer:precision` counts of the graph the device actually runs, after OpenVINO's
        transformations (`Convolution:u8` = an integer convolution; constants left out)."""
        counts: collections.Counter = collections.Counter()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str)
            if kind not in _NOT_LAYERS:
                counts[f"{kind}:{info['runtimePrecision'].astype(str)}"] += 1
        return dict(sorted(counts.items()))


def integer_layers(kernels: dict[str, int]) -> int:
    """How many Convolution / FullyConnected / MatMul layers run in u8 or i8."""
    return sum(n for k, n in kernels.items()
               if k.split(":")[0] in COMPUTE_LAYERS and k.split(":")[-1] in INTEGER_PRECISIONS)


class OpenVinoTarget:
    """OpenVINO IR (model.xml + model.bin): FP32, INT8 from Q/DQ (integer kernels), FP16 weights."""

    params: OpenVinoParams
    # weight-only INT8/INT4 and W8A8 for causal LMs only (compressed-weight MatMuls, targets/llm_openvino.py)
    precisions = ("fp32", "int8", "fp16", "int8_weight_only", "int4_weight_only", "int8_w8a8")
    suffixes = (".xml",)

    @staticmethod
    def requires(params: OpenVinoParams | None = None) -> list[tuple[str, str]]:
        if not _available():
            return [("", MISSING)]
        device = getattr(params, "device", "CPU")
        if device != "CPU":  # the CPU plugin ships in the wheel; others need drivers and hardware
            ov = import_openvino()
            present = ov.Core().available_devices
            if not any(d.split(".")[0] == device for d in present):
                return [("device", f"OpenVINO here has no {device} device (available: {', '.join(present)})")]
        return []

    def build(self, model: nn.Module, ctx: Context, out_dir: Path) -> OvEngine:
        p = self.params
        if is_causal_lm(model):
            from compressor.targets.llm_openvino import OvLlmSession, compressed_weights, export_llm_openvino

            xml = export_llm_openvino(model, Path(out_dir))
            ctx.notes["constant_bytes_by_type"] = compressed_weights(xml)
            return OvLlmSession(Path(out_dir), p.threads, p.device)
        if p.precision not in ("fp32", "int8", "fp16"):
            raise UserError(f"OpenVINO engines of precision {p.precision} are built for causal language models "
                            "(model.task: causal_lm); for this model use target onnxruntime", key="target.precision")
        ov = import_openvino()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".openvino-", dir=out_dir))  # same filesystem: atomic renames
        try:
            with tempfile.TemporaryDirectory() as tmp:  # the ONNX file is a step, not an artifact
                # x86 CPUs without VNNI: oneDNN's u8 x s8 kernels saturate on 8-bit weights of 1x1 convs and
                # Linear (efficientnet-lite0: parity 0.49); stored as uint8 they are dequantized and run in
                # f32 (exact, not faster). 7-bit weights (the stage's reduce_range: auto) stay integer.
                onnx_path = export_onnx(model, ctx.example_input, Path(tmp) / "model.onnx",
                                        uint8_weights=p.device == "CPU" and needs_reduce_range())
                ov_model = ov.Core().read_model(str(onnx_path))
                ov_model.set_rt_info(p.precision, _RT_KEY)
                # compress_to_fp16 only for fp16: FP32 weights stay FP32, INT8 scales stay f32
                ov.save_model(ov_model, str(staging / "model.xml"), compress_to_fp16=p.precision == "fp16")
            os.replace(staging / "model.bin", out_dir / "model.bin")
            os.replace(staging / "model.xml", out_dir / "model.xml")  # last: its presence means complete
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        engine = OvEngine(out_dir / "model.xml", p.device, p.threads, p.precision)
        kernels = engine.kernels()
        ctx.notes["kernels"] = kernels
        ctx.notes["integer_kernels"] = integer_layers(kernels)
        ctx.notes["inference_precision"] = engine.inference_precision
        if p.precision == "int8" and not ctx.notes["integer_kernels"]:
            ctx.log.warning("openvino: no Convolution/FullyConnected layer runs in integers on %s: %s", p.device, kernels)
        return engine

    @staticmethod
    def load(path: Path, device: str = "CPU", threads: int = 0) -> OvEngine:
        if not _available():
            raise UserError(MISSING, key="engine")
        if (Path(path).parent / "llm.json").is_file():  # a language model with its KV cache and tokenizer
            from compressor.targets.llm_openvino import OvLlmSession

            return OvLlmSession(Path(path).parent, threads, device)
        ov = import_openvino()
        model = ov.Core().read_model(str(path))
        if model.has_rt_info(_RT_KEY):
            precision = model.get_rt_info(_RT_KEY).astype(str)
        else:  # an IR built elsewhere: judge from its ops
            ops = {op.get_type_name() for op in model.get_ops()}
            half = any(op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.f16
                       for op in model.get_ops())
            precision = "int8" if "FakeQuantize" in ops else "fp16" if half else "fp32"
        return OvEngine(Path(path), device, threads, precision)
