"""Distillation and students on digits: real training against the packaged teacher."""
import pytest
import torch
import torch.nn.functional as F

from compressor.errors import UserError
from compressor.stages.train.distill import Distill, DistillParams
from compressor.testing import context, digits, digits_cnn, params
from compressor.training.loop import accuracy
from conftest import cli, load_report, run_dirs


@pytest.fixture(scope="module")
def data():
    return digits()


def kl_to_teacher(student, teacher, data) -> float:
    x = torch.cat([x for x, _ in data.val])
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(student.eval()(x), -1), F.softmax(teacher(x), -1), reduction="batchmean"))


def test_distill_with_hints_moves_a_narrow_student_towards_the_teacher(data):
    teacher = digits_cnn()
    torch.manual_seed(0)
    student = digits_cnn(width=8, load_weights=False)
    before = kl_to_teacher(student, teacher, data)
    stage = Distill()
    # hints: the student's 8-channel first block regresses the teacher's 32 channels through a 1x1 adapter
    stage.params = params(DistillParams, epochs=3, lr=3e-3, hints={"2": "2"}, teacher={"kind": "digits_cnn"})
    ctx = context(data, teacher=None, evaluate="top1")  # the teacher comes from the spec, not the context
    stage.apply(student, ctx)
    assert kl_to_teacher(student, teacher, data) < 0.2 * before
    assert accuracy(student, data.val) > 0.9
    assert ctx.notes["labels_used"] is True


def test_hint_layers_must_exist_and_match_in_space(data):
    teacher = digits_cnn()
    stage = Distill()
    stage.params = params(DistillParams, epochs=1, hints={"nope": "2"})
    with pytest.raises(UserError) as e:
        stage.apply(digits_cnn(width=8, load_weights=False), context(data, teacher, evaluate="top1"))
    assert e.value.problems[0].key == "hints" and "nope" in e.value.problems[0].message
    stage.params = params(DistillParams, epochs=1, hints={"2": "6"})  # 8x8 map against the teacher's 4x4 after pooling
    with pytest.raises(UserError, match="only the channel count may differ"):
        stage.apply(digits_cnn(width=8, load_weights=False), context(data, teacher, evaluate="top1"))


@pytest.mark.slow
def test_packaged_student_recipe_beats_labels_alone_and_its_checkpoint_rebuilds(tmp_path):
    """The acceptance on digits: a student with at most a quarter of the reference model's
    parameters, distilled, beats the same student trained on labels alone (same seed and
    epochs), and the report shows both."""
    proc = cli("run", "digits_student", "pipeline=[student]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "on labels alone" in proc.stdout + proc.stderr
    run_dir = run_dirs(tmp_path)[-1]
    notes = load_report(run_dir)["stages"][0]["notes"]
    assert notes["params_ratio"] <= 0.25
    assert notes["distilled_metric"]["top1"] > notes["labels_only_metric"]["top1"] > 0.9
    assert "on labels alone" in (run_dir / "report.md").read_text()
    from compressor.run.checkpoint import load_checkpoint

    model = load_checkpoint(run_dir / load_report(run_dir)["stages"][0]["checkpoint"])
    assert model[0].out_channels == 6  # the student's architecture, rebuilt from the metadata


def test_student_model_spec_is_checked_before_work(tmp_path, cli_inproc):
    proc = cli_inproc("run", "+stage@stages.student=student", "+stages.student.model={kind: digits_cnn, widht: 8}",
                      "pipeline=[student]")
    assert proc.returncode == 2 and proc.stderr.startswith("error: stages.student.model.widht: unknown key")
    assert not (tmp_path / "outputs").exists()
