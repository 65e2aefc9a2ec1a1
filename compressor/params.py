"""Turn a recipe section into its registered params dataclass, collecting every problem."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf

from compressor.errors import Problem, did_you_mean, short

# Keys every section may hold besides its params: the registry name it selects.
RESERVED = ("kind",)


def parse_params(cls: type | None, section: dict[str, Any], prefix: str) -> tuple[Any, list[Problem]]:
    """Build `cls` from `section` (minus reserved keys). Returns (instance or None, problems).

    Each problem names its full key. A params class may define `check(self)` yielding
    (field, message) pairs for value constraints that types cannot say."""
    if isinstance(section, DictConfig):
        section = OmegaConf.to_container(section, resolve=True)
    values = {k: v for k, v in section.items() if k not in RESERVED}
    if cls is None:
        return None, [Problem(f"{prefix}.{k}", "unknown key (this component takes no parameters)") for k in values]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems: list[Problem] = []
    schema = OmegaConf.structured(cls)
    for k, v in values.items():
        if k not in fields:
            problems.append(Problem(f"{prefix}.{k}", f"unknown key{did_you_mean(k, fields)}; valid keys: {', '.join(fields)}"))
            continue
        try:
            OmegaConf.merge(schema, {k: v})
        except Exception:  # OmegaConf's ValidationError family
            hint = _type_name(cls, k)
            problems.append(Problem(f"{prefix}.{k}", f"expected {hint}, got {short(v)}"))
    if problems:
        return None, problems
    merged = OmegaConf.merge(schema, {k: v for k, v in values.items()})
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        return None, [Problem(f"{prefix}.{k}", "required value is missing") for k in missing]
    obj = OmegaConf.to_object(merged)
    check = getattr(obj, "check", None)
    if check is not None:
        problems += [Problem(f"{prefix}.{k}", msg) for k, msg in check()]
    return (None if problems else obj), problems


def _type_name(cls: type, name: str) -> str:
    hint = typing.get_type_hints(cls).get(name)
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def describe(cls: type | None) -> str:
    """'ratio: float = 0.5, scope: str = global' for `compressor ls`."""
    if cls is None:
        return ""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "???")
        out.append(f"{f.name}: {getattr(hints[f.name], '__name__', str(hints[f.name]).replace('typing.', ''))} = {default}")
    return ", ".join(out)


def one_of(value: Any, choices, name: str):
    """For `check()`: yields a problem when value is not among choices."""
    if value not in choices:
        yield name, f"must be one of {', '.join(map(str, choices))}, got {short(value)}{did_you_mean(value, choices)}"
