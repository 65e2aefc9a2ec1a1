"""Turn a recipe section into its registered params dataclass, collecting every problem.

A params dataclass may compose settings shared by several components with `flat(...)`: their keys
sit flat in the recipe section beside the component's own (`stages.distill.lr`, not `.train.lr`),
and each key is declared once, in the settings class."""
from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf

from compressor.errors import Problem, did_you_mean, short

# Keys every section may hold besides its params: the registry name it selects.
RESERVED = ("kind",)


def flat(settings: type, **defaults: Any) -> Any:
    """A params field holding `settings` (a dataclass) whose keys the recipe gives flat:
    `train: TrainSettings = flat(TrainSettings, epochs=5)` gives the component `epochs`, `lr`, ...
    with this component's defaults."""
    return dataclasses.field(default_factory=functools.partial(settings, **defaults), metadata={"flat": True})


@functools.cache
def schema(cls: type) -> type:
    """The dataclass of the recipe keys of `cls`: its own fields, and the fields of each `flat`
    settings field in their place (with that field's defaults). `cls` itself when it has none."""
    if not any(f.metadata.get("flat") for f in dataclasses.fields(cls)):
        return cls
    hints, keys = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("flat"):
            keys.append((f.name, hints[f.name], dataclasses.field(default=f.default, default_factory=f.default_factory)))
            continue
        inner, defaults = typing.get_type_hints(hints[f.name]), f.default_factory()
        for g in dataclasses.fields(defaults):
            value = getattr(defaults, g.name)
            keys.append((g.name, inner[g.name], dataclasses.field(default_factory=functools.partial(copy.deepcopy, value))))
    return dataclasses.make_dataclass(f"{cls.__name__}Keys", keys)


def _nest(cls: type, keys: Any) -> Any:
    """An instance of `cls` from an instance of `schema(cls)`."""
    if schema(cls) is cls:
        return keys
    values = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("flat"):
            inner = type(f.default_factory())
            values[f.name] = inner(**{g.name: getattr(keys, g.name) for g in dataclasses.fields(inner)})
        else:
            values[f.name] = getattr(keys, f.name)
    return cls(**values)


def parse_params(cls: type | None, section: dict[str, Any], prefix: str) -> tuple[Any, list[Problem]]:
    """Build `cls` from `section` (minus reserved keys). Returns (instance or None, problems).

    Each problem names its full key. A params class (and a `flat` settings class) may define
    `check(self)` yielding (field, message) pairs for value constraints that types cannot say."""
    if isinstance(section, DictConfig):
        section = OmegaConf.to_container(section, resolve=True)
    values = {k: v for k, v in section.items() if k not in RESERVED}
    if cls is None:
        return None, [Problem(f"{prefix}.{k}", "unknown key (this component takes no parameters)") for k in values]
    keys = schema(cls)
    fields = {f.name: f for f in dataclasses.fields(keys)}
    problems: list[Problem] = []
    structured = OmegaConf.structured(keys)
    for k, v in values.items():
        if k not in fields:
            problems.append(Problem(f"{prefix}.{k}", f"unknown key{did_you_mean(k, fields)}; valid keys: {', '.join(fields)}"))
            continue
        try:
            OmegaConf.merge(structured, {k: v})
        except Exception:  # OmegaConf's ValidationError family
            hint = _type_name(keys, k)
            problems.append(Problem(f"{prefix}.{k}", f"expected {hint}, got {short(v)}"))
    if problems:
        return None, problems
    merged = OmegaConf.merge(structured, {k: v for k, v in values.items()})
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        return None, [Problem(f"{prefix}.{k}", "required value is missing") for k in missing]
    obj = _nest(cls, OmegaConf.to_object(merged))
    parts = [getattr(obj, f.name) for f in dataclasses.fields(obj) if f.metadata.get("flat")] + [obj]
    for part in parts:  # each settings class checks its own keys, then the component its own
        check = getattr(part, "check", None)
        if check is not None:
            problems += [Problem(f"{prefix}.{k}", msg) for k, msg in check()]
    return (None if problems else obj), problems


def _type_name(cls: type, name: str) -> str:
    hint = typing.get_type_hints(cls).get(name)
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def keys(cls: type | None) -> list[tuple[str, str, Any, str]]:
    """(recipe key, type, default, help) of each key of `cls`, for `compressor ls KIND NAME`. Defaults
    as a recipe writes them ("???": required). Help: a field's metadata["help"], else the `# comment`
    that documents it in the source (on its line, or the comment lines just above it)."""
    if cls is None:
        return []
    helps: dict[str, str] = {}
    for part in [type(f.default_factory()) for f in dataclasses.fields(cls) if f.metadata.get("flat")] + [cls]:
        for c in reversed(part.__mro__):
            if dataclasses.is_dataclass(c):
                helps.update(_comments(c))
                helps.update({f.name: f.metadata["help"] for f in dataclasses.fields(c) if "help" in f.metadata})
    flat_keys = schema(cls)
    defaults = OmegaConf.to_container(OmegaConf.structured(flat_keys))
    hints = typing.get_type_hints(flat_keys)
    return [(f.name, type_name(hints[f.name]), defaults[f.name], helps.get(f.name, ""))
            for f in dataclasses.fields(flat_keys)]


def type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


@functools.cache
def _comments(cls: type) -> dict[str, str]:
    """Field name -> the comment documenting it in the class body ({} when the source is not there)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
        tree = ast.parse(source)
        comments = {t.start[0]: t.string.lstrip("#").strip()
                    for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT}
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):  # built at run time, or no source shipped
        return {}
    lines = source.splitlines()
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        beside = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        above, n = [], node.lineno - 1
        while n in comments and lines[n - 1].lstrip().startswith("#"):  # a block of whole-line comments
            above.insert(0, comments[n])
            n -= 1
        text = " ".join(beside or above)
        if text:
            out[node.target.id] = text
    return out


def one_of(value: Any, choices, name: str):
    """For `check()`: yields a problem when value is not among choices."""
    if value not in choices:
        yield name, f"must be one of {', '.join(map(str, choices))}, got {short(value)}{did_you_mean(value, choices)}"
