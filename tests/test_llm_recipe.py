"""The packaged tiny Llama through the whole pipeline: recipe -> GPTQ INT4 -> ONNX Runtime and
OpenVINO engines with a KV cache -> perplexity, parity, generation speed, gates -> report; then
`compressor generate` on the engine it built."""
import json
import subprocess
import sys

import pytest

import compressor
from compressor.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("llm")
    report, engine = compressor.compress("tiny_llama_int4", output_dir=out)
    return out, report, engine


@pytest.mark.slow
def test_the_recipe_reports_perplexity_parity_and_speed_per_engine(run):
    out, report, _ = run
    assert report["status"] == "ok", report["gates"]
    base, stage = report["baseline"], report["stages"][0]
    assert set(base["metric"]) == {"perplexity", "kld", "token_agreement"}
    assert stage["metric"]["perplexity"] / base["metric"]["perplexity"] - 1 < 0.05
    assert stage["notes"]["method"] == "gptq" and stage["peak_memory_bytes"] >= 0
    assert 0 <= stage["greedy_identity"] <= 1 and base["generation"]["decode_tokens_per_s"] > 0
    engines = {e["target"]: e for e in report["engines"]}
    assert set(engines) == {"onnxruntime", "openvino"}
    for e in engines.values():
        assert e["precision"].startswith("int4") and e["parity"]["passed"], e["parity"]
        assert abs(e["ppl_vs_model"]) < 0.01  # the engine computes the model the report measured
        assert e["parity"]["token_agreement"] > 0.95 and e["generation"]["decode_tokens_per_s"] > 0
        assert e["greedy_identity"] >= stage["greedy_identity"] - 0.35
    kernels = engines["onnxruntime"]["notes"]["kernels"]
    assert kernels.get("MatMulNBits") and kernels.get("GroupQueryAttention") == 2
    assert report["gates"]["max_ppl_increase"]["passed"]
    written = json.loads((out / "report.json").read_text())
    assert written["engines"][0]["generation"] == engines["onnxruntime"]["generation"]


@pytest.mark.slow
def test_a_sweep_ranks_language_model_jobs_by_perplexity_and_decode_speed(run, tmp_path):
    """What a sweep's summary reads of an LM job: the engine's perplexity (lower is better) and its
    decode tokens/s (latency_ms is then ms per generated token)."""
    from compressor.search.sweep import engine_values, pareto, write_summary

    out, report, _ = run
    speed = report["engine"]["generation"]["decode_tokens_per_s"]
    values = engine_values(report, "perplexity")
    assert values["metric"] == report["engine"]["metric"]["perplexity"] and values["tokens_per_s"] == speed
    assert values["latency_ms"] == pytest.approx(1000 / speed)
    rows = [{"job": "a", "metric": 20.0, "ms": 1.0}, {"job": "b", "metric": 21.0, "ms": 0.5},
            {"job": "c", "metric": 22.0, "ms": 0.8}]
    assert pareto(rows, "ms", lower_is_better=True) == {"a", "b"}  # c: worse perplexity and slower than b
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "report.json").write_text((out / "report.json").read_text())
    [row] = write_summary(tmp_path)
    assert row["pareto_latency"] and "decode tok/s" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "pareto.png").stat().st_size > 10_000


@pytest.mark.slow
def test_generate_streams_text_from_the_built_engine(run, capsys):
    out, _, engine = run
    code = main(["generate", str(out), "--prompt", "What is a list?", "--max-new-tokens", "12"])
    assert code == 0
    assert len(capsys.readouterr().out.strip()) > 0


def test_generate_refuses_what_is_not_a_language_model_engine(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "compressor", "generate", str(tmp_path), "--prompt", "hi"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no engine file" in proc.stderr and "Traceback" not in proc.stderr


def test_w8a8_engine_computes_what_the_w8a8_model_computes(tmp_path):
    """MatMulNBits at accuracy level 4 quantizes activations per block as quantize_w8a8's model does:
    the engine sits several times closer to that model than the model sits to FP32 (the rest: ties that
    round the other way, x * (1 / s) in the kernel, x / s in PyTorch)."""
    import copy

    import numpy as np
    import torch

    from compressor.data.text import TextParams, build_text
    from compressor.models import build_model
    from compressor.stages.quantize.w8a8 import QuantizeW8A8, QuantizeW8A8Params
    from compressor.targets.onnx.llm import LlmSession, export_llm
    from compressor.testing import context

    data = build_text(TextParams(path="packaged:texts/python_docs_paragraphs.txt", tokenizer="packaged:tiny_llama",
                                 mode="lm", max_length=128, val_tokens=1024, batch_size=8, calibration_size=8))
    model = build_model({"kind": "huggingface", "task": "causal_lm", "path": "packaged:tiny_llama"})
    stage = QuantizeW8A8()
    stage.params = QuantizeW8A8Params()
    quantized = stage.apply(copy.deepcopy(model), context(data, model))
    export_llm(quantized, tmp_path)
    engine = LlmSession(tmp_path, threads=1)
    x = data.val.dataset.tensors[0][:2]
    with torch.no_grad():
        ref, fp32 = quantized(x).numpy(), model(x).numpy()
    out = engine(x.numpy())
    assert engine.precision == "int8_w8a8"
    to_model = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    to_fp32 = np.linalg.norm(ref - fp32) / np.linalg.norm(fp32)
    assert to_model < 5e-3 and to_model < to_fp32 / 5, (to_model, to_fp32)
    # OpenVINO: int8 activations per the model's block through its dynamic quantization (llm.json's
    # activation_block), so its engine too sits closer to the W8A8 model than the model to FP32
    from compressor.targets.llm_openvino import OvLlmSession, export_llm_openvino

    ov = OvLlmSession(export_llm_openvino(quantized, tmp_path / "ov").parent, threads=1)
    block = ov.meta["activation_block"]
    assert block > 0 and int(ov.compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == block
    # 0.0038 against the model's 0.012 to FP32 on an AVX-512 CPU (0.009 with dynamic quantization off);
    # the bound leaves room for CPUs whose kernels round differently
    ov_to_model = np.linalg.norm(ov(x.numpy()) - ref) / np.linalg.norm(ref)
    assert ov_to_model < to_fp32, (ov_to_model, to_fp32)
