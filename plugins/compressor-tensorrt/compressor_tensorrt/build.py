"""ONNX file -> serialized TensorRT engine, with a persistent timing cache.

Every network is built strongly typed: the graph carries the precision (FP32 tensors, the FP16
tensors of a `quantize_fp16` model, the INT8/FP8 Q/DQ of a quantize stage) and TensorRT follows
it. That is how TensorRT 10 asks for explicit quantization to be built ("use explicit
quantization with strong typing; precision-control build flags are not required and should not
be specified"), weakly typed builds with BuilderFlag.FP16/INT8/FP8 are deprecated since 10.12
and gone in 11. TF32 is cleared so that FP32 means IEEE FP32, as in PyTorch's reference.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressor.plugin import atomic_path
from compressor.errors import UserError

from compressor_tensorrt.logger import make_logger


@dataclass
class BuildOptions:
    workspace_bytes: int
    min_batch: int
    opt_batch: int
    max_batch: int
    timing_cache: Path


def build_serialized(trt, onnx_path: Path, opts: BuildOptions) -> tuple[bytes, dict[str, Any]]:
    """The engine's bytes and what the build did (for the report). Call with the target CUDA
    device current (TensorRT builds for the current device)."""
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        first = errors[0].splitlines()[0] if errors else logger.last_error("no error given")
        raise UserError(f"TensorRT's ONNX parser refused the exported graph ({len(errors)} error(s)): {first}",
                        key="target")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_bytes)
    cleared = []
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
        cleared.append("TF32")
    profile = _batch_profile(builder, network, opts)
    if profile is not None:
        config.add_optimization_profile(profile[0])

    cache, cache_notes = _load_timing_cache(config, opts.timing_cache)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build the engine: {logger.last_error('see compressor.log')}")
    seconds = time.perf_counter() - start
    cache_notes.update(_save_timing_cache(config.get_timing_cache() or cache, opts.timing_cache))
    notes = {
        "precision_flags": {"network": "strongly_typed", "set": [], "cleared": cleared},
        "workspace_bytes": opts.workspace_bytes,
        "profile": profile[1] if profile else None,
        "timing_cache": cache_notes,
        "build_seconds": round(seconds, 3),
        "layers": network.num_layers,
    }
    return bytes(memoryview(serialized)), notes


def _batch_profile(builder, network, opts: BuildOptions):
    """One optimization profile over the batch axis: (profile, {input: {min, opt, max}}), or
    None when no input is dynamic."""
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = [int(d) for d in tensor.shape]
        if all(d >= 0 for d in dims):
            continue
        if any(d < 0 for d in dims[1:]):
            raise UserError(f"input '{tensor.name}' has dynamic axes besides the batch ({dims}); "
                            "this target profiles the batch axis only", key="target")
        shapes[tensor.name] = {k: [b] + dims[1:] for k, b in
                               (("min", opts.min_batch), ("opt", opts.opt_batch), ("max", opts.max_batch))}
    if not shapes:
        return None
    profile = builder.create_optimization_profile()
    for name, s in shapes.items():
        profile.set_shape(name, s["min"], s["opt"], s["max"])
    return profile, shapes


def _load_timing_cache(config, path: Path):
    """Attach the cache stored at `path` (or a new one). A file written by another TensorRT
    version or GPU is not used: the build starts a fresh cache and saves it over the file."""
    blob = path.read_bytes() if path.is_file() else b""
    cache, reused = None, False
    if blob:
        try:
            cache = config.create_timing_cache(blob)
            reused = cache is not None and config.set_timing_cache(cache, ignore_mismatch=False)
        except Exception:  # a corrupt or foreign file: TensorRT raises or returns None
            reused = False
    if not reused:
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache, {"path": str(path), "loaded_bytes": len(blob) if reused else 0,
                   "discarded_bytes": 0 if reused else len(blob)}


def _save_timing_cache(cache, path: Path) -> dict[str, Any]:
    """Write the cache back (atomically); its digest says which timings the build saw last."""
    data = bytes(memoryview(cache.serialize()))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return {"saved_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
