"""Replace the model by a smaller architecture and distil the current model into it. With
`compare_labels_only` the same student is also trained on labels alone, same seed and epochs,
and the report gives both metrics: what distillation bought, measured."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from compressor.errors import UserError
from compressor.core.interfaces import Context
from compressor.measure.stats import count_params
from compressor.core.params import flat
from compressor.stages.train.distill import DistillSettings, distill, teacher_for
from compressor.training.loop import fit
from compressor.training.settings import TrainSettings


@dataclass
class StudentParams:
    train: TrainSettings = flat(TrainSettings, epochs=5)
    distill: DistillSettings = flat(DistillSettings)
    model: dict = field(default_factory=dict)  # the student's model spec, e.g. {kind: digits_cnn, width: 8}
    pretrained: bool = False  # load the student source's weights (else random init)
    compare_labels_only: bool = True
    # A student of the teacher's family with fewer layers (e.g. {kind: huggingface, path: ..., num_layers: 3}):
    # which teacher layers initialise its layers, in order; everything else is copied by name
    # (DistilBERT takes every other layer). Empty: the student starts as `pretrained` says.
    teacher_layers: list[int] = field(default_factory=list)

    def check(self):
        if self.train.epochs == 0:
            yield "epochs", "must be >= 1"
        if any(i < 0 for i in self.teacher_layers):
            yield "teacher_layers", f"must be layer indices >= 0, got {self.teacher_layers}"
        from compressor.models import check_model_spec

        yield from check_model_spec(self.model, "model")


class Student:
    """A smaller architecture, distilled from the current model."""

    params: StudentParams
    deterministic = ("cpu",)  # trains: CUDA's backward kernels accumulate with atomics, so bit-exact on CPU only

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        from compressor.models import build_model

        p = self.params
        torch.manual_seed(ctx.seed)
        student = build_model(p.model, load_weights=p.pretrained).to(ctx.device)
        teacher = model if p.distill.teacher is None else teacher_for(p.distill, ctx)  # default: the model as it is now
        if p.teacher_layers:
            ctx.notes["copied_tensors"] = init_from_teacher(student, teacher, p.teacher_layers)
        initial = copy.deepcopy(student)  # the same start for the labels-only comparison
        torch.manual_seed(ctx.seed)
        result = distill(student, teacher, p.distill, p.train, ctx, description="student: distill")
        ctx.notes.update(result.notes(), student=p.model, distilled_metric=ctx.evaluate(student),
                         params_ratio=round(count_params(student) / count_params(model), 4))
        if p.compare_labels_only and ctx.data.labelled:
            torch.manual_seed(ctx.seed)
            fit(initial, ctx.data.train, **p.train.fit_options(), **ctx.training("student: labels only"))
            ctx.notes["labels_only_metric"] = ctx.evaluate(initial.eval())
        ctx.handoff.model = dict(p.model)  # checkpoints rebuild the student's architecture
        return student.eval()


def init_from_teacher(student: nn.Module, teacher: nn.Module, layers: list[int]) -> int:
    """Copy the teacher's weights into a student of its family with fewer layers: in every layer
    list that is shorter in the student, student layer i gets teacher layer layers[i]; every other
    tensor is copied by name where the shapes agree. Returns how many tensors were copied."""
    teacher_lists = {n: m for n, m in teacher.named_modules() if isinstance(m, nn.ModuleList)}
    renames = {}
    for name, m in student.named_modules():
        t = teacher_lists.get(name)
        if isinstance(m, nn.ModuleList) and t is not None and len(t) > len(m):
            if len(layers) != len(m) or max(layers) >= len(t):
                raise UserError(f"{name} has {len(m)} layers in the student and {len(t)} in the teacher: give "
                                f"{len(m)} teacher layer indices below {len(t)}, got {layers}", key="teacher_layers")
            renames.update({f"{name}.{i}.": f"{name}.{j}." for i, j in enumerate(layers)})
    if not renames:
        raise UserError("the student has no layer list shorter than the teacher's", key="teacher_layers")
    source = teacher.state_dict()
    copied = {}
    for key, value in student.state_dict().items():
        src = next((new + key[len(old):] for old, new in renames.items() if key.startswith(old)), key)
        if src in source and source[src].shape == value.shape:
            copied[key] = source[src]
    student.load_state_dict(copied, strict=False)
    return len(copied)
