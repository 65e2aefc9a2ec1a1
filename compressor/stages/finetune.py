"""Fine-tune on the training split with the shared loop; pruned zeros stay zero."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from compressor.interfaces import Context
from compressor.params import one_of
from compressor.training import OPTIMIZERS, SCHEDULES, fit


@dataclass
class FinetuneParams:
    epochs: int = 3
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    schedule: str = "cosine"

    def check(self):
        if self.epochs < 0:
            yield "epochs", f"must be >= 0, got {self.epochs}"
        if not self.lr > 0:
            yield "lr", f"must be positive, got {self.lr}"
        yield from one_of(self.optimizer, OPTIMIZERS, "optimizer")
        yield from one_of(self.schedule, SCHEDULES, "schedule")

    def fit_options(self) -> dict:
        """The training loop's settings, for every stage that trains with these params."""
        return dict(lr=self.lr, optimizer=self.optimizer, weight_decay=self.weight_decay, schedule=self.schedule)


class Finetune:
    """Fine-tune on the training split (cross-entropy), keeping pruned weights at zero."""

    params: FinetuneParams

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        losses = fit(model, ctx.data.train, p.epochs, **p.fit_options(), device=ctx.device,
                     progress=ctx.progress, description="finetune")
        ctx.notes["epoch_loss"] = [round(v, 5) for v in losses]
        return model.eval()
