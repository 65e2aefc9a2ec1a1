"""Replace the model by a smaller architecture and distil the current model into it. With
`compare_labels_only` the same student is also trained on labels alone, same seed and epochs,
and the report gives both metrics: what distillation bought, measured."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from compressor.interfaces import Context
from compressor.measure import count_params
from compressor.stages.distill import DistillParams, distill, teacher_for
from compressor.training import fit


@dataclass
class StudentParams(DistillParams):
    model: dict = field(default_factory=dict)  # the student's model spec, e.g. {kind: digits_cnn, width: 8}
    pretrained: bool = False  # load the student source's weights (else random init)
    compare_labels_only: bool = True

    def check(self):
        yield from super().check()
        from compressor.models import check_model_spec

        yield from check_model_spec(self.model, "model")


class Student:
    """A smaller architecture, distilled from the current model."""

    params: StudentParams

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        from compressor.models import build_model

        p = self.params
        torch.manual_seed(ctx.seed)
        student = build_model(p.model, load_weights=p.pretrained).to(ctx.device)
        initial = copy.deepcopy(student)  # the same start for the labels-only comparison
        teacher = model if p.teacher is None else teacher_for(p, ctx)  # default: the model as it is now
        torch.manual_seed(ctx.seed)
        result = distill(student, teacher, p, ctx, description="student: distill")
        ctx.notes.update(result.notes(), student=p.model, distilled_metric=ctx.evaluate(student),
                         params_ratio=round(count_params(student) / count_params(model), 4))
        if p.compare_labels_only and ctx.data.labelled:
            torch.manual_seed(ctx.seed)
            fit(initial, ctx.data.train, p.epochs, **p.fit_options(), **ctx.training("student: labels only"))
            ctx.notes["labels_only_metric"] = ctx.evaluate(initial.eval())
        ctx.shared["model"] = dict(p.model)  # checkpoints rebuild the student's architecture
        return student.eval()
