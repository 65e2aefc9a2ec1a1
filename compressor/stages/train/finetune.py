"""Fine-tune on the training split with the shared loop; pruned zeros stay zero."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from compressor.core.interfaces import Context
from compressor.core.params import flat
from compressor.training.loop import fit
from compressor.training.settings import TrainSettings


@dataclass
class FinetuneParams:
    train: TrainSettings = flat(TrainSettings)


class Finetune:
    """Fine-tune on the training split (cross-entropy), keeping pruned weights at zero."""

    params: FinetuneParams
    deterministic = ("cpu",)  # trains: CUDA's backward kernels accumulate with atomics, so bit-exact on CPU only

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        ctx.require_labels("finetune")
        ctx.notes.update(fit(model, ctx.data.train, **p.train.fit_options(), **ctx.training("finetune")).notes())
        return model.eval()
