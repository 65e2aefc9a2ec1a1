"""Edge engines of a real pretrained classifier, efficientnet-lite0, on real photos, in one run on
the same inputs: ours (the packaged recipe `efficientnet_lite0_edge`, one INT8 model sent to
ExecuTorch, LiteRT and Core ML) against each runtime's own INT8 route, and against our ONNX
Runtime INT8 engine of the same quantized model (the agreement bar the issue sets):

- ExecuTorch (XNNPACK): FP32; ours; PT2E `XNNPACKQuantizer` (per-channel, the recipe's calibration
  crops), the route ExecuTorch documents;
- LiteRT: FP32 (litert-torch); ours; litert-torch's PT2E full-integer route; ai-edge-quantizer's
  static INT8 recipe on the FP32 .tflite with its own calibration;
- Core ML: package sizes only (it runs only on Apple systems): FP32 weights, ours (the stage's INT8
  weights), coremltools.optimize's own linear INT8 and 6-bit palettization;
- ONNX Runtime: FP32 and our INT8 engine of the recipe's quantized model.

For each: top-1 agreement with PyTorch FP32 on all evaluation crops and on the confident ones
(FP32 top-1 probability >= 0.5), p50 latency at batch 1 with 2 threads against the same runtime's
FP32 engine (engines of one runtime interleaved in a fresh random order each round), and size
against the FP32 weights as safetensors. Nothing is downloaded. About 15 minutes on 2 cores.

    .venv/bin/python bench/edge.py
Writes bench/results/edge.json and the `edge` table in README.md."""
from __future__ import annotations

import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cpu_kind, interleaved_p50, update_readme, write_result  # noqa: E402
from real_vision import agreement, outputs  # noqa: E402

THREADS = 2
WARMUP, ITERS = 10, 150
RECIPE = "efficientnet_lite0_edge"

ROWS = {  # key: (label, runtime, the same runtime's FP32 row)
    "ort_fp32": ("ONNX Runtime FP32", "ort", "ort_fp32"),
    "ort_ours": ("ONNX Runtime INT8, ours (the same quantized model)", "ort", "ort_fp32"),
    "et_fp32": ("ExecuTorch XNNPACK FP32", "et", "et_fp32"),
    "et_ours": ("**ExecuTorch INT8, ours**", "et", "et_fp32"),
    "et_pt2e": ("ExecuTorch PT2E XNNPACKQuantizer INT8", "et", "et_fp32"),
    "lite_fp32": ("LiteRT FP32 (litert-torch)", "lite", "lite_fp32"),
    "lite_ours": ("**LiteRT INT8, ours**", "lite", "lite_fp32"),
    "lite_pt2e": ("LiteRT litert-torch PT2E full-integer INT8", "lite", "lite_fp32"),
    "lite_aeq": ("LiteRT ai-edge-quantizer static INT8", "lite", "lite_fp32"),
}


def et_pt2e(model, example, batches, out: Path):
    """ExecuTorch's documented INT8 route: PT2E with XNNPACKQuantizer (symmetric, per-channel),
    calibrated on the recipe's crops, lowered to XNNPACK."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from compressor.targets.executorch import ExecuTorchEngine

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(copy.deepcopy(model), (example,), strict=False).module(), quantizer)
    with torch.no_grad():
        for b in batches:
            for i in range(len(b)):  # the exported module's batch is 1
                prepared(torch.from_numpy(b[i:i + 1]))
    program = torch.export.export(convert_pt2e(prepared), (example,), strict=False)
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    out.write_bytes(lowered.to_executorch().buffer)
    return ExecuTorchEngine(out, "int8")


def lite_pt2e(model, example, batches, out: Path):
    """litert-torch's documented INT8 route: its PT2EQuantizer (symmetric, per-channel, static),
    calibrated on the recipe's crops, converted to a full-integer .tflite."""
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    from compressor.targets.litert import LiteRtEngine

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    prepared = quantize_pt2e.prepare_pt2e(torch.export.export(copy.deepcopy(model), (example,)).module(), quantizer)
    with torch.no_grad():
        for b in batches:
            for i in range(len(b)):
                prepared(torch.from_numpy(b[i:i + 1]))
    converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    edge = litert_torch.convert(converted, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    out.write_bytes(edge.model_content())
    return LiteRtEngine(out, "int8", THREADS)


def lite_aeq(fp32: Path, batches, out: Path):
    """ai-edge-quantizer's static INT8 recipe (int8 weights and activations) on the FP32 .tflite,
    with its own calibration on the recipe's crops."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    from compressor.targets.litert import LiteRtEngine

    signature = Interpreter(model_path=str(fp32)).get_signature_list()
    name = next(iter(signature))
    arg = signature[name]["inputs"][0]
    q = quantizer.Quantizer(str(fp32), recipe.static_wi8_ai8())
    samples = [{arg: b[i:i + 1]} for b in batches for i in range(len(b))]
    calibration = q.calibrate({name: samples}, num_threads=THREADS)
    out.write_bytes(q.quantize(calibration, enable_progress_report=False).quantized_model)
    return LiteRtEngine(out, "int8", THREADS)


def build(target_cls, params_cls, model, ctx, out: Path, **keys):
    from compressor.testing import params, stage

    ctx.notes = {}
    engine = stage(target_cls, params(params_cls, **keys)).build(model, ctx, out)
    return engine, dict(ctx.notes)


def main() -> None:
    import compressor
    from safetensors.torch import save as safetensors_bytes

    from compressor.data.photos import PhotosParams, build as build_photos
    from compressor.models.efficientnet_lite import EfficientNetLiteParams, build as build_model
    from compressor.run.checkpoint import load_checkpoint
    from compressor.targets.coreml import CoreMlParams, CoreMlTarget, spec_summary
    from compressor.targets.executorch import ExecuTorchEngine, ExecuTorchParams, ExecuTorchTarget
    from compressor.targets.litert import LiteRtEngine, LiteRtParams, LiteRtTarget
    from compressor.targets.onnxruntime import OnnxRuntimeParams, OnnxRuntimeTarget
    from compressor.testing import context

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        report, _ = compressor.compress(RECIPE, output_dir=tmp / "run")
        recipe_seconds = time.perf_counter() - t
        print(f"recipe: status {report['status']}, {recipe_seconds:.0f} s", flush=True)
        samples = report["stages"][0]["notes"]["calibration_samples"]

        torch.set_num_threads(THREADS)
        model = build_model(EfficientNetLiteParams()).eval()
        data = build_photos(PhotosParams())
        batches, seen = [], 0  # the crops the recipe's stage calibrated on
        for x, _ in data.calib:
            if seen >= samples:
                break
            batches.append(x.numpy())
            seen += len(x)
        quantized = load_checkpoint(tmp / "run" / "checkpoints" / "1_quantize" / "model.safetensors").eval()
        fp32_bytes = len(safetensors_bytes({k: v.contiguous() for k, v in model.state_dict().items()}))
        example = data.example_input(1)
        ctx = context(data, model)
        run = tmp / "run" / "engine"
        engines, paths, notes = {}, {}, {}

        def add(key, engine, note=None):
            engines[key], paths[key] = engine, Path(engine.path)
            notes[key] = note or {}
            print("built", key, flush=True)

        add("ort_fp32", *build(OnnxRuntimeTarget, OnnxRuntimeParams, model, ctx, tmp / "ort_fp32", precision="fp32",
                               threads=THREADS))
        add("ort_ours", *build(OnnxRuntimeTarget, OnnxRuntimeParams, quantized, ctx, tmp / "ort_int8", precision="int8",
                               threads=THREADS))
        add("et_fp32", *build(ExecuTorchTarget, ExecuTorchParams, model, ctx, tmp / "et_fp32", precision="fp32",
                              threads=THREADS))
        add("et_ours", ExecuTorchEngine(run / "model.pte", "int8", THREADS), _engine(report, "executorch")["notes"])
        add("et_pt2e", et_pt2e(model, example, batches, tmp / "et_pt2e.pte"))
        add("lite_fp32", *build(LiteRtTarget, LiteRtParams, model, ctx, tmp / "lite_fp32", precision="fp32",
                                threads=THREADS))
        add("lite_ours", LiteRtEngine(run / "model.tflite", threads=THREADS), _engine(report, "litert")["notes"])
        add("lite_pt2e", lite_pt2e(model, example, batches, tmp / "lite_pt2e.tflite"))
        add("lite_aeq", lite_aeq(paths["lite_fp32"], batches, tmp / "lite_aeq.tflite"))

        reference = outputs(lambda x: model(x).numpy(), data.val)
        rows = {}
        for k, e in engines.items():
            rows[k] = {"agreement": agreement(outputs(lambda x, e=e: e(x.numpy()), data.val), reference),
                       "bytes": sum(p.stat().st_size for p in paths[k].rglob("*")) if paths[k].is_dir()
                       else paths[k].stat().st_size, "notes": notes[k]}
            print(k, rows[k]["agreement"], flush=True)
        x = example.numpy()
        for runtime in ("ort", "et", "lite"):  # one runtime's engines interleaved with each other
            keys = [k for k in ROWS if ROWS[k][1] == runtime]
            p50 = interleaved_p50({k: (lambda e=engines[k]: e(x)) for k in keys}, WARMUP, ITERS)
            for k in keys:
                rows[k]["p50_ms"] = p50[k]
                rows[k]["speedup_vs_runtime_fp32"] = p50[ROWS[k][2]] / p50[k]
        for row in rows.values():
            row["smaller_than_fp32_safetensors"] = fp32_bytes / row["bytes"]

        write_result("edge_partial", {"rows": rows, "recipe_engines": report["engines"], "gates": report["gates"]})
        coreml = coreml_sizes(model, ctx, run / "model.mlpackage", tmp, fp32_bytes, CoreMlTarget, CoreMlParams,
                              spec_summary)
    ort = rows["ort_ours"]["agreement"]
    checks = {}
    for ours, peers in (("et_ours", ["et_pt2e"]), ("lite_ours", ["lite_pt2e", "lite_aeq"])):
        a, r = rows[ours]["agreement"], rows[ours]
        checks[f"{ours}: agreement all >= ORT INT8"] = a["all"] >= ort["all"]
        checks[f"{ours}: agreement confident >= ORT INT8"] = a["confident"] >= ort["confident"]
        checks[f"{ours}: >= 1.3x its runtime's FP32"] = r["speedup_vs_runtime_fp32"] >= 1.3
        checks[f"{ours}: >= 3.5x smaller than FP32"] = r["smaller_than_fp32_safetensors"] >= 3.5
        checks[f"{ours}: agreement above every own route"] = all(
            a["all"] > rows[p]["agreement"]["all"] and a["confident"] >= rows[p]["agreement"]["confident"] for p in peers)
    checks["coreml: int8 weights in its spec"] = any(k.endswith(":int8") and n for k, n in
                                                     coreml["ours"]["weight_storage"].items())
    md = table(rows, coreml) + summary(report, recipe_seconds, len(reference), checks)
    path = write_result("edge", {"recipe": RECIPE, "recipe_status": report["status"], "recipe_seconds": recipe_seconds,
                                 "recipe_engines": report["engines"], "gates": report["gates"], "rows": rows,
                                 "coreml": coreml, "checks": checks, "fp32_safetensors_bytes": fp32_bytes,
                                 "threads": THREADS, "warmup": WARMUP, "iters": ITERS, "calibration_samples": samples,
                                 "eval_samples": int(len(reference)), "wall_seconds": time.perf_counter() - t0})
    update_readme("edge", md)
    print(md)
    print(f"wrote {path}")


def _engine(report: dict, target: str) -> dict:
    return next(e for e in report["engines"] if e["target"] == target)


def coreml_sizes(model, ctx, ours: Path, tmp: Path, fp32_bytes: int, target_cls, params_cls, spec_summary) -> dict:
    """Core ML packages' sizes and weight storage from their specs: FP32 weights, ours, and
    coremltools.optimize's own linear INT8 and 6-bit palettization of the FP32 package."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    def size(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())

    fp32, _ = build(target_cls, params_cls, model, ctx, tmp / "coreml_fp32", precision="fp32", compute_precision="fp32")
    mlmodel = ct.models.MLModel(str(fp32.path), skip_model_load=True)
    out = {"fp32": {"bytes": size(Path(fp32.path))}, "ours": {"bytes": size(ours)}}
    own = {"coremltools_linear_int8": cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(
               global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", granularity="per_channel"))),
           "coremltools_palettize_6bit": cto.palettize_weights(mlmodel, cto.OptimizationConfig(
               global_config=cto.OpPalettizerConfig(nbits=6, mode="kmeans")))}
    for name, m in own.items():
        path = tmp / f"{name}.mlpackage"
        m.save(str(path))
        out[name] = {"bytes": size(path)}
    for name in out:
        path = ours if name == "ours" else Path(fp32.path) if name == "fp32" else tmp / f"{name}.mlpackage"
        out[name].update(spec_summary(path))
        out[name]["smaller_than_fp32_safetensors"] = fp32_bytes / out[name]["bytes"]
    return out


def table(rows: dict, coreml: dict) -> str:
    lines = ["| engine | top-1 agreement with FP32, all | confident (FP32 p >= 0.5) | p50 ms, batch 1, 2 threads | "
             "speed-up vs same runtime FP32 | size MiB | smaller than FP32 safetensors |", "|---|---|---|---|---|---|---|"]
    for k, (label, _, _) in ROWS.items():
        r, a = rows[k], rows[k]["agreement"]
        lines.append(f"| {label} | {a['all']:.4f} ({a['agree_all']}/{a['n_all']}) | {a['confident']:.4f} "
                     f"({a['agree_confident']}/{a['n_confident']}) | {r['p50_ms']:.2f} | "
                     f"{r['speedup_vs_runtime_fp32']:.2f}x | {r['bytes'] / 2**20:.2f} | "
                     f"{r['smaller_than_fp32_safetensors']:.2f}x |")
    lines += ["", "| Core ML package (built here, not run: Core ML runs only on Apple systems) | size MiB | "
              "smaller than FP32 safetensors | weight storage (from the spec) |", "|---|---|---|---|"]
    for name, c in coreml.items():
        lines.append(f"| {name} | {c['bytes'] / 2**20:.2f} | {c['smaller_than_fp32_safetensors']:.2f}x | "
                     f"{c.get('weight_storage', {})} |")
    return "\n".join(lines)


def summary(report: dict, seconds: float, n_eval: int, checks: dict) -> str:
    held = "; ".join(f"{k}: {'holds' if v else 'FAILS'}" for k, v in checks.items())
    gates = ", ".join(f"{k} {g['value']:.4g}" if isinstance(g["value"], float) else f"{k} {g['value']}"
                      for k, g in report["gates"].items())
    return f"""

One run of `.venv/bin/python bench/edge.py` on a 2-core {cpu_kind()} machine (`lscpu` flags; shared with
other jobs). {n_eval} evaluation crops of 9 photos; every quantizer calibrated on the same crops of 10
other photos. The recipe `{RECIPE}` ran in {seconds:.0f} s with status `{report['status']}` (gates: {gates}).
Acceptance: {held}.
"""


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
