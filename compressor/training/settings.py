"""The settings of the training loop, declared once and composed into every stage that trains
(`finetune`, `distill`, `student`, `lowrank`, `depthwise`). Their keys sit flat in the stage's
recipe section (`stages.finetune.lr`), see `compressor.core.params.flat`."""
from __future__ import annotations

import math
from dataclasses import dataclass

from compressor.core.params import one_of
from compressor.training.loop import AMP, OPTIMIZERS, SCHEDULES


@dataclass
class TrainSettings:
    epochs: int = 3
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    accumulate: int = 1  # batches per optimizer step (gradient accumulation)
    amp: str = "auto"  # mixed precision: auto (bf16/fp16 on CUDA, off on CPU) | off | fp16 | bf16
    patience: int = 0  # early stopping: epochs without a better validation metric; 0 = off

    def check(self):
        if self.epochs < 0:
            yield "epochs", f"must be >= 0, got {self.epochs}"
        if not 0 < self.lr < math.inf:
            yield "lr", f"must be positive and finite, got {self.lr}"
        if not 0 <= self.weight_decay < math.inf:
            yield "weight_decay", f"must be >= 0 and finite, got {self.weight_decay}"
        yield from one_of(self.optimizer, OPTIMIZERS, "optimizer")
        yield from one_of(self.schedule, SCHEDULES, "schedule")
        yield from one_of(self.amp, AMP, "amp")
        if self.accumulate < 1:
            yield "accumulate", f"must be >= 1, got {self.accumulate}"
        if self.patience < 0:
            yield "patience", f"must be >= 0, got {self.patience}"

    def fit_options(self) -> dict:
        """`fit`'s keyword arguments, epochs first: fit(model, loader, **settings.fit_options(), ...)."""
        return dict(epochs=self.epochs, lr=self.lr, optimizer=self.optimizer, weight_decay=self.weight_decay,
                    schedule=self.schedule, accumulate=self.accumulate, amp=self.amp, patience=self.patience)
