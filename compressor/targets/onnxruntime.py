"""ONNX Runtime target: export with torch.onnx, check with onnx.checker, run with the
requested execution provider, and record which one actually ran."""
from __future__ import annotations

import collections
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from torch import nn

from compressor.errors import UserError
from compressor.core import quiet
from compressor.core.interfaces import Context
from compressor.core.params import one_of
from compressor.models.causal_lm import is_causal_lm
from compressor.modules.quant import needs_reduce_range
from compressor.targets.onnx.export import OPSET, export_onnx
from compressor.core.untrusted import check_onnx_external_data

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
INTEGER_KERNELS = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger",
                   "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention", "MatMulNBits")


@dataclass
class OnnxRuntimeParams:
    precision: str = "auto"  # auto: what the pipeline leaves (int8 after a quantize stage, else fp32)
    provider: str = "cpu"
    threads: int = 0  # intra-op threads; 0 lets ONNX Runtime choose
    opset: int = OPSET

    def check(self):
        yield from one_of(self.precision, ("auto",) + OnnxRuntimeTarget.precisions, "precision")
        yield from one_of(self.provider, tuple(PROVIDERS), "provider")
        if self.threads < 0:
            yield "threads", f"must be >= 0, got {self.threads}"
        if not 13 <= self.opset <= 20:  # per-channel Q/DQ needs 13; the TorchScript exporter writes up to 20
            yield "opset", f"must be in [13, 20], got {self.opset}"


class OrtEngine:
    """A callable ONNX Runtime session over a built model.onnx."""

    def __init__(self, path: Path, provider: str = "cpu", threads: int = 0, precision: str = "fp32"):
        import onnxruntime as ort

        self.path, self.precision = Path(path), precision
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        wanted = PROVIDERS[provider]
        if wanted not in ort.get_available_providers():
            raise UserError(f"ONNX Runtime here has no {wanted} (available: {ort.get_available_providers()})",
                            key="target.provider")
        with quiet.Captured("onnxruntime"):  # its C++ warnings on descriptor 2 (below ERROR): into the log file
            self.session = ort.InferenceSession(str(self.path), so, providers=[wanted])
        self.provider = self.session.get_providers()[0]
        if self.provider != wanted:  # ORT falls back to CPU silently; we do not
            raise UserError(f"asked for {wanted} but ONNX Runtime ran {self.provider}", key="target.provider")
        first = self.session.get_inputs()[0]
        self.input_name, self.input_shape = first.name, list(first.shape)
        self.input_dtype = {"tensor(int64)": np.int64, "tensor(float16)": np.float16}.get(first.type, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)})[0]

    def kernels(self) -> dict[str, int]:
        """Op types of the graph ONNX Runtime actually runs, after its optimizations."""
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            so = ort.SessionOptions()
            so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            so.log_severity_level = 3
            ort.InferenceSession(str(self.path), so, providers=[self.provider])
            graph = onnx.load(so.optimized_model_filepath).graph
        return dict(collections.Counter(n.op_type for n in graph.node))


class OnnxRuntimeTarget:
    """ONNX Runtime engine (model.onnx): FP32, or INT8 Q/DQ run with integer kernels."""

    params: OnnxRuntimeParams
    precisions = ("fp32", "int8", "int8_dynamic", "int8_weight_only", "int4_weight_only", "int8_w8a8",
                  "fp16")  # ONNX has no bf16 Conv: bf16 is for torch_export
    suffixes = (".onnx",)

    def build(self, model: nn.Module, ctx: Context, out_dir: Path) -> OrtEngine:
        if is_causal_lm(model):  # a graph with a KV cache, written from the weights (targets/onnx/llm.py)
            from compressor.targets.onnx.llm import LlmSession, export_llm

            export_llm(model, Path(out_dir))
            engine = LlmSession(out_dir, self.params.threads)
            ctx.notes["kernels"] = engine.kernels()
            return engine
        if self.params.precision == "int8_w8a8":
            raise UserError("int8_w8a8 engines are built for causal language models (model.task: causal_lm)",
                            key="target.precision")
        # x86 CPUs without VNNI: 8-bit weights of GEMM-based layers as uint8, which ORT's kernels do not saturate
        uint8 = self.params.provider == "cpu" and needs_reduce_range()
        path = export_onnx(model, ctx.example_input, out_dir / "model.onnx", opset=self.params.opset,
                           uint8_weights=uint8)
        engine = OrtEngine(path, self.params.provider, self.params.threads, self.params.precision)
        kernels = engine.kernels()
        ctx.notes["kernels"] = kernels
        ctx.notes["integer_kernels"] = sum(v for k, v in kernels.items() if k in INTEGER_KERNELS)
        return engine

    @staticmethod
    def load(path: Path, provider: str = "cpu") -> OrtEngine:
        check_onnx_external_data(path)  # a file from anywhere: its external data must not reach outside its folder
        if (Path(path).parent / "llm.json").is_file():  # a language model with its KV cache and tokenizer
            from compressor.targets.onnx.llm import LlmSession

            return LlmSession(Path(path).parent)
        nodes = onnx.load(str(path), load_external_data=False).graph.node
        ops = {n.op_type for n in nodes}
        bits = next((a.i for n in nodes if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"), None)
        precision = (f"int{bits}_weight_only" if bits else
                     "int8_dynamic" if "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops else
                     "int8" if "DequantizeLinear" in ops else "fp32")
        return OrtEngine(path, provider, precision=precision)
