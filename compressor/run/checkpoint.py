"""Checkpoints: safetensors weights plus the metadata that rebuilds the architecture.

No pickles. The metadata holds the model's recipe entry (registry kind + params) and a
spec of every layer whose shape or type a stage changed (pruned channels, quantization
wrappers, factorised pairs, removed blocks), plus each module's plain scalar attributes (attention head counts).
Loading builds the model from its recipe entry, swaps in the changed layers from a fixed
table of module types, restores the scalars, then loads the weights strictly.
Nothing in the metadata can name code to import.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from compressor.core.atomic import atomic_path
from compressor.errors import UserError
from compressor.models import build_model
from compressor.modules.factorized import Factorized
from compressor.modules.quant import QuantEmbedding, QuantWrapper, WeightOnly, float_dtype

FORMAT = "compressor-checkpoint/1"

_CONV = ["in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"]
_BN = ["num_features", "eps", "momentum", "affine", "track_running_stats"]
# type name -> (class, constructor attributes). The only types a checkpoint can create.
MODULE_TYPES: dict[str, tuple[type, list[str]]] = {
    "Conv1d": (nn.Conv1d, _CONV),
    "Conv2d": (nn.Conv2d, _CONV),
    "Conv3d": (nn.Conv3d, _CONV),
    "Linear": (nn.Linear, ["in_features", "out_features"]),
    "BatchNorm1d": (nn.BatchNorm1d, _BN),
    "BatchNorm2d": (nn.BatchNorm2d, _BN),
    "LayerNorm": (nn.LayerNorm, ["normalized_shape", "eps", "elementwise_affine"]),
    "Embedding": (nn.Embedding, ["num_embeddings", "embedding_dim", "padding_idx"]),
    "Identity": (nn.Identity, []),
    "MultiheadAttention": (nn.MultiheadAttention, ["embed_dim", "num_heads", "dropout", "batch_first"]),
}


def module_spec(m: nn.Module) -> dict[str, Any] | None:
    if isinstance(m, QuantWrapper):
        return {"type": "QuantWrapper", "weight_bits": m.weight_bits, "dynamic": m.dynamic,
                "quantize_output": m.quantize_output, "activations": m.activations, "inner": module_spec(m.inner)}
    if isinstance(m, QuantEmbedding):
        return {"type": "QuantEmbedding", "inner": module_spec(m.inner)}
    if isinstance(m, WeightOnly):
        return {"type": "WeightOnly", "bits": m.bits, "group_size": m.group_size, "symmetric": m.symmetric,
                "inner": module_spec(m.inner)}
    if isinstance(m, Factorized):  # a lowrank or depthwise pair: the spec of each layer, in order
        layers = [module_spec(c) for c in m]
        return None if None in layers else {"type": "Factorized", "layers": layers}
    name = type(m).__name__
    if name not in MODULE_TYPES or type(m) is not MODULE_TYPES[name][0]:
        return None
    spec: dict[str, Any] = {"type": name}
    for attr in MODULE_TYPES[name][1]:
        v = getattr(m, attr)
        spec[attr] = list(v) if isinstance(v, tuple) else v
    if name.startswith(("Conv", "Linear", "LayerNorm")):
        spec["bias"] = m.bias is not None
    return spec


def build_module(spec: dict[str, Any]) -> nn.Module:
    kind = spec.get("type")
    if kind == "QuantWrapper":
        return QuantWrapper(build_module(spec["inner"]), weight_bits=int(spec["weight_bits"]),
                            dynamic=bool(spec.get("dynamic", False)),
                            quantize_output=bool(spec.get("quantize_output", False)),
                            activations="per_token" if spec.get("activations") == "per_token" else "per_tensor")
    if kind == "QuantEmbedding":
        return QuantEmbedding(build_module(spec["inner"]))
    if kind == "WeightOnly":
        return WeightOnly(build_module(spec["inner"]), bits=int(spec["bits"]), group_size=int(spec["group_size"]),
                          symmetric=bool(spec["symmetric"]))
    if kind == "Factorized":
        return Factorized(*[build_module(s) for s in spec["layers"]])
    if kind not in MODULE_TYPES:
        raise UserError(f"checkpoint names unknown layer type {kind!r}", key="checkpoint")
    cls, attrs = MODULE_TYPES[kind]
    args = {a: tuple(spec[a]) if isinstance(spec[a], list) else spec[a] for a in attrs}
    if "bias" in spec:
        args["bias"] = spec["bias"]
    return cls(**args)


def layer_specs(model: nn.Module) -> dict[str, dict[str, Any]]:
    specs, skip = {}, ()
    for name, m in model.named_modules():
        if not name or (skip and name.startswith(skip)):
            continue
        spec = module_spec(m)
        if spec is not None:
            specs[name] = spec
            if isinstance(m, (QuantWrapper, QuantEmbedding, WeightOnly, Factorized)):  # their spec holds their children's
                skip = tuple(list(skip) + [name + "."])
    return specs


SCALARS = (bool, int, float)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def layer_attrs(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Plain scalar attributes of every module (head counts, head sizes, scaling...): pruning
    attention changes them without changing any layer type, and the forward pass reads them."""
    out = {}
    for name, m in model.named_modules():
        attrs = {k: v for k, v in vars(m).items() if not k.startswith("_") and type(v) in SCALARS and k != "training"}
        if attrs:
            out[name] = attrs
    return out


def apply_layer_attrs(model: nn.Module, attrs: dict[str, dict[str, Any]]) -> None:
    """Set recorded scalars back, only on attributes the rebuilt module already has with the
    same type: metadata can adjust numbers, never add behaviour."""
    modules = dict(model.named_modules())
    for name, values in attrs.items():
        m = modules.get(name)
        for k, v in values.items() if m is not None else ():
            if k in vars(m) and type(vars(m)[k]) is type(v):
                setattr(m, k, v)


def save_checkpoint(model: nn.Module, path: Path, model_cfg: dict[str, Any], extra: dict | None = None) -> Path:
    """Writes `path` (a .safetensors file) atomically."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "model": json.dumps(model_cfg),
        "layers": json.dumps(layer_specs(model)),
        "attrs": json.dumps(layer_attrs(model)),
        "dtype": str(float_dtype(model)).replace("torch.", ""),
        "extra": json.dumps(extra or {}),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
        sort_header(tmp)
    return path


def sort_header(path: Path) -> None:
    """Rewrite a safetensors header in sorted key order, in place. safetensors writes the
    metadata from a hash map, in a different order each run: sorted, the same model gives the
    same file (and sha256), so two runs can be compared by hash."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= n:  # the same JSON reordered; safetensors pads its header with spaces too
            f.seek(8)
            f.write(text + b" " * (n - len(text)))


def read_metadata(path: Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise UserError(f"{path} is not a readable safetensors file ({e})", key="checkpoint") from e
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} has no compressor architecture metadata", key="checkpoint")
    out = {k: json.loads(meta.get(k, "{}")) for k in ("model", "layers", "attrs", "extra")}
    out["dtype"] = meta.get("dtype", "float32")
    return out


def apply_layer_specs(model: nn.Module, specs: dict[str, dict[str, Any]]) -> nn.Module:
    """Make `model`'s layers match `specs` (by name), replacing those that differ."""
    current = layer_specs(model)
    for name in sorted(specs, key=lambda n: n.count(".")):
        if current.get(name) != specs[name]:
            model.set_submodule(name, build_module(specs[name]))
    return model


def fit_bare_params(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Resize parameters held directly by a module outside MODULE_TYPES (a ViT's class token and
    position embedding) to the saved tensors: pruning the hidden size changes them, and their
    shape is all there is to rebuild. Only existing parameters change; none are added."""
    modules = dict(model.named_modules())
    for key, t in tensors.items():
        owner, _, pname = key.rpartition(".")
        m = modules.get(owner)
        if m is None or type(m).__name__ in MODULE_TYPES or isinstance(m, QuantWrapper):
            continue
        current = m._parameters.get(pname)
        if current is not None and current.shape != t.shape:
            setattr(m, pname, nn.Parameter(torch.empty(t.shape, dtype=current.dtype), current.requires_grad))


def load_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild a model saved by `save_checkpoint`, with no pickle involved."""
    path = Path(path)
    meta = read_metadata(path)
    model = build_model(meta["model"], load_weights=False)
    apply_layer_specs(model, meta["layers"])
    apply_layer_attrs(model, meta["attrs"])
    if meta["dtype"] in DTYPES:  # after an fp16/bf16 stage
        model.to(DTYPES[meta["dtype"]])
    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    fit_bare_params(model, tensors)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{path}: weights do not fit the rebuilt model (missing {missing[:3]}, unexpected {unexpected[:3]})",
            key="checkpoint",
        )
    return model.eval()
