"""Multi-process training under `torchrun`: every process runs the pipeline, training stages
split each epoch across processes (DistributedDataParallel), and only rank 0 writes anything.
Without torchrun's environment everything here is a no-op."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def init(device: torch.device) -> None:
    """Join the process group torchrun set up (gloo on CPU, NCCL on GPU); once per process."""
    if world_size() > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def device_for(device: torch.device) -> torch.device:
    """Each process takes its own GPU (LOCAL_RANK); CPU stays CPU."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def all_sum(values: list[float], device: torch.device) -> list[float]:
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def average_grads(params, world: int) -> None:
    """Average gradients of parameters outside the DDP-wrapped model (distillation adapters)."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
