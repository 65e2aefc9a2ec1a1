"""A BERT-like Hugging Face model built from a config, saved to a folder, run as a recipe."""
import pytest
import torch

from compressor.testing import context, params, sentiment_csv, tiny_bert
from conftest import cli, load_report, run_dirs

pytestmark = pytest.mark.slow


def test_prune_heads_and_neurons_then_reload(tmp_path):
    from compressor.run.checkpoint import load_checkpoint, save_checkpoint
    from compressor.data.text import HFDatasetParams, build as build_text
    from compressor.models.huggingface import HuggingFaceParams, attention_modules, build
    from compressor.stages.prune.structured import PruneStructured, PruneStructuredParams

    folder = tiny_bert(tmp_path / "bert")
    data = build_text(HFDatasetParams(train=str(sentiment_csv(tmp_path / "d.csv")), tokenizer=str(folder),
                                      max_length=16))
    model = build(HuggingFaceParams(path=str(folder)))
    before = sum(p.numel() for p in model.parameters())
    ctx = context(data, model)
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
    folder = tiny_bert(tmp_path / "bert")
    csv = sentiment_csv(tmp_path / "d.csv")
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


def test_bert_student_with_fewer_layers_starts_from_the_teachers(tmp_path):
    """DistilBERT-style: a 1-layer student of the 2-layer BERT takes the teacher's second layer
    and everything else by name, is distilled, and its checkpoint rebuilds it."""
    from compressor.run.checkpoint import load_checkpoint, save_checkpoint
    from compressor.data.text import HFDatasetParams, build as build_text
    from compressor.errors import UserError
    from compressor.models.huggingface import HuggingFaceParams, build
    from compressor.stages.train.student import Student, StudentParams, init_from_teacher

    folder = tiny_bert(tmp_path / "bert")
    data = build_text(HFDatasetParams(train=str(sentiment_csv(tmp_path / "d.csv")), tokenizer=str(folder),
                                      max_length=16))
    teacher = build(HuggingFaceParams(path=str(folder)))
    spec = {"kind": "huggingface", "path": str(folder), "num_layers": 1}
    student = build(HuggingFaceParams(path=str(folder), num_layers=1), load_weights=False)
    assert init_from_teacher(student, teacher, [1]) == len(student.state_dict())
    s, t = student.state_dict(), teacher.state_dict()
    layer = "model.bert.encoder.layer"
    assert torch.equal(s[f"{layer}.0.attention.self.query.weight"], t[f"{layer}.1.attention.self.query.weight"])
    assert torch.equal(s["model.bert.embeddings.word_embeddings.weight"], t["model.bert.embeddings.word_embeddings.weight"])
    with pytest.raises(UserError, match="give 1 teacher layer indices below 2"):
        init_from_teacher(student, teacher, [0, 1])

    ctx = context(data, teacher, evaluate=lambda m: {"top1": 0.0})
    stage = Student()
    stage.params = params(StudentParams, model=spec, teacher_layers=[1], epochs=1, compare_labels_only=False)
    model = stage.apply(teacher, ctx)
    assert len(model.model.bert.encoder.layer) == 1 and ctx.notes["params_ratio"] < 1
    x, _ = next(iter(data.val))
    path = save_checkpoint(model, tmp_path / "s.safetensors", ctx.handoff.model)
    with torch.no_grad():
        assert torch.allclose(load_checkpoint(path)(x), model(x), atol=1e-5)
