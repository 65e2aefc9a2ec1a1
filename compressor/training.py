"""The one training loop every training stage uses (fine-tuning, distillation, quantization-aware
training, gradual pruning). It keeps pruned weights at zero, accumulates gradients, runs mixed
precision on GPU, stops early on the validation metric, saves a resumable state after every
epoch, and splits epochs across processes under torchrun (DistributedDataParallel)."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from compressor import distributed
from compressor.errors import UserError
from compressor.state import load_state, rng_state, save_state, set_rng_state

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")
AMP = ("auto", "off", "fp16", "bf16")  # auto: bf16 (or fp16) on CUDA, off on CPU


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def sparsity_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Masks of the weights a pruning stage zeroed, so training does not regrow them."""
    masks = {}
    for name, p in model.named_parameters():
        if p.dim() > 1:
            zeros = p.detach() == 0
            if zeros.any() and not zeros.all():  # all zero: initialised so (a fresh head), not pruned
                masks[name] = ~zeros
    return masks


def make_optimizer(params, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if amp == "auto" and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


@dataclass
class FitResult:
    losses: list[float]  # mean training loss of each epoch run (resumed epochs included)
    resumed_from: int = 0  # epochs already done in the saved state this run continued from
    best_epoch: int | None = None  # with early stopping: the epoch whose weights were kept (1-based)
    stopped_early: bool = False
    samples_per_s: float = 0.0  # training throughput over all processes
    amp: str = "off"
    world_size: int = 1

    def notes(self) -> dict:
        out = {"epoch_loss": [round(v, 5) for v in self.losses], "samples_per_s": round(self.samples_per_s, 1)}
        if self.amp != "off":
            out["amp"] = self.amp
        if self.world_size > 1:
            out["world_size"] = self.world_size
        if self.resumed_from:
            out["resumed_from_epoch"] = self.resumed_from
        if self.best_epoch is not None:
            out.update(best_epoch=self.best_epoch, stopped_early=self.stopped_early)
        return out


def _shard(loader: DataLoader, seed: int) -> DataLoader:
    """The same loader, each process taking its share of every epoch."""
    sampler = DistributedSampler(loader.dataset, shuffle=True, seed=seed)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)


def fit(
    model: nn.Module,
    loader: DataLoader,
    epochs: int,
    lr: float = 1e-3,
    optimizer: str = "adamw",
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    accumulate: int = 1,
    amp: str = "auto",
    patience: int = 0,
    loss_fn: LossFn = cross_entropy,
    device: torch.device | str = "cpu",
    progress=None,
    description: str = "train",
    extra: nn.Module | None = None,
    validate: Callable[[nn.Module], float | None] | None = None,
    state_path: Path | None = None,
    seed: int = 0,
) -> FitResult:
    """Train in place. `extra`: modules trained along with the model but not part of it
    (distillation adapters). `patience` > 0: stop after that many epochs without a better
    `validate(model)` (higher is better) and keep the best epoch's weights. `state_path`: a
    resumable state written after every epoch; a run that finds one continues from it."""
    device = torch.device(device)
    dtype = amp_dtype(amp, device)
    world = distributed.world_size() if distributed.active() else 1
    model.to(device).train()
    extra_params = list(extra.to(device).train().parameters()) if extra is not None else []
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad] + extra_params, optimizer, lr, weight_decay)
    if world > 1:
        loader = _shard(loader, seed)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        net = model
    steps = max(1, epochs * math.ceil(len(loader) / accumulate))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if schedule == "cosine" else None
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    masks = {n: m.to(device) for n, m in sparsity_masks(model).items()}
    named = dict(model.named_parameters())
    generator = getattr(loader, "generator", None)  # the shuffle order, restored on resume
    result = FitResult(losses=[], amp={torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "off"), world_size=world)
    best_score, best_weights, start = None, None, 0

    def snapshot(done: bool) -> dict:
        return {"model": model.state_dict(), "extra": extra.state_dict() if extra is not None else {},
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched else {},
                "scaler": scaler.state_dict(), "rng": rng_state(generator), "losses": result.losses,
                "epoch": len(result.losses), "done": done, "best_score": best_score, "best_epoch": result.best_epoch,
                "best": best_weights or {}, "stopped_early": result.stopped_early}

    if state_path is not None and Path(state_path).is_file():
        s = load_state(Path(state_path))
        model.load_state_dict(s["model"])
        if extra is not None:
            extra.load_state_dict(s["extra"])
        opt.load_state_dict(s["optimizer"])
        if sched is not None:
            sched.load_state_dict(s["scheduler"])
        if s["scaler"]:
            scaler.load_state_dict(s["scaler"])
        set_rng_state(s["rng"], generator)
        result.losses, start = list(s["losses"]), int(s["epoch"])
        result.resumed_from, result.stopped_early = start, bool(s["stopped_early"])
        best_score, result.best_epoch, best_weights = s["best_score"], s["best_epoch"], s["best"] or None
        if s["done"]:
            return result

    task = progress.add_task(description, total=(epochs - start) * len(loader)) if progress is not None else None
    seen, began = 0, time.perf_counter()
    for epoch in range(start, epochs):
        if world > 1:
            loader.sampler.set_epoch(epoch)
        total, count = 0.0, 0
        for i, (x, y) in enumerate(loader):
            x, y = x.to(device), y.to(device)
            last = (i + 1) % accumulate == 0 or i + 1 == len(loader)
            sync = net.no_sync() if world > 1 and not last else contextlib.nullcontext()
            with sync:  # under DDP, gradients are averaged only on the step that applies them
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    loss = loss_fn(net, x, y)
                scaler.scale(loss / accumulate).backward()
            if last:
                if world > 1 and extra_params:
                    distributed.average_grads(extra_params, world)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                if sched is not None:
                    sched.step()
                with torch.no_grad():
                    for n, m in masks.items():
                        named[n].mul_(m)
            total += loss.item() * len(x)
            count += len(x)
            seen += len(x) * world
            if task is not None:
                rate = seen / max(time.perf_counter() - began, 1e-9)
                progress.update(task, advance=1, description=f"{description} · epoch {epoch + 1}/{epochs} · {rate:,.0f} samples/s")
        total, count = distributed.all_sum([total, count], device)
        result.losses.append(total / max(count, 1))
        if patience > 0:
            score = validate(model) if validate is not None else None
            if score is None:
                raise UserError("early stopping needs the recipe's metric, which this data cannot measure", key="patience")
            model.train()
            if best_score is None or score > best_score:
                best_score, result.best_epoch = score, epoch + 1
                best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif epoch + 1 - result.best_epoch >= patience:
                result.stopped_early = True
        finished = result.stopped_early or epoch + 1 == epochs
        if finished and best_weights is not None:
            model.load_state_dict(best_weights)
        if state_path is not None and distributed.is_main():
            save_state(Path(state_path), snapshot(done=finished))
        if result.stopped_early:
            break
    result.samples_per_s = seen / max(time.perf_counter() - began, 1e-9)
    if task is not None:
        progress.remove_task(task)
    return result


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> float:
    model.to(device).eval()
    right = total = 0
    for x, y in loader:
        right += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
        total += len(y)
    return right / max(total, 1)
