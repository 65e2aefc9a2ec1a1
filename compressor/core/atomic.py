"""Atomic file writes: a reader (or a killed run) sees the whole file or none of it."""
from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Delete the temporary files (`.<name>.tmp<pid>`) a killed run left under `folder`; they are
    never artifacts, and a resumed run writes its own."""
    gone = [p for p in Path(folder).rglob(".*.tmp*") if p.is_file() and p.name.rpartition(".tmp")[2].isdigit()]
    for p in gone:
        p.unlink()
    return gone


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Strict JSON: NaN and Inf (a broken engine's parity) are written as null, which every parser reads."""
    return write_text(path, json.dumps(_finite(data), indent=2, default=json_default, allow_nan=False) + "\n")


def _finite(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return _finite(o.item())
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
