"""What this machine offers, and what the project decides because of it: `compressor env`, and
`environment` in every report.json (a number is only comparable with the machine it came from).

Fast and side-effect free: versions come from installed metadata (importing onnxruntime or
openvino takes seconds), CPU flags from /proc/cpuinfo, GPU names from the NVIDIA driver's /proc
files (asking torch for them would start CUDA)."""
from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from compressor.modules.quant import X86_MACHINES, needs_reduce_range
from compressor.registry import TARGETS

# CPU features that decide INT8 speed and accuracy: VNNI/AMX give exact u8 x s8 dot products
# (without them reduce_range applies); AVX-512/AMX BF16 and ARM dotprod/i8mm pick fast kernels
X86_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
ARM_FEATURES = {"asimd": "neon", "neon": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "bf16": "bf16", "sve": "sve"}
# runtimes and model libraries worth knowing the version of, besides the extras' packages
PACKAGES = ("compressor", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "nncf", "tensorrt",
            "compressor-tensorrt", "executorch", "litert-torch", "ai-edge-litert", "ai-edge-quantizer", "coremltools",
            "transformers", "llama-cpp-python", "auto-round", "torch-pruning", "torchvision", "timm", "onnx2torch")
# targets that build anywhere but whose engine runs only on one system (the others say so in requires())
RUNS_ONLY_ON = {"coreml": ("Darwin", "builds here; runs only on macOS (engine/measure_on_mac.py measures it there)")}


def _cpuinfo() -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo ({} off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu() -> dict[str, Any]:
    info, arch = _cpuinfo(), platform.machine()
    if arch.lower() in X86_MACHINES:
        present = set(info.get("flags", "").split())
        flags = [f for f in X86_FLAGS if f in present]
    else:  # ARM: Linux lists Features; AArch64 has NEON by definition
        present = set(info.get("Features", "").split())
        flags = list(dict.fromkeys(name for f, name in ARM_FEATURES.items() if f in present))
        if arch.lower() in ("aarch64", "arm64") and "neon" not in flags:
            flags.insert(0, "neon")
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = os.cpu_count()
    return {"model": info.get("model name") or info.get("Hardware") or platform.processor() or arch,
            "arch": arch, "cores": os.cpu_count(), "usable_cores": usable, "flags": flags}


def gpu() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            names += [line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("Model:")]
        except OSError:
            pass
    if cuda and not names and torch.cuda.is_initialized():  # no driver files (WSL): CUDA is started already
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    return {"cuda": cuda, "cuda_version": torch.version.cuda, "gpus": names,
            "mps": bool(mps and mps.is_available())}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def extras() -> dict[str, list[str]]:
    """Extra -> the distributions it installs: from pyproject.toml in a source checkout (newer than
    what an editable install recorded), else from the installed metadata."""
    found: dict[str, list[str]] = {}
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        import tomllib

        project = tomllib.loads(pyproject.read_text())["project"]
        if project["name"] == "compressor":
            found = {extra: list(reqs) for extra, reqs in project.get("optional-dependencies", {}).items()}
    except (ImportError, OSError, KeyError, ValueError):  # Python 3.10, or an installed package
        try:
            requires = metadata.requires("compressor") or []
        except metadata.PackageNotFoundError:  # run from a source tree that was never installed
            requires = []
        for req in requires:
            m = re.search(r"""extra\s*==\s*["']([^"']+)["']""", req)
            if m:
                found.setdefault(m.group(1), []).append(req.split(";")[0])
    out = {}
    for extra, reqs in found.items():
        names = []
        for req in reqs:
            m = re.match(r"compressor\[([^\]]+)\]", req)  # an extra made of extras
            names += [n for e in m.group(1).split(",") for n in _names(found.get(e.strip(), []))] if m else _names([req])
        out[extra] = list(dict.fromkeys(names))
    return out


def _names(reqs: list[str]) -> list[str]:
    return [re.match(r"[A-Za-z0-9._-]+", r.strip()).group(0) for r in reqs if r.strip()]


def reduce_range() -> dict[str, Any]:
    """What `reduce_range: auto` (quantize_int8, quantize_dynamic) resolves to here, and why."""
    reduce = needs_reduce_range()
    if reduce:
        why = "x86 without VNNI/AMX: u8 x s8 pairwise sums saturate int16, so INT8 weights get 7 bits"
    elif platform.machine().lower() in X86_MACHINES:
        why = "VNNI/AMX present: exact INT8 dot products, full 8-bit weights"
    else:
        why = "not x86: full 8-bit weights"
    return {"value": reduce, "why": why}


def missing(entry) -> list[str]:
    """What a registered target still needs here (installs, hardware): its requires(), one line each."""
    requires = getattr(entry.obj, "requires", None)
    return [msg for _, msg in (requires(entry.params()) if requires and entry.params else [])]


def targets() -> dict[str, dict[str, Any]]:
    out = {}
    for name in TARGETS.names():
        try:
            lacks = missing(TARGETS.get(name))
        except Exception as e:  # a plugin's check that fails is a fact about this machine too
            lacks = [f"{type(e).__name__}: {e}"]
        system, note = RUNS_ONLY_ON.get(name, (None, ""))
        runs = not lacks and (system is None or platform.system() == system)
        out[name] = {"builds": not lacks, "runs": runs, "why": "; ".join(lacks) or ("" if runs else note)}
    return out


def facts() -> dict[str, Any]:
    """The machine, the installed runtimes, and the decisions taken because of them."""
    wanted = extras()
    packages = dict.fromkeys(list(PACKAGES) + [n for names in wanted.values() for n in names])
    versions = {name: _version(name) for name in packages}
    return {
        "cpu": cpu(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": {"version": torch.__version__, **gpu()},
        "packages": {k: v for k, v in versions.items() if v is not None},
        "extras": {extra: {"installed": all(versions.get(n) for n in names),
                           "missing": [n for n in names if not versions.get(n)]} for extra, names in wanted.items()},
        "decisions": {"reduce_range": reduce_range(), "targets": targets()},
    }
