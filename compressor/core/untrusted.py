"""Files a user hands the program (checkpoints, engines) are data: they cannot run code, and
what they reference stays in their folder.

- Torch pickles (.pt/.pth checkpoints, the tensors inside a .pt2 archive) load through
  PyTorch's restricted unpickler. A full pickle loads only after the command-line flag
  `--trust-pickle`, which sets `trust_pickle`; no recipe value or environment variable can.
- An ONNX file's external data must be files inside the model's folder: ONNX Runtime would
  otherwise read any file the location names (or, with its `*/_ORT_MEM_ADDR_/*` location,
  process memory) into a tensor."""
from __future__ import annotations

import logging
import os
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from compressor.core.files import file_problem
from compressor.errors import UserError

trust_pickle = False  # set only by `compressor ... --trust-pickle`
HINT = "rerun with --trust-pickle only if you trust whoever made the file"


def torch_load(path: str | Path, key: str) -> Any:
    import torch

    if trust_pickle:
        logging.getLogger("compressor").warning("--trust-pickle: loading %s as a full pickle", path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # weights_only refuses pickled code; damaged files land here too
        if trust_pickle:
            raise UserError(f"cannot read {path} ({type(e).__name__})", key=key) from e
        raise UserError(f"{path} is not plain tensors that load without running pickled code "
                        f"({type(e).__name__}); {HINT}", key=key) from e


@contextmanager
def _weights_only_everywhere():
    """torch.export.load unpickles with weights_only=False (and falls back to it); PyTorch's
    own switch makes every torch.load inside restricted."""
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def load_exported_program(path: str | Path, key: str = "engine"):
    """torch.export.load without running code the archive carries."""
    import torch

    if trust_pickle:
        logging.getLogger("compressor").warning("--trust-pickle: loading %s with full pickles", path)
        return torch.export.load(str(path))
    try:
        names = zipfile.ZipFile(path).namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise UserError(f"{path} is not a torch.export archive ({type(e).__name__})", key=key) from e
    # opaque objects are read with pickle.loads, custom objects with TorchScript's unpickler
    objects = [n for n in names if "/constants/opaque_obj" in n or "/constants/custom_obj" in n]
    if objects:
        raise UserError(f"{path} holds pickled Python objects ({objects[0]}); {HINT}", key=key)
    try:
        with _weights_only_everywhere():
            return torch.export.load(str(path))
    except Exception as e:
        raise UserError(f"cannot load {path} without running pickled code ({type(e).__name__}); {HINT}", key=key) from e


ORT_MEMORY = "*/_ORT_MEM_ADDR_/*"  # ONNX Runtime reads this location from a memory address


def _tensors(graph):
    """Every tensor of a graph that can hold external data, subgraphs included."""
    yield from graph.initializer
    for s in graph.sparse_initializer:
        yield from (s.values, s.indices)
    yield from _node_tensors(graph.node)


def _node_tensors(nodes):
    for node in nodes:
        for a in node.attribute:
            yield from ([a.t] if a.HasField("t") else [])
            yield from a.tensors
            for s in ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(a.sparse_tensors):
                yield from (s.values, s.indices)
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _tensors(g)


def _inside(folder: Path, location: str) -> bool:
    """A relative path with no `..`, naming a file whose real path (symlinks followed) is in folder."""
    if not location or location == ORT_MEMORY or Path(location).is_absolute() or ".." in Path(location).parts:
        return False
    try:
        target = (folder / location).resolve()
        return target.is_relative_to(folder) and target.is_file()
    except (OSError, ValueError):  # a NUL byte, a symlink loop
        return False


def check_onnx_external_data(path: str | Path, key: str = "engine") -> None:
    """Refuse an ONNX file whose external data lies outside its folder; reads no external data."""
    import onnx
    from onnx import TensorProto

    path = Path(path)
    problem = file_problem(path, ("onnx",))  # a text file, a pickle, an empty file: said in its own words
    if problem:
        raise UserError(problem, key=key)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # not an ONNX protobuf
        raise UserError(f"{path} is not an ONNX model ({type(e).__name__})", key=key) from e
    folder = path.parent.resolve()
    functions = [n for f in model.functions for n in f.node]
    for tensor in [*_tensors(model.graph), *_node_tensors(functions)]:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not _inside(folder, location):
            raise UserError(f"{path}: tensor '{tensor.name}' keeps its data at {location!r}, which is not a file "
                            f"inside the model's folder {folder}; refused", key=key)
