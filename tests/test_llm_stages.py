"""Causal-LM data, metrics and stages on the tiny Llama shipped with the package (trained on the
Python documentation prose; compressor/models/tiny_llama.py): token windows, perplexity / KLD /
agreement, weight-only RTN, GPTQ, AWQ, W8A8 with smoothing, SparseGPT / Wanda / magnitude."""
import copy
import math

import numpy as np
import pytest
import torch

from compressor.core.params import parse_params
from compressor.data.text import TextParams, build_text
from compressor.errors import UserError
from compressor.measure import lm, stats
from compressor.models import build_model
from compressor.modules.quant import WeightOnly
from compressor.stages.prune.sparse_llm import PruneSparse, PruneSparseParams
from compressor.stages.quantize.w8a8 import QuantizeW8A8, QuantizeW8A8Params
from compressor.stages.quantize.weight_only import QuantizeWeightOnly, QuantizeWeightOnlyParams, fitted_group
from compressor.testing import context

METRICS = ["perplexity", "kld", "token_agreement"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    data = build_text(TextParams(path="packaged:texts/python_docs_paragraphs.txt", tokenizer="packaged:tiny_llama",
                                 mode="lm", max_length=128, val_tokens=4096, batch_size=8, calibration_size=64))
    model = build_model({"kind": "huggingface", "task": "causal_lm", "path": "packaged:tiny_llama"})
    predict = stats.predict_torch(model, torch.device("cpu"))
    ref = stats.reference(predict, data.val)
    base = stats.evaluate(predict, data.val, METRICS, ref)
    return data, model, ref, base


def run(setup, cls, params_cls, **keys):
    data, model, ref, base = setup
    stage = cls()
    stage.params, problems = parse_params(params_cls, keys, "stage")
    assert not problems
    ctx = context(data, model)
    out = stage.apply(copy.deepcopy(model), ctx)
    metrics = stats.evaluate(stats.predict_torch(out, torch.device("cpu")), data.val, METRICS, ref)
    return out, metrics, metrics["perplexity"] / base["perplexity"] - 1, ctx.notes


def test_windows_are_fixed_disjoint_and_cover_the_held_out_tokens(setup):
    data, *_ = setup
    x, y = data.val.dataset.tensors
    assert x.shape == (32, 128) and torch.equal(x[:, 1:], y[:, :-1])  # labels: the next token
    assert torch.equal(x[1:, 0], y[:-1, -1])  # evaluation windows follow each other with no gap
    cx, _ = data.train.dataset.tensors
    assert len(cx) > 0 and cx.shape[1] == 128
    assert not any(torch.equal(c[:16], x[0, :16]) for c in cx)  # no evaluated text among the training windows


def test_metrics_match_their_definitions(setup):
    data, model, ref, base = setup
    x, y = data.val.dataset.tensors
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    assert base["perplexity"] == pytest.approx(math.exp(float(ce)), rel=1e-4)
    assert abs(base["kld"]) < 1e-4 and base["token_agreement"] == 1.0  # the model against itself (float16 reference)
    assert base["perplexity"] < 30  # trained: far below a uniform guess over 512 tokens


def test_groups_fit_the_layer_width():
    assert fitted_group(576, 128) == 64 and fitted_group(1536, 128) == 128 and fitted_group(64, 128) == 64
    assert fitted_group(576, 0) == 576  # one grid per output channel


def test_int8_per_channel_keeps_perplexity(setup):
    _, _, rise, notes = run(setup, QuantizeWeightOnly, QuantizeWeightOnlyParams, bits=8, group_size=0, symmetric=True,
                            head_bits=None)
    assert rise < 0.01 and notes["quantized_layers"] == 14  # 7 Linears x 2 blocks


def test_gptq_and_awq_remove_much_of_round_to_nearest_int4_loss(setup):
    _, rtn, rtn_rise, _ = run(setup, QuantizeWeightOnly, QuantizeWeightOnlyParams, bits=4, group_size=64,
                              method="rtn", head_bits=None)
    gq, gptq, gptq_rise, notes = run(setup, QuantizeWeightOnly, QuantizeWeightOnlyParams, bits=4, group_size=64,
                                     method="gptq", head_bits=None)
    _, awq, awq_rise, _ = run(setup, QuantizeWeightOnly, QuantizeWeightOnlyParams, bits=4, group_size=64,
                              method="awq_gptq", head_bits=None)
    assert rtn_rise > 0.01
    assert gptq_rise <= 0.6 * rtn_rise and awq_rise <= 0.6 * rtn_rise, (rtn_rise, gptq_rise, awq_rise)
    assert gptq["kld"] < rtn["kld"] and awq["kld"] < rtn["kld"]
    # GPTQ's integers are an ordinary group-wise grid: at most 16 values per group, recovered exactly
    w = gq.model.model.layers[0].mlp.down_proj
    assert isinstance(w, WeightOnly) and notes["groups_by_width"] == {"64": 64, "192": 64}
    q = w.integers()
    assert int(q.max()) <= 15
    deq = ((q.float() - w.zero_point.float().unsqueeze(2)) * w.scale.unsqueeze(2)).reshape(w.inner.weight.shape)
    assert torch.equal(deq, w.inner.weight)


def test_tied_head_and_embedding_are_quantized_once(setup):
    out, _, rise, notes = run(setup, QuantizeWeightOnly, QuantizeWeightOnlyParams, bits=4, group_size=64, head_bits=8)
    head = out.model.lm_head
    assert isinstance(head, WeightOnly) and notes["head_bits"] == 8
    assert head.inner.weight is out.model.model.embed_tokens.weight  # still one table
    assert rise < 0.05


def test_w8a8_rounds_activations_and_keeps_perplexity(setup):
    out, metrics, rise, notes = run(setup, QuantizeW8A8, QuantizeW8A8Params)
    layer = out.model.model.layers[0].self_attn.q_proj
    assert layer.act_block == 64 and layer.bits == 8 and notes["smoothed_groups"] == 6  # 3 per block (GQA: not v->o)
    assert rise < 0.02 and metrics["kld"] > 0


def test_calibrated_sparsity_beats_magnitude(setup):
    _, _, mag, _ = run(setup, PruneSparse, PruneSparseParams, method="magnitude")
    out, _, sgpt, notes = run(setup, PruneSparse, PruneSparseParams, method="sparsegpt")
    assert notes["block_sparsity"] >= 0.5
    assert sgpt < mag, (sgpt, mag)
    out, _, _, notes = run(setup, PruneSparse, PruneSparseParams, method="wanda", pattern="2:4")
    w = out.model.model.layers[1].mlp.up_proj.weight
    assert int((w.reshape(w.shape[0], -1, 4) == 0).sum(-1).min()) >= 2  # every group of 4 keeps at most 2


def test_block_dropping_then_distillation_from_the_float_model(setup, tmp_path):
    """prune_layers deletes the decoder block whose removal alone costs the least perplexity (the
    engine then has one KV-cache layer fewer and computes the same logits); distill on the LM text
    from the unpruned model brings part of the loss back."""
    from compressor.models.causal_lm import decoder_layers
    from compressor.stages.prune.layers import PruneLayers, PruneLayersParams
    from compressor.stages.train.distill import Distill, DistillParams
    from compressor.targets.onnx.llm import LlmSession, export_llm
    from compressor.testing import params, stage

    data, model, ref, base = setup
    pruned = copy.deepcopy(model)
    ctx = context(data, model, evaluate="perplexity")
    stage(PruneLayers, params(PruneLayersParams, count=1, importance="metric")).apply(pruned, ctx)
    [removed] = ctx.notes["removed_blocks"]
    assert ctx.notes["importance"][removed] == min(ctx.notes["importance"].values())
    assert len(decoder_layers(pruned)) == pruned.config.num_hidden_layers == 1
    predict = stats.predict_torch(pruned, torch.device("cpu"))
    after = stats.evaluate(predict, data.val, METRICS, ref)
    assert after["perplexity"] - base["perplexity"] == pytest.approx(ctx.notes["importance"][removed], rel=1e-3)
    engine = LlmSession(export_llm(pruned, tmp_path / "ort").parent)
    x = data.val.dataset.tensors[0][:2]
    np.testing.assert_allclose(engine(x.numpy()), predict(x), rtol=1e-3, atol=1e-3)
    assert engine.meta["num_layers"] == 1
    stage(Distill, params(DistillParams, epochs=2, lr=3e-3)).apply(pruned, context(data, model))
    distilled = stats.evaluate(stats.predict_torch(pruned, torch.device("cpu")), data.val, METRICS, ref)
    assert distilled["kld"] < 0.8 * after["kld"], (after, distilled)


def test_structured_pruning_removes_mlp_channels_and_whole_gqa_groups(setup, tmp_path):
    """prune_structured on the LM: MLP channels and key/value heads with their query heads leave
    every block; the engine reads the smaller config; activation-aware (wanda) importance loses
    less than weight magnitude."""
    from compressor.stages.prune.structured import PruneStructured, PruneStructuredParams
    from compressor.targets.onnx.llm import LlmSession, export_llm

    out, metrics, _, notes = run(setup, PruneStructured, PruneStructuredParams, ratio=0.5, importance="wanda")
    cfg = out.config
    assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (96, 2, 1)
    attn = out.model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (2 * cfg.head_dim, 64) and attn.k_proj.weight.shape == (cfg.head_dim, 64)
    assert out.model.model.layers[1].mlp.down_proj.weight.shape == (64, 96) and notes["params_ratio"] < 0.7
    engine = LlmSession(export_llm(out, tmp_path / "ort").parent)
    x = setup[0].val.dataset.tensors[0][:2]
    np.testing.assert_allclose(engine(x.numpy()), stats.predict_torch(out, torch.device("cpu"))(x), rtol=1e-3, atol=1e-3)
    _, wanda, _, _ = run(setup, PruneStructured, PruneStructuredParams, ratio=0.25, importance="wanda")
    _, magnitude, _, _ = run(setup, PruneStructured, PruneStructuredParams, ratio=0.25, importance="magnitude")
    assert wanda["kld"] < 0.8 * magnitude["kld"], (wanda, magnitude)


def test_language_model_stages_refuse_other_models(setup):
    data, *_ = setup
    stage = QuantizeWeightOnly()
    stage.params = QuantizeWeightOnlyParams(method="gptq")
    with pytest.raises(UserError, match="causal language model"):
        stage.apply(torch.nn.Sequential(torch.nn.Linear(4, 4)), context(data))


def test_too_little_text_is_a_clear_error(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("One short line of text.\n")
    with pytest.raises(UserError, match="fewer than max_length"):
        build_text(TextParams(path=str(short), tokenizer="packaged:tiny_llama", mode="lm", max_length=128))


def test_peak_memory_sees_an_allocation():
    with stats.PeakMemory() as mem:
        x = torch.ones(64, 1024, 1024)  # 256 MB
        x += 1
    assert mem.bytes > 200e6
