"""A BERT-like Hugging Face model built from a config, saved to a folder, run as a recipe."""
import pytest
import torch

from conftest import cli, load_report, make_sentiment_csv, make_tiny_bert, run_dirs

pytestmark = pytest.mark.slow


def test_prune_heads_and_neurons_then_reload(tmp_path):
    import logging

    from compressor.checkpoint import load_checkpoint, save_checkpoint
    from compressor.data.text import HFDatasetParams, build as build_text
    from compressor.interfaces import Context
    from compressor.models.huggingface import HuggingFaceParams, attention_modules, build
    from compressor.stages.prune_structured import PruneStructured, PruneStructuredParams

    folder = make_tiny_bert(tmp_path / "bert")
    data = build_text(HFDatasetParams(train=str(make_sentiment_csv(tmp_path / "d.csv")), tokenizer=str(folder),
                                      max_length=16))
    model = build(HuggingFaceParams(path=str(folder)))
    before = sum(p.numel() for p in model.parameters())
    ctx = Context(data=data, device=torch.device("cpu"), teacher=model, evaluate=lambda m: {},
                  log=logging.getLogger("t"), progress=None)
    stage = PruneStructured()
    stage.params = PruneStructuredParams(ratio=0.5)
    model = stage.apply(model, ctx)
    assert set(ctx.notes["attention_heads"].values()) == {2}  # 4 heads -> 2 in every layer
    for block in attention_modules(model):
        assert block.query.out_features == 32 and block.query.in_features == 64  # residual width kept
    assert model.model.config.intermediate_size == 64
    assert sum(p.numel() for p in model.parameters()) < 0.8 * before
    x, _ = next(iter(data.val))
    with torch.no_grad():
        out = model(x)
    path = save_checkpoint(model, tmp_path / "p.safetensors", {"kind": "huggingface", "path": str(folder)})
    back = load_checkpoint(path)  # no pickle: layer specs + head counts from the metadata
    with torch.no_grad():
        assert torch.allclose(back(x), out, atol=1e-5)


def test_bert_recipe_prune_heads_quantize_dynamically(tmp_path):
    folder = make_tiny_bert(tmp_path / "bert")
    csv = make_sentiment_csv(tmp_path / "d.csv")
    (tmp_path / "bert.yaml").write_text(
        "defaults:\n  - base\n  - model: huggingface\n  - data: hf_dataset\n"
        "  - /stage@stages.prune: prune_structured\n  - /stage@stages.ft: finetune\n"
        "  - /stage@stages.quantize: quantize_dynamic\n  - target: onnxruntime\n  - _self_\n"
        f"model: {{path: {folder}}}\ndata: {{train: {csv}, tokenizer: {folder}, max_length: 16}}\n"
        "pipeline: [prune, ft, quantize]\nstages:\n  prune: {ratio: 0.5}\n  ft: {epochs: 6, lr: 0.002}\n"
        "eval: {max_drop: null, iters: 10, warmup: 2, extra_metrics: [agreement, fidelity]}\n")
    proc = cli("run", "./bert.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = load_report(run_dirs(tmp_path)[0])
    assert r["status"] == "ok"
    assert r["stages"][0]["params"] < 0.8 * r["baseline"]["params"]
    assert r["stages"][1]["metric"]["top1"] >= 0.9  # the toy task is learnable after pruning
    eng = r["engine"]
    assert eng["precision"] == "int8_dynamic" and eng["parity"]["passed"], eng["parity"]
    assert eng["notes"]["integer_kernels"] > 0  # DynamicQuantizeMatMul / MatMulInteger
    assert eng["metric"]["top1"] >= 0.85
    # fidelity against the uncompressed model: 1.0 for the baseline itself, measured for the engine
    assert r["baseline"]["metric"]["fidelity"] == pytest.approx(1.0) and r["baseline"]["metric"]["agreement"] == 1.0
    assert -1 <= eng["metric"]["fidelity"] <= 1 and 0 <= eng["metric"]["agreement"] <= 1
