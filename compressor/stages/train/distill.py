"""Knowledge distillation on the shared training loop. The teacher is the model as it was before
the pipeline (default) or any model spec. Losses:
- logits: KL between temperature-softened teacher and student outputs (Hinton et al. 2015),
  times T^2, mixed with hard-label cross-entropy by `alpha`;
- outputs without labels (embeddings): `loss: mse` or `loss: cosine` on the outputs;
- hints (FitNets): named student layers regress named teacher layers through learned adapters
  (a 1x1 conv or a linear map), for stages that change widths."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import UserError
from compressor.core.interfaces import Context
from compressor.core.params import flat, one_of
from compressor.training.loop import fit
from compressor.training.settings import TrainSettings

LOSSES = ("kl", "mse", "cosine")


@dataclass
class DistillSettings:
    """What distillation learns from, shared by the stages that distil (`distill`, `student`, the rewrites)."""

    loss: str = "kl"  # kl (logits, with labels mixed in) | mse | cosine (outputs, e.g. embeddings)
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the teacher's loss; 1 - alpha goes to the labels (kl only)
    hints: dict = field(default_factory=dict)  # {student layer: teacher layer} feature distillation
    hint_weight: float = 1.0
    teacher: Optional[dict] = None  # a model spec (kind + params); None: the model before the pipeline
    # > 0: teacher and student see the same mixup of two inputs, mixed by Beta(mixup, mixup)
    # ("function matching", Beyer et al. 2022): the teacher labels inputs the data does not have
    mixup: float = 0.0

    def check(self):
        yield from one_of(self.loss, LOSSES, "loss")
        if not self.temperature > 0:
            yield "temperature", f"must be positive, got {self.temperature}"
        if not 0 <= self.alpha <= 1:
            yield "alpha", f"must be in [0, 1], got {self.alpha}"
        if self.mixup < 0:
            yield "mixup", f"must be >= 0 (0: off), got {self.mixup}"
        if self.teacher is not None:
            from compressor.models import check_model_spec

            yield from check_model_spec(self.teacher, "teacher")


@dataclass
class DistillParams:
    train: TrainSettings = flat(TrainSettings, epochs=5)
    distill: DistillSettings = flat(DistillSettings)

    def check(self):
        if self.train.epochs == 0:
            yield "epochs", "must be >= 1"


def _outputs(out) -> torch.Tensor:
    return getattr(out, "logits", out)


@contextlib.contextmanager
def _capture(model: nn.Module, names: list[str], key: str):
    """Outputs of the named layers during each forward, in `store`."""
    store: dict[str, torch.Tensor] = {}
    layers = dict(model.named_modules())
    hooks = []
    for n in names:
        if n not in layers:
            raise UserError(f"no layer named '{n}'", key=key)
        hooks.append(layers[n].register_forward_hook(lambda m, i, o, n=n: store.__setitem__(n, _outputs(o))))
    try:
        yield store
    finally:
        for h in hooks:
            h.remove()


def _adapter(s: torch.Tensor, t: torch.Tensor) -> nn.Module:
    """Maps a student feature to the teacher's width: 1x1 conv for maps, linear otherwise."""
    if s.dim() == 4:
        return nn.Conv2d(s.shape[1], t.shape[1], 1)
    return nn.Linear(s.shape[-1], t.shape[-1])


def distill(student: nn.Module, teacher: nn.Module, p: DistillSettings, train: TrainSettings, ctx: Context,
            description: str = "distill"):
    """Train `student` against `teacher` with the recipe's losses; returns the loop's FitResult."""
    teacher = teacher.to(ctx.device).eval().requires_grad_(False)
    labelled = ctx.data.labelled and p.loss == "kl"
    alpha = p.alpha if labelled else 1.0
    pairs = dict(p.hints)
    adapters = nn.ModuleDict()
    with _capture(student, list(pairs), "hints") as s_feats, _capture(teacher, list(pairs.values()), "hints") as t_feats:
        if pairs:  # build the adapters from one forward of each model
            x, _ = next(iter(ctx.data.train))
            with torch.no_grad():
                student.eval()(x.to(ctx.device))
                teacher(x.to(ctx.device))
            for i, (s, t) in enumerate(pairs.items()):
                if s_feats[s].shape[2:] != t_feats[t].shape[2:]:
                    raise UserError(f"student layer '{s}' gives {tuple(s_feats[s].shape[1:])}, teacher layer '{t}' "
                                    f"{tuple(t_feats[t].shape[1:])}: only the channel count may differ", key="hints")
                adapters[str(i)] = _adapter(s_feats[s], t_feats[t]).to(ctx.device)

        def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            lam, perm = 1.0, None
            if p.mixup > 0 and x.is_floating_point():  # token ids cannot be mixed
                lam = float(torch.distributions.Beta(p.mixup, p.mixup).sample())
                perm = torch.randperm(len(x), device=x.device)
                x = lam * x + (1 - lam) * x[perm]
            out = _outputs(model(x))
            with torch.no_grad():
                ref = _outputs(teacher(x))
            if p.loss == "kl" and out.dim() == 3:  # a causal LM: one next-token distribution per position
                out, ref, y = out.flatten(0, 1), ref.flatten(0, 1), y.flatten()
            if p.loss == "kl":
                T = p.temperature
                soft = F.kl_div(F.log_softmax(out / T, -1), F.softmax(ref / T, -1), reduction="batchmean") * T * T
                hard = 0.0
                if alpha < 1:
                    hard = lam * F.cross_entropy(out, y) + (F.cross_entropy(out, y[perm]) * (1 - lam) if perm is not None else 0.0)
                loss = alpha * soft + (1 - alpha) * hard
            elif p.loss == "mse":
                loss = F.mse_loss(out, ref)
            else:
                loss = (1 - F.cosine_similarity(out.flatten(1), ref.flatten(1))).mean()
            for i, (s, t) in enumerate(pairs.items()):
                loss = loss + p.hint_weight * F.mse_loss(adapters[str(i)](s_feats[s]), t_feats[t])
            return loss

        return fit(student, ctx.data.train, **train.fit_options(), loss_fn=loss_fn, extra=adapters,
                   **ctx.training(description))


def teacher_for(p: DistillSettings, ctx: Context) -> nn.Module:
    if p.teacher is None:
        return ctx.teacher
    from compressor.models import build_model

    return build_model(p.teacher)  # checked with the plan (check_model_spec)


class Distill:
    """Knowledge distillation from the model before the pipeline (or a given teacher)."""

    params: DistillParams
    deterministic = ("cpu",)  # trains: CUDA's backward kernels accumulate with atomics, so bit-exact on CPU only

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params.distill
        result = distill(model, teacher_for(p, ctx), p, self.params.train, ctx)
        ctx.notes.update(result.notes(), loss=p.loss, labels_used=ctx.data.labelled and p.loss == "kl" and p.alpha < 1)
        return model.eval()
