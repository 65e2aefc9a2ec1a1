"""The `tensorrt` target: PyTorch -> ONNX (compressor's exporter) -> TensorRT engine (model.plan).

Registered by importing this module (entry point `compressor.targets: tensorrt`). Precision
follows the pipeline, as for every target: FP32, FP16 after `quantize_fp16`, INT8 after a
quantize stage (its Q/DQ graph, made symmetric for TensorRT: see `qdq`), FP8 for an FP8 Q/DQ
graph. Validation (`requires`) names what a machine lacks before any work starts.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import onnx
import torch
from torch import nn

from compressor.errors import UserError
from compressor.plugin import (OPSET, Context, atomic_path, export_onnx, float_dtype, is_dynamic, is_quantized,
                               is_weight_only, one_of, target, write_json)

from compressor_tensorrt.build import BuildOptions, build_serialized
from compressor_tensorrt.engine import TensorRTEngine, sidecar
from compressor_tensorrt.environment import (INSTALL, cuda_problem, default_timing_cache, gpu_info,
                                             import_tensorrt, tensorrt_problem)
from compressor_tensorrt.qdq import has_fp8_qdq, has_int8_qdq, to_tensorrt_qdq

PRECISIONS = ("fp32", "fp16", "int8", "fp8")
FP8_CAPABILITY = (8, 9)  # Ada; Hopper is 9.0


@dataclass
class TensorRTParams:
    precision: str = "auto"  # auto: what the pipeline leaves (int8 after a quantize stage, fp16 after quantize_fp16, else fp32)
    workspace_gb: float = 4.0  # builder scratch memory (MemoryPoolType.WORKSPACE), GiB
    timing_cache: Optional[str] = None  # file of measured kernel timings; None: one per TensorRT version and GPU in ~/.cache/compressor/tensorrt
    max_batch: int = 64  # largest batch of the optimization profile; larger batches run in chunks
    opt_batch: int = 1  # the batch TensorRT tunes its kernels for (the report's latency is at batch 1)
    device: int = 0  # CUDA device index
    opset: int = OPSET

    def check(self):
        yield from one_of(self.precision, ("auto",) + PRECISIONS, "precision")
        if self.workspace_gb <= 0:
            yield "workspace_gb", f"must be positive, got {self.workspace_gb}"
        if self.max_batch < 1:
            yield "max_batch", f"must be >= 1, got {self.max_batch}"
        elif not 1 <= self.opt_batch <= self.max_batch:
            yield "opt_batch", f"must be in [1, max_batch={self.max_batch}], got {self.opt_batch}"
        if self.device < 0:
            yield "device", f"must be >= 0, got {self.device}"
        if self.timing_cache is not None and not self.timing_cache.strip():
            yield "timing_cache", "is empty; leave it out for the default file"


@target("tensorrt", params=TensorRTParams)
class TensorRTTarget:
    """TensorRT engine (model.plan) on an NVIDIA GPU: FP32, FP16, INT8 or FP8 Q/DQ."""

    params: TensorRTParams
    precisions = PRECISIONS
    suffixes = (".plan",)
    deterministic = False  # the builder picks kernels by timing them: two builds may differ
    @staticmethod
    def requires(params: TensorRTParams) -> list[tuple[str, str]]:
        """One line per thing this machine lacks, checked at validation (no work done)."""
        problem = tensorrt_problem()
        if problem:
            no_gpu = "" if torch.cuda.is_available() else " and this machine has no CUDA GPU"
            return [("", f"{problem}{no_gpu}: {INSTALL}")]
        problem = cuda_problem(params.device)
        if problem:
            return [problem]
        if params.precision == "fp8":
            gpu = gpu_info(params.device)
            if gpu["capability"] < FP8_CAPABILITY:
                return [("precision", f"fp8 needs compute capability 8.9 or newer (Ada, Hopper, Blackwell); "
                                      f"{gpu['name']} is {gpu['compute_capability']}")]
        return []

    def build(self, model: nn.Module, ctx: Context, out_dir: Path) -> TensorRTEngine:
        trt = import_tensorrt()
        p = self.params
        precision = resolve_precision(model, p.precision)
        gpu = gpu_info(p.device)
        cache = Path(p.timing_cache).expanduser() if p.timing_cache else default_timing_cache(trt.__version__, gpu)
        options = BuildOptions(workspace_bytes=int(p.workspace_gb * (1 << 30)), min_batch=1,
                               opt_batch=p.opt_batch, max_batch=p.max_batch, timing_cache=cache)
        with tempfile.TemporaryDirectory() as tmp:  # the ONNX is a step, not an artifact
            exported = export_onnx(model, ctx.example_input.cpu(), Path(tmp) / "model.onnx", opset=p.opset)
            graph, rewrites = to_tensorrt_qdq(onnx.load(str(exported)))
            _check_graph(graph, precision)
            onnx_path = Path(tmp) / "model.trt.onnx"
            onnx.save(graph, str(onnx_path))
            with torch.cuda.device(p.device):
                plan, notes = build_serialized(trt, onnx_path, options)
        path = out_dir / "model.plan"
        with atomic_path(path) as tmp_plan:
            tmp_plan.write_bytes(plan)
        record = {"precision": precision, "tensorrt_version": trt.__version__, "gpu": gpu["name"],
                  "compute_capability": gpu["compute_capability"], **notes, "onnx_rewrites": rewrites}
        write_json(sidecar(path), record)
        ctx.notes.update(record)
        # what a .plan is bound to, copied into manifest.json: it only runs with this TensorRT and GPU model
        ctx.notes["runtime"] = {k: record[k] for k in ("tensorrt_version", "gpu", "compute_capability",
                                                       "precision_flags", "timing_cache")}
        return TensorRTEngine(path, p.device)

    @staticmethod
    def load(path: Path, device: int = 0) -> TensorRTEngine:
        return TensorRTEngine(path, device)


def resolve_precision(model: nn.Module, wanted: str) -> str:
    """`auto` -> what the model is; an explicit precision must match it."""
    if is_dynamic(model) or is_weight_only(model):
        raise UserError("TensorRT runs static INT8 (quantize_int8, quantize_qat), not dynamic or weight-only "
                        "quantization", key="target.precision")
    found = "int8" if is_quantized(model) else "fp16" if float_dtype(model) == torch.float16 else "fp32"
    if wanted in ("auto", found) or (wanted == "fp8" and found == "fp32"):  # fp8: Q/DQ checked on the graph
        return found if wanted == "auto" else wanted
    raise UserError(f"target.precision is {wanted} but the model is {found}", key="target.precision")


def _check_graph(graph: onnx.ModelProto, precision: str) -> None:
    if precision == "int8" and not has_int8_qdq(graph):
        raise UserError("the exported graph has no INT8 Q/DQ to build from", key="target.precision")
    if precision == "fp8" and not has_fp8_qdq(graph):
        raise UserError("fp8 needs a model whose exported graph holds FP8 Q/DQ; no stage here leaves one yet",
                        key="target.precision")
