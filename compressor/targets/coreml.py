"""Core ML target: the model as an ML Program package (`model.mlpackage`), converted by coremltools
from the torch.export program, with float (FP16/FP32), INT8 or palettized weights.

- int8: the quantize stage's integers and scales, per output channel, stored as Core ML int8
  weights (constexpr_affine_dequantize; constexpr_blockwise_shift_scale from iOS18). Each
  QuantWrapper is exported as `dequantize_per_channel(int8 weight, scale)`, which coremltools'
  torch frontend turns into that op with these very values; `linear_quantize_weights` would
  recompute the scales from max|w| (and 7-bit or QAT integers would come out different), so it
  is not used. Activations stay float (W8A16): Core ML quantizes activations only from a
  calibration it runs on a Mac. With compute_precision fp16 the scales are stored in fp16.
- palettize: the float weights clustered by coremltools.optimize (k-means, one 2^bits-entry
  lookup table per tensor; weights under 2048 elements, coremltools' default, stay float: their
  table would cost more than it saves).
- float: weights in the compute precision (fp16, Core ML's ML Program default, or fp32).

Core ML runs only on Apple systems. Here (Linux) the package is built, read back (its spec: the
ops, the storage of each weight, the int8 integers themselves) and sized; the engine's `not_run`
says why latency, parity and the metric are not measured, and `measure_on_mac.py`, written beside
the package with reference inputs and the PyTorch outputs on them (`reference.npz`), measures
them on a Mac."""
from __future__ import annotations

import copy
import importlib.util
import logging
import math
import os
import platform
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.core import quiet
from compressor.core.atomic import atomic_path, write_text
from compressor.core.interfaces import Context
from compressor.core.params import one_of
from compressor.errors import UserError
from compressor.modules.quant import QuantWrapper, as_input

MISSING = "coremltools is not installed: pip install 'compressor[coreml]'"
NOT_HERE = "Core ML runs only on Apple systems"
PACKAGE, REFERENCE, MAC_SCRIPT = "model.mlpackage", "reference.npz", "measure_on_mac.py"
# ML Program deployment targets of coremltools 9 and their Core ML specification versions (the
# values of coremltools.target; hard-coded so that `validate` works without importing it, which
# takes seconds). ML Programs start at spec 6 (iOS15 / macOS12).
_RELEASES = {"iOS": (15, 16, 17, 18, 26), "macOS": (12, 13, 14, 15, 26), "watchOS": (8, 9, 10, 11, 26),
             "tvOS": (15, 16, 17, 18, 26)}
DEPLOYMENT_TARGETS = {f"{system}{v}": 6 + i for system, versions in _RELEASES.items() for i, v in enumerate(versions)}
COMPRESSED_SPEC = 7  # constexpr ops (int8 and palettized weights): iOS16 / macOS13
THREE_BIT_SPEC = 9  # 3-bit lookup tables: iOS18 / macOS15
PALETTE_BITS = (1, 2, 3, 4, 6, 8)
REFERENCE_BYTES = 4 << 20  # reference inputs saved beside the engine: 1 to 32 samples within ~4 MiB
_META_KEY = "compressor.precision"  # the package's user metadata: what this target built
PALETTIZE_INT8 = ("palettize clusters float weights; this pipeline leaves INT8 weights, which Core ML stores as "
                  "they are (weights: auto); drop the quantize stage to palettize")


@dataclass
class CoreMlParams:
    precision: str = "auto"  # auto: what the pipeline leaves (int8 after a quantize stage, fp16, else fp32)
    weights: str = "auto"  # auto: the stage's int8 after a quantize stage, else float | palettize (float weights only)
    palette_bits: int = 6  # palettize: 2^bits-entry lookup table per weight tensor (1, 2, 3, 4, 6, 8)
    compute_precision: str = "fp16"  # fp16 (Core ML's ML Program default) | fp32
    minimum_deployment_target: str = "iOS17"  # iOS15.., macOS12.., watchOS8.., tvOS15.. (coremltools 9 names)

    def check(self):
        yield from one_of(self.precision, ("auto",) + CoreMlTarget.precisions, "precision")
        yield from one_of(self.weights, ("auto", "palettize"), "weights")
        yield from one_of(self.palette_bits, PALETTE_BITS, "palette_bits")
        yield from one_of(self.compute_precision, ("fp16", "fp32"), "compute_precision")
        yield from one_of(self.minimum_deployment_target, tuple(DEPLOYMENT_TARGETS), "minimum_deployment_target")
        yield from _compatible(self)


def _compatible(p: CoreMlParams):
    """What the deployment target and the pipeline's precision allow (also checked by `requires`,
    which the plan calls once `precision: auto` is resolved)."""
    spec = DEPLOYMENT_TARGETS.get(p.minimum_deployment_target)
    if spec is None:
        return
    if p.weights == "palettize" and p.precision == "int8":
        yield "weights", PALETTIZE_INT8
    compressed = "palettized" if p.weights == "palettize" else "INT8" if p.precision == "int8" else None
    if compressed and spec < COMPRESSED_SPEC:
        yield "minimum_deployment_target", (f"{compressed} weights need iOS16 / macOS13 / watchOS9 / tvOS16 or later "
                                            f"(Core ML's constexpr ops), got {p.minimum_deployment_target}")
    if p.weights == "palettize" and p.palette_bits == 3 and spec < THREE_BIT_SPEC:
        yield "palette_bits", (f"3-bit lookup tables need iOS18 / macOS15 / watchOS11 / tvOS18 or later, "
                               f"got {p.minimum_deployment_target}; use 2 or 4 bits, or a later target")


def import_coremltools():
    """coremltools with its optimize package, imported without the warnings it logs on Linux (one
    per macOS runtime library it lacks, one per torch or scikit-learn version it has not tested):
    they do not concern converting, and a run's log should not show them."""
    if importlib.util.find_spec("coremltools") is None:
        raise UserError(MISSING, key="target")
    log = logging.getLogger("coremltools")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import coremltools
        import coremltools.optimize.coreml  # noqa: F401
    finally:
        log.setLevel(level)
    return coremltools


def _dequantize_ops():
    """torch.ops.quantized_decomposed, whose dequantize_per_channel coremltools reads as a constexpr
    int8 weight: registered by torch (torch.ao, deprecated) or, where torch no longer has it, torchao."""
    try:
        import torch.ao.quantization.fx._decomposed  # noqa: F401
    except ImportError:
        import torchao.quantization.pt2e  # noqa: F401
    return torch.ops.quantized_decomposed


class _Int8Weight(nn.Module):
    """A QuantWrapper as coremltools should see it: its float layer (the weight removed), whose
    weight is `dequantize_per_channel` of the stage's int8 integers and per-channel scales. The
    input's fake quantization is dropped: Core ML keeps activations float."""

    def __init__(self, wrapper: QuantWrapper):
        super().__init__()
        self.layer = wrapper.inner  # a copy of the pipeline's model: ours to change
        self.register_buffer("integers", wrapper.weight_integers().detach().to(torch.int8))
        self.register_buffer("scale", wrapper.weight_scale.detach().float().clone())
        # int8 zero points: int32 ones would need a cast to int8 that iOS16's opset lacks
        self.register_buffer("zero_point", torch.zeros_like(self.scale, dtype=torch.int8))
        del self.layer.weight  # exported from `integers` only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _dequantize_ops().dequantize_per_channel(self.integers, self.scale, self.zero_point, 0, -128, 127,
                                                     torch.int8)
        if isinstance(self.layer, nn.Linear):
            return nn.functional.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)


def plain_model(model: nn.Module) -> tuple[nn.Module, list[QuantWrapper]]:
    """A float32 copy of `model` for coremltools, each QuantWrapper replaced by an `_Int8Weight`;
    returns it with the pipeline's wrappers (the integers the package must hold)."""
    wrappers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantWrapper)]
    plain = copy.deepcopy(model).float().eval()
    for name, _ in wrappers:
        plain.set_submodule(name, _Int8Weight(plain.get_submodule(name)))
    return plain, [m for _, m in wrappers]


# --- reading a package back (works on Linux: the spec and the weight file are plain files) ------

_DTYPES = {"FLOAT16": "fp16", "FLOAT32": "fp32", "FLOAT64": "fp64", "BFLOAT16": "bf16"}


def _dtype(value) -> str:
    from coremltools.proto import MIL_pb2

    name = MIL_pb2.DataType.Name(value.type.tensorType.dataType)
    return _DTYPES.get(name, name.lower())


def _value(op, key: str, producer: dict):
    """The proto Value of an op's attribute or constant input `key` (iOS16/17 constexpr ops hold
    their data as attributes, iOS18 ones as inputs), or None."""
    if key in op.attributes:
        return op.attributes[key]
    if key in op.inputs and op.inputs[key].arguments:
        arg = op.inputs[key].arguments[0]
        if arg.HasField("value"):
            return arg.value
        src = producer.get(arg.name)
        if src is not None and src.type == "const":
            return src.attributes["val"]
    return None


def _storage(op, producer: dict) -> str:
    """How the weight an op produces is stored: fp16 / fp32 (a const), int8 / uint8 / int4 ...
    (affine or blockwise dequantized), lut<bits> (palettized), or the op's type (computed)."""
    if op is None:
        return "input"
    if op.type == "const":
        return _dtype(op.attributes["val"])
    if op.type == "constexpr_affine_dequantize":
        return _dtype(_value(op, "quantized_data", producer))
    if op.type == "constexpr_blockwise_shift_scale":
        return _dtype(_value(op, "data", producer))
    if op.type == "constexpr_lut_to_dense":
        dims = [d.constant.size for d in _value(op, "lut", producer).type.tensorType.dimensions]
        entries = dims[0] if len(dims) == 1 else dims[-2]  # iOS16: (2^bits,); iOS18: (..., 2^bits, vector)
        return f"lut{int(math.log2(entries))}"
    return op.type


def spec_summary(path: str | Path) -> dict[str, Any]:
    """What the package at `path` holds, read from its spec: the ops of the main function by type,
    the storage of every weight tensor (`"constexpr_affine_dequantize:int8": 5`, `"const:fp16": 2`:
    constexpr ops and float constants of rank >= 2), and for each layer type with a weight input
    (conv, linear, ...) how its weights are stored (`{"conv": {"int8": 3}}`)."""
    ct = import_coremltools()
    spec = ct.utils.load_spec(str(path))
    main = spec.mlProgram.functions["main"]
    ops = list(main.block_specializations[main.opset].operations)
    producer = {out.name: op for op in ops for out in op.outputs}
    feeds_constexpr = {arg.name for op in ops if op.type.startswith("constexpr_")
                       for binding in op.inputs.values() for arg in binding.arguments}
    weights: Counter = Counter()
    for op in ops:
        if op.type.startswith("constexpr_"):
            weights[f"{op.type}:{_storage(op, producer)}"] += 1
        elif op.type == "const" and op.outputs[0].name not in feeds_constexpr:
            t = op.attributes["val"].type.tensorType
            if t.rank >= 2 and _dtype(op.attributes["val"]) in _DTYPES.values():
                weights[f"const:{_dtype(op.attributes['val'])}"] += 1
    layers: dict[str, Counter] = {}
    for op in ops:
        if "weight" in op.inputs and not op.type.startswith("constexpr_"):
            src = producer.get(op.inputs["weight"].arguments[0].name)
            layers.setdefault(op.type, Counter())[_storage(src, producer)] += 1
    first = spec.description.input[0]
    return {
        "specification_version": spec.specificationVersion,
        "opset": main.opset,
        "ops": dict(sorted(Counter(op.type for op in ops).items())),
        "weight_storage": dict(sorted(weights.items())),
        "layer_weights": {k: dict(sorted(v.items())) for k, v in sorted(layers.items())},
        "input": {"name": first.name, "shape": list(first.type.multiArrayType.shape),
                  "dtype": ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(first.type.multiArrayType.dataType)},
        "output": spec.description.output[0].name,
        "metadata": dict(spec.description.metadata.userDefined),
    }


def stored_integers(path: str | Path) -> list[dict[str, Any]]:
    """The integer weights the package holds, read back from its weight file: for each
    constexpr_affine_dequantize / constexpr_blockwise_shift_scale op, its type, `integers` and
    `scale` (numpy arrays, as stored)."""
    ct = import_coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil

    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)  # reads, never compiles (Linux can't)
    spec = mlmodel.get_spec()
    program = load_mil(spec, spec.specificationVersion, mlmodel.weights_dir)
    found = []
    for op in program.functions["main"].operations:
        data = getattr(op, "quantized_data", None) if op.op_type == "constexpr_affine_dequantize" else \
            getattr(op, "data", None) if op.op_type == "constexpr_blockwise_shift_scale" else None
        if data is not None:
            found.append({"op": op.op_type, "integers": data.val, "scale": op.scale.val})
    return found


def package_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _input_dtype(summary: dict[str, Any]) -> type:
    return {"FLOAT16": np.float16, "INT32": np.int32, "DOUBLE": np.float64}.get(summary["input"]["dtype"], np.float32)


class CoreMlEngine:
    """A built .mlpackage. On macOS it runs through Core ML (MLModel.predict, one sample at a time:
    the package has batch 1); elsewhere `not_run` says why it cannot, and calling it raises."""

    provider = "coreml"

    def __init__(self, path: str | Path, precision: str | None = None, compute_units: str = "ALL"):
        ct = import_coremltools()
        self.path = Path(path)
        summary = spec_summary(self.path)
        self.precision = precision or summary["metadata"].get(_META_KEY) or _precision_of(summary)
        self.input_name, self.output_name = summary["input"]["name"], summary["output"]
        self.input_shape = summary["input"]["shape"]
        self.input_dtype = _input_dtype(summary)
        self.not_run = None if platform.system() == "Darwin" else NOT_HERE
        self.model = None if self.not_run else ct.models.MLModel(str(self.path), compute_units=ct.ComputeUnit[compute_units])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.not_run:
            raise UserError(f"not run: {self.not_run}", key="engine")
        rows = [self.model.predict({self.input_name: np.ascontiguousarray(row[None], dtype=self.input_dtype)})[self.output_name]
                for row in np.asarray(x)]
        return np.concatenate([np.asarray(r, dtype=np.float32) for r in rows])


def _precision_of(summary: dict[str, Any]) -> str:
    """A package built elsewhere: int8 where its weights are int8, else its float weights' dtype."""
    storage = {label.split(":")[-1] for label in summary["weight_storage"]}
    return "int8" if "int8" in storage else "fp16" if "fp16" in storage else "fp32"


class CoreMlTarget:
    """Core ML ML Program (.mlpackage): FP16/FP32, INT8 (the stage's integers) or palettized weights."""

    params: CoreMlParams
    precisions = ("fp32", "fp16", "int8")
    suffixes = (".mlpackage",)

    @staticmethod
    def requires(params: CoreMlParams | None = None) -> list[tuple[str, str]]:
        if importlib.util.find_spec("coremltools") is None:  # find_spec: importing it takes seconds
            return [("", MISSING)]
        return list(_compatible(params)) if params is not None else []

    def build(self, model: nn.Module, ctx: Context, out_dir: Path) -> CoreMlEngine:
        p = self.params
        ct = import_coremltools()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        plain, wrappers = plain_model(model)
        if wrappers and p.weights == "palettize":
            raise UserError(PALETTIZE_INT8, key="target.weights")
        example = ctx.data.example_input(1)  # on the CPU, as the model is: batch 1, the package's shape
        example = example.float() if example.is_floating_point() else example
        with torch.no_grad():
            program = torch.export.export(plain, (example,), strict=False).run_decompositions({})
        try:
            with quiet.Captured("coremltools"):  # its tqdm bars per conversion step: into the log file
                mlmodel = ct.convert(program, convert_to="mlprogram",
                                     minimum_deployment_target=getattr(ct.target, p.minimum_deployment_target),
                                     compute_precision=ct.precision.FLOAT16 if p.compute_precision == "fp16"
                                     else ct.precision.FLOAT32)
                if p.weights == "palettize":
                    import coremltools.optimize.coreml as cto

                    config = cto.OpPalettizerConfig(mode="kmeans", nbits=p.palette_bits, granularity="per_tensor")
                    mlmodel = cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=config))
        except (NotImplementedError, ValueError, RuntimeError, TypeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"coremltools could not convert this model: {first}", key="target") from e
        precision = "int8" if wrappers else p.compute_precision
        mlmodel.user_defined_metadata[_META_KEY] = precision

        # reference inputs and the pipeline model's outputs on them, for measure_on_mac.py
        inputs = _reference_inputs(ctx, example)
        with torch.no_grad():
            outputs = model(as_input(model, inputs))
        outputs = getattr(outputs, "logits", outputs).float().numpy()
        reference = inputs.numpy().astype(np.float32 if inputs.is_floating_point() else np.int32)
        with atomic_path(out_dir / REFERENCE) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no suffix
            np.savez(f, inputs=reference, outputs=outputs)
        write_text(out_dir / MAC_SCRIPT, MAC_SCRIPT_TEXT)

        # the package is a folder: saved whole into a staging folder beside it, then renamed into place
        path = out_dir / PACKAGE
        staging = Path(tempfile.mkdtemp(prefix=".coreml-", dir=out_dir))
        try:
            mlmodel.save(str(staging / PACKAGE))
            if path.exists():  # a rebuild: the old package goes first (a folder cannot be replaced in one rename)
                os.replace(path, staging / "old.mlpackage")
            os.replace(staging / PACKAGE, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

        engine = CoreMlEngine(path, precision)
        summary = spec_summary(path)
        ctx.notes.update(
            minimum_deployment_target=p.minimum_deployment_target,
            specification_version=summary["specification_version"], opset=summary["opset"],
            compute_precision=p.compute_precision,
            weights=("int8: the quantize stage's integers and per-channel scales" if wrappers else
                     f"palettized {p.palette_bits}-bit (k-means lookup table per tensor)" if p.weights == "palettize"
                     else f"float {p.compute_precision}"),
            ops=summary["ops"], weight_storage=summary["weight_storage"], layer_weights=summary["layer_weights"],
            package_bytes=package_bytes(path),
            runs_here=engine.not_run is None, **({"not_run": engine.not_run} if engine.not_run else {}),
            reference_samples=len(reference), mac_script=MAC_SCRIPT,
        )
        if wrappers:
            ctx.notes["activations"] = (f"float ({p.compute_precision}): Core ML runs these INT8 weights as W8A"
                                        f"{p.compute_precision[2:]}; quantizing activations needs a calibration on a Mac")
            ctx.notes["int8_layers"] = len(wrappers)
            ctx.notes["int8_layers_exact"] = _exact_layers(path, wrappers)
            if ctx.notes["int8_layers_exact"] < len(wrappers):
                ctx.log.warning("coreml: %d of %d int8 weights in the package differ from the quantize stage's",
                                len(wrappers) - ctx.notes["int8_layers_exact"], len(wrappers))
        return engine

    @staticmethod
    def load(path: Path) -> CoreMlEngine:
        if importlib.util.find_spec("coremltools") is None:
            raise UserError(MISSING, key="engine")
        return CoreMlEngine(Path(path))


def _reference_inputs(ctx: Context, example: torch.Tensor) -> torch.Tensor:
    """Up to 32 validation inputs within REFERENCE_BYTES (a single 224x224 image is 0.6 MB)."""
    n = max(1, min(32, REFERENCE_BYTES // max(1, example.numel() * example.element_size())))
    batches, seen = [], 0
    for x, _ in ctx.data.val:
        batches.append(x[: n - seen])
        seen += len(batches[-1])
        if seen >= n:
            break
    x = torch.cat(batches) if batches else example
    return x.float() if x.is_floating_point() else x


def _exact_layers(path: Path, wrappers: list[QuantWrapper]) -> int:
    """How many of the stage's int8 weights the package holds exactly (the same integers, same shape)."""
    stored = [s["integers"] for s in stored_integers(path)]
    count = 0
    for w in wrappers:
        ours = w.weight_integers().detach().numpy().astype(np.int8)
        count += any(s.shape == ours.shape and np.array_equal(s, ours) for s in stored)
    return count


MAC_SCRIPT_TEXT = '''\
#!/usr/bin/env python3
"""Latency and parity of model.mlpackage on this Mac (written by compressor's `coreml` target).

    pip install coremltools numpy
    python measure_on_mac.py [--compute-units ALL|CPU_ONLY|CPU_AND_GPU|CPU_AND_NE] [--iters 200]

Runs the package on the inputs saved beside it (reference.npz) and compares its outputs with the
PyTorch model's outputs on the same inputs: relative error ||coreml - torch|| / ||torch|| over all
outputs, and top-1 agreement for classifier outputs. Latency: single predictions (batch 1) of the
first input after warmup, p50 and p90 in milliseconds. Prints one JSON object."""
import argparse
import json
import platform
import time
from pathlib import Path

import coremltools as ct
import numpy as np

HERE = Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compute-units", default="ALL", choices=[u.name for u in ct.ComputeUnit])
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iters", type=int, default=200)
    args = parser.parse_args()

    reference = np.load(HERE / "reference.npz")
    inputs, expected = reference["inputs"], reference["outputs"]
    model = ct.models.MLModel(str(HERE / "model.mlpackage"), compute_units=ct.ComputeUnit[args.compute_units])
    spec = model.get_spec()
    name_in, name_out = spec.description.input[0].name, spec.description.output[0].name

    def run(x):
        return np.asarray(model.predict({name_in: x[None]})[name_out], dtype=np.float64)

    outputs = np.concatenate([run(x).reshape(1, -1) for x in inputs])
    expected = expected.reshape(len(expected), -1).astype(np.float64)
    relative_error = float(np.linalg.norm(outputs - expected) / max(np.linalg.norm(expected), 1e-30))
    agreement = float((outputs.argmax(1) == expected.argmax(1)).mean()) if expected.shape[1] > 1 else None

    for _ in range(args.warmup):
        run(inputs[0])
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        run(inputs[0])
        times.append((time.perf_counter() - start) * 1000)
    print(json.dumps({
        "macos": platform.mac_ver()[0], "machine": platform.machine(), "compute_units": args.compute_units,
        "latency_ms": {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90)),
                       "iters": args.iters, "batch_size": 1},
        "parity": {"relative_error": relative_error, "top1_agreement": agreement, "samples": int(len(inputs))},
    }, indent=2))


if __name__ == "__main__":
    main()
'''
