"""Registries of stages, targets, models, datasets and metrics, by short name.

Built-ins are the explicit list in `compressor.builtins`, as "module:attribute" references: a
module is imported the first time one of its entries is used. Third-party packages register
through entry points (`compressor.stages`, ...), loaded the first time a registry is read; each
entry point names a module, and importing it runs its `@stage(...)`-style decorators.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from compressor.builtins import BUILTINS
from compressor.errors import UserError, did_you_mean


@dataclass
class Entry:
    name: str
    ref: Any  # class (stages, targets) or function (models, datasets, metrics), or "module:attribute"
    params_ref: Any  # dataclass of parameters, or "module:attribute", or None
    provider: str  # distribution that registered it

    @property
    def obj(self) -> Any:
        if isinstance(self.ref, str):
            self.ref = _resolve(self.ref)
        return self.ref

    @property
    def params(self) -> type | None:
        if isinstance(self.params_ref, str):
            self.params_ref = _resolve(self.params_ref)
        return self.params_ref

    @property
    def doc(self) -> str:
        lines = (self.obj.__doc__ or "").strip().splitlines()
        return lines[0] if lines else ""


def _resolve(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class Registry:
    kind: str  # "stage", "target", ...
    group: str  # entry point group
    entries: dict[str, Entry] = field(default_factory=dict)
    _plugins_loaded: bool = False

    def add(self, name: str, obj: Any, params: type | None = None, provider: str | None = None) -> None:
        if params is not None and not dataclasses.is_dataclass(params):
            raise TypeError(f"{self.kind} '{name}': params must be a dataclass, got {params!r}")
        provider = provider or _loading_plugin or _provider_of(obj)
        _load_builtins()  # a plugin's name that a built-in holds is refused, whichever registers first
        if name in self.entries:
            other = self.entries[name].provider
            raise UserError(
                f"{self.kind} '{name}' is registered twice: by {other} and by {provider}", key=self.kind
            )
        self.entries[name] = Entry(name, obj, params, provider)

    def get(self, name: str, key: str = "") -> Entry:
        self.load_plugins()
        if not isinstance(name, str):
            raise UserError(f"expected a {self.kind} name, got {name!r}", key=key or self.kind)
        if name not in self.entries:
            names = ", ".join(sorted(self.entries))
            raise UserError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self.entries)}; registered: {names}",
                key=key or self.kind,
            )
        return self.entries[name]

    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(self.entries)

    def load_plugins(self) -> None:
        _load_builtins()
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        global _loading_plugin
        for ep in metadata.entry_points(group=self.group):
            # the entry point knows its distribution: no scan of every installed package (~1 s) per plugin
            _loading_plugin = ep.dist.name if ep.dist else None
            try:
                ep.load()  # the module's decorators register into this registry
            except ImportError as e:
                raise UserError(f"plugin '{ep.name}' ({ep.value}) failed to import: {e}", key=self.kind) from e
            finally:
                _loading_plugin = None


_loading_plugin: str | None = None  # the distribution whose entry point is being imported


_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for kind, name, obj, params in BUILTINS:
            registry = next(r for r in ALL.values() if r.kind == kind)
            registry.entries[name] = Entry(name, obj, params, "compressor")


def _provider_of(obj: Any) -> str:
    module = getattr(obj, "__module__", "") or ""
    top = module.split(".")[0]
    if top == "compressor":
        return "compressor"
    dists = metadata.packages_distributions().get(top)
    return dists[0] if dists else top or "?"


STAGES = Registry("stage", "compressor.stages")
TARGETS = Registry("target", "compressor.targets")
MODELS = Registry("model", "compressor.models")
DATASETS = Registry("dataset", "compressor.datasets")
METRICS = Registry("metric", "compressor.metrics")
ALL = {"stages": STAGES, "targets": TARGETS, "models": MODELS, "datasets": DATASETS, "metrics": METRICS}


def lower_is_better(metric_name: str | None) -> bool:
    """Whether a smaller value of the metric is the better one (perplexity, KLD, output MSE)."""
    return metric_name in METRICS.names() and bool(getattr(METRICS.get(metric_name).obj, "lower_is_better", False))


def _decorator(registry: Registry):
    def register(name: str, params: type | None = None):
        def wrap(obj):
            registry.add(name, obj, params)
            return obj

        return wrap

    register.__name__ = registry.kind
    register.__doc__ = f"Register a {registry.kind} under `name`, with its parameters dataclass."
    return register


stage = _decorator(STAGES)
target = _decorator(TARGETS)
model = _decorator(MODELS)
dataset = _decorator(DATASETS)
metric = _decorator(METRICS)
