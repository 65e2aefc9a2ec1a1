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

from compressor.core import distributed
from compressor.errors import UserError
from compressor.core.state import load_state, rng_state, save_state, set_rng_state

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


@dataclass
class _Loop:
    """The moving parts of one `fit` call, and its three steps: an epoch, the early-stopping
    bookkeeping, and the resumable state."""

    model: nn.Module
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    extra: nn.Module | None
    loader: DataLoader
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None  # autocast dtype, None: no mixed precision
    device: torch.device
    accumulate: int
    loss_fn: LossFn
    result: FitResult
    masks: dict[str, torch.Tensor]  # pruned weights stay zero
    best_score: float | None = None
    best_weights: dict[str, torch.Tensor] | None = None
    seen: int = 0  # samples trained on, all processes

    def epoch(self, epoch: int, tick: Callable[[int], None]) -> float:
        """One pass over the loader; the mean loss over all processes."""
        world, net = self.result.world_size, self.net
        if world > 1:
            self.loader.sampler.set_epoch(epoch)
        named = dict(self.model.named_parameters())
        extra_params = list(self.extra.parameters()) if self.extra is not None else []
        total, count = 0.0, 0
        for i, (x, y) in enumerate(self.loader):
            x, y = x.to(self.device), y.to(self.device)
            last = (i + 1) % self.accumulate == 0 or i + 1 == len(self.loader)
            sync = net.no_sync() if world > 1 and not last else contextlib.nullcontext()
            with sync:  # under DDP, gradients are averaged only on the step that applies them
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                    loss = self.loss_fn(net, x, y)
                self.scaler.scale(loss / self.accumulate).backward()
            if last:
                if world > 1 and extra_params:
                    distributed.average_grads(extra_params, world)
                self.scaler.step(self.opt)
                self.scaler.update()
                self.opt.zero_grad(set_to_none=True)
                if self.sched is not None:
                    self.sched.step()
                with torch.no_grad():
                    for n, m in self.masks.items():
                        named[n].mul_(m)
            total += loss.item() * len(x)
            count += len(x)
            self.seen += len(x) * world
            tick(epoch)
        total, count = distributed.all_sum([total, count], self.device)
        return total / max(count, 1)

    def early_stopping(self, epoch: int, score: float | None, patience: int) -> None:
        """Keep the best epoch's weights; stop after `patience` epochs without a better score."""
        if score is None:
            raise UserError("early stopping needs the recipe's metric, which this data cannot measure", key="patience")
        self.model.train()
        if self.best_score is None or score > self.best_score:
            self.best_score, self.result.best_epoch = score, epoch + 1
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        elif epoch + 1 - self.result.best_epoch >= patience:
            self.result.stopped_early = True

    def state(self, done: bool, generator) -> dict:
        r = self.result
        return {"model": self.model.state_dict(), "extra": self.extra.state_dict() if self.extra is not None else {},
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict() if self.sched else {},
                "scaler": self.scaler.state_dict(), "rng": rng_state(generator), "losses": r.losses,
                "epoch": len(r.losses), "done": done, "best_score": self.best_score, "best_epoch": r.best_epoch,
                "best": self.best_weights or {}, "stopped_early": r.stopped_early}

    def restore(self, s: dict, generator) -> int:
        """Continue from a saved state; returns the epochs it had done."""
        self.model.load_state_dict(s["model"])
        if self.extra is not None:
            self.extra.load_state_dict(s["extra"])
        self.opt.load_state_dict(s["optimizer"])
        if self.sched is not None:
            self.sched.load_state_dict(s["scheduler"])
        if s["scaler"]:
            self.scaler.load_state_dict(s["scaler"])
        set_rng_state(s["rng"], generator)
        r = self.result
        r.losses, r.resumed_from, r.stopped_early = list(s["losses"]), int(s["epoch"]), bool(s["stopped_early"])
        self.best_score, r.best_epoch, self.best_weights = s["best_score"], s["best_epoch"], s["best"] or None
        return r.resumed_from


def _loop(model: nn.Module, loader: DataLoader, epochs: int, lr: float, optimizer: str, weight_decay: float,
          schedule: str, accumulate: int, amp: str, loss_fn: LossFn, device: torch.device, extra: nn.Module | None,
          seed: int) -> _Loop:
    """Optimizer, schedule, loss scaler, masks and the DDP wrapper, for `fit`."""
    dtype = amp_dtype(amp, device)
    world = distributed.world_size() if distributed.active() else 1
    model.to(device).train()
    extra_params = list(extra.to(device).train().parameters()) if extra is not None else []
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad] + extra_params, optimizer, lr, weight_decay)
    net = model
    if world > 1:
        loader = _shard(loader, seed)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    steps = max(1, epochs * math.ceil(len(loader) / accumulate))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if schedule == "cosine" else None
    result = FitResult(losses=[], amp={torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "off"), world_size=world)
    return _Loop(model, net, extra, loader, opt, sched, torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
                 dtype, device, accumulate, loss_fn, result, {n: m.to(device) for n, m in sparsity_masks(model).items()})


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
    loop = _loop(model, loader, epochs, lr, optimizer, weight_decay, schedule, accumulate, amp, loss_fn,
                 torch.device(device), extra, seed)
    result, generator = loop.result, getattr(loop.loader, "generator", None)  # the shuffle order, restored on resume
    start = 0
    if state_path is not None and Path(state_path).is_file():
        saved = load_state(Path(state_path))
        start = loop.restore(saved, generator)
        if saved["done"]:
            return result

    task = progress.add_task(description, total=(epochs - start) * len(loop.loader)) if progress is not None else None
    began = time.perf_counter()

    def tick(epoch: int) -> None:
        if task is not None:
            rate = loop.seen / max(time.perf_counter() - began, 1e-9)
            progress.update(task, advance=1, description=f"{description} · epoch {epoch + 1}/{epochs} · {rate:,.0f} samples/s")

    for epoch in range(start, epochs):
        result.losses.append(loop.epoch(epoch, tick))
        if patience > 0:
            loop.early_stopping(epoch, validate(model) if validate is not None else None, patience)
        finished = result.stopped_early or epoch + 1 == epochs
        if finished and loop.best_weights is not None:
            model.load_state_dict(loop.best_weights)
        if state_path is not None and distributed.is_main():
            save_state(Path(state_path), loop.state(finished, generator))
        if result.stopped_early:
            break
    result.samples_per_s = loop.seen / max(time.perf_counter() - began, 1e-9)
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
