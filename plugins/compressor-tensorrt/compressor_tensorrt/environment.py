"""What this machine offers TensorRT: the package, the GPUs, the cache folder.

TensorRT is imported only here and only when asked for, so the plugin installs, registers
and validates on machines without it."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from compressor.errors import UserError

INSTALL = "pip install compressor-tensorrt[tensorrt] on a machine with an NVIDIA GPU"
SUPPORTED_MAJOR = 10  # the TensorRT Python API this plugin is written against


def tensorrt_problem() -> str | None:
    """None when TensorRT 10 imports, else one line saying what to do."""
    try:
        import tensorrt as trt
    except (ImportError, OSError):  # OSError: the wheel is there but its libraries are not
        return "TensorRT is not installed"
    version = getattr(trt, "__version__", "?")
    if not version.startswith(f"{SUPPORTED_MAJOR}."):
        return f"TensorRT {version} is installed but this target is written for TensorRT {SUPPORTED_MAJOR}"
    return None


def import_tensorrt(key: str = "target"):
    """The tensorrt module, or a UserError naming what to install."""
    problem = tensorrt_problem()
    if problem:
        raise UserError(f"{problem}: {INSTALL}", key=key)
    import tensorrt as trt

    return trt


def cuda_problem(device: int) -> tuple[str, str] | None:
    """(key, message) when CUDA device `device` cannot be used, else None."""
    import torch

    if not torch.cuda.is_available():
        return "", ("this machine has no CUDA GPU (torch.cuda.is_available() is False): "
                    "TensorRT builds and runs engines on an NVIDIA GPU")
    count = torch.cuda.device_count()
    if device >= count:
        return "device", f"no CUDA device {device}: this machine has {count} (0..{count - 1})"
    return None


def gpu_info(device: int) -> dict[str, Any]:
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}",
            "capability": (major, minor)}


def default_timing_cache(tensorrt_version: str, gpu: dict[str, Any]) -> Path:
    """One timing cache per TensorRT version and GPU model, in the user's cache folder
    ($XDG_CACHE_HOME or ~/.cache): timings measured on one GPU mean nothing on another."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu["name"]).strip("-").lower()
    sm = gpu["compute_capability"].replace(".", "")
    return root / "compressor" / "tensorrt" / f"trt{tensorrt_version}-{slug}-sm{sm}.timing-cache"
