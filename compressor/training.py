"""The one training loop every training stage uses (fine-tuning now; distillation, QAT and
gradual pruning build on it). Keeps pruned weights at zero while it trains."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def sparsity_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Masks of the weights a pruning stage zeroed, so training does not regrow them."""
    masks = {}
    for name, p in model.named_parameters():
        if p.dim() > 1:
            zeros = p.detach() == 0
            if zeros.any():
                masks[name] = ~zeros
    return masks


def make_optimizer(params, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")


def fit(
    model: nn.Module,
    loader: DataLoader,
    epochs: int,
    lr: float = 1e-3,
    optimizer: str = "adamw",
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    loss_fn: LossFn = cross_entropy,
    device: torch.device | str = "cpu",
    progress=None,
    description: str = "train",
    extra: nn.Module | None = None,
) -> list[float]:
    """Train in place; returns the mean loss of each epoch. `extra`: modules trained along
    with the model but not part of it (distillation adapters)."""
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if extra is not None:
        params += list(extra.to(device).train().parameters())
    opt = make_optimizer(params, optimizer, lr, weight_decay)
    steps = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if schedule == "cosine" else None
    masks = {n: m.to(device) for n, m in sparsity_masks(model).items()}
    named = dict(model.named_parameters())
    task = progress.add_task(description, total=steps) if progress is not None else None
    history = []
    for _ in range(epochs):
        total, count = 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            with torch.no_grad():
                for n, m in masks.items():
                    named[n].mul_(m)
            total += loss.item() * len(x)
            count += len(x)
            if task is not None:
                progress.advance(task)
        history.append(total / max(count, 1))
    if task is not None:
        progress.remove_task(task)
    return history


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> float:
    model.to(device).eval()
    right = total = 0
    for x, y in loader:
        right += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
        total += len(y)
    return right / max(total, 1)
