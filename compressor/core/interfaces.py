"""What plugs into the runner: the protocols a stage, target and engine follow, and the
context a stage receives. Plain Protocols and dataclasses; nothing to inherit."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from compressor.errors import UserError


@dataclass
class DataSplits:
    """What a dataset gives the runner. Loaders yield (inputs, labels) batches."""

    train: DataLoader
    val: DataLoader
    calib: DataLoader  # unlabelled use is fine: calibration reads inputs only
    num_classes: int | None
    input_shape: tuple[int, ...]  # one sample, e.g. (1, 8, 8)
    labelled: bool = True  # False for synthetic data: no metric can be measured

    def example_input(self, batch: int = 1) -> torch.Tensor:
        x, _ = next(iter(self.val))
        return x[:batch].clone()


@dataclass
class Handoff:
    """What a stage leaves for the stages after it, one typed field per kind of message (the runner
    saves it with each stage's checkpoint, so a resumed run has it too)."""

    # per-layer pruning ratios by exact module name: written by `sensitivity`, read by `prune_structured`
    layer_ratios: dict[str, float] | None = None
    # the model spec of a new architecture (`student` writes it): checkpoints rebuild the model from it
    model: dict[str, Any] | None = None


@dataclass
class Context:
    """Everything a stage may use. A stage returns a model; it writes no files."""

    data: DataSplits
    device: torch.device
    teacher: nn.Module  # the model as it was before the pipeline, frozen
    evaluate: Callable[[nn.Module], dict[str, float]]  # metric of a model on the validation split
    log: logging.Logger
    progress: Any  # rich Progress shared by the run
    seed: int = 0
    notes: dict[str, Any] = field(default_factory=dict)  # what a stage wants in the report
    handoff: Handoff = field(default_factory=Handoff)  # what a stage leaves for later stages; not reset
    score: Callable[[nn.Module], float | None] | None = None  # the recipe's metric, higher is better
    train_dir: Path | None = None  # where the running stage's training keeps its resumable state

    def require_labels(self, stage: str) -> None:
        """Training on labels needs labelled data; a user with unlabelled data is told what to use."""
        if not self.data.labelled:
            raise UserError(f"{stage} trains on labels and this data has none; distill from the model instead "
                            "(the `distill` stage learns from its outputs)")

    def training(self, name: str) -> dict[str, Any]:
        """The run's side of `training.fit`: device, progress bar, early-stopping metric and a
        resumable state file per named training run (a stage may train more than once)."""
        state = self.train_dir / (re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") + ".safetensors") if self.train_dir else None
        return dict(device=self.device, progress=self.progress, description=name, validate=self.score,
                    state_path=state, seed=self.seed)

    @property
    def example_input(self) -> torch.Tensor:
        return self.data.example_input(1).to(self.device)


@runtime_checkable
class Stage(Protocol):
    """A compression step. The runner sets `self.params` (the stage's params dataclass)."""

    params: Any

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module: ...


@runtime_checkable
class Engine(Protocol):
    """A built, runnable artifact. Called on a numpy batch, returns numpy outputs."""

    path: Path
    precision: str
    provider: str

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Target(Protocol):
    """Builds an engine from a model into `out_dir`; `load` reopens a built artifact."""

    params: Any

    def build(self, model: nn.Module, ctx: Context, out_dir: Path) -> Engine: ...

    @staticmethod
    def load(path: Path) -> Engine: ...
