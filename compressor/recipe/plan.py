"""Composed recipe -> validated plan. Every problem is collected before any work starts."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from compressor.recipe.compose import EvalConfig, RecipeConfig
from compressor.errors import Problem, UserError, did_you_mean, short
from compressor.core.params import parse_params
from compressor.registry import DATASETS, METRICS, MODELS, STAGES, TARGETS, Entry


RECIPE_KEYS = [f.name for f in dataclasses.fields(RecipeConfig)] + ["hydra"]


@dataclass
class StepPlan:
    slot: str  # name in `stages:` / `pipeline`
    kind: str  # registry name
    entry: Entry
    params: Any

    def build(self):
        stage = self.entry.obj()
        stage.params = self.params
        return stage


def calibrating_slots(steps: list[StepPlan]) -> list[str]:
    """Slots whose stage calibrates on the data's calibration split (class attribute `calibrates`)."""
    return [s.slot for s in steps if getattr(s.entry.obj, "calibrates", False)]


def not_bit_exact(plan: "Plan") -> list[str]:
    """Stages (by slot) and engines (`engine:<kind>`) whose output may differ between two runs of
    the same recipe and seed on this device. A stage or target class says so with the attribute
    `deterministic`: False, or the device types where it is bit-exact (training: ("cpu",), since
    CUDA's backward kernels accumulate with atomics). Without the attribute: bit-exact."""
    device = plan.device.split(":")[0]

    def exact(cls) -> bool:
        d = getattr(cls, "deterministic", True)
        return device in d if isinstance(d, tuple) else bool(d)

    return [s.slot for s in plan.steps if not exact(s.entry.obj)] + \
        [f"engine:{t.kind}" for t in plan.targets if not exact(t.entry.obj)]


@dataclass
class Plan:
    recipe: str
    model: dict[str, Any]  # the recipe's model section (kind + params), kept for checkpoints
    data: dict[str, Any]
    steps: list[StepPlan]
    skipped: list[str]
    targets: list["TargetPlan"]  # the engines to build, in order; the first is the report's `engine`
    precision: str
    eval: EvalConfig
    seed: int = 0
    device: str = "cpu"
    config: dict[str, Any] = field(default_factory=dict)  # the whole resolved recipe
    hydra_mode: Any = None  # hydra.mode as composed: MULTIRUN where the recipe asks for a sweep itself


@dataclass
class TargetPlan:
    kind: str
    entry: Entry
    params: Any
    key: str = "target"  # in the recipe: `target`, or `targets[i]`

    def build(self):
        target = self.entry.obj()
        target.params = self.params
        return target


def _section(cfg: DictConfig, key: str) -> dict[str, Any] | None:
    node = OmegaConf.select(cfg, key, throw_on_missing=False)
    if node is None:
        return None
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def _component(registry, section, key: str, problems: list[Problem]) -> tuple[Entry | None, Any]:
    if not isinstance(section, dict):
        problems.append(Problem(key, f"missing: choose a {registry.kind} ({', '.join(registry.names())})"))
        return None, None
    kind = section.get("kind")
    if kind not in registry.names():
        problems.append(Problem(f"{key}.kind", f"unknown {registry.kind} {kind!r}{did_you_mean(kind, registry.names())}; "
                                               f"registered: {', '.join(registry.names())}"))
        return None, None
    entry = registry.get(kind)
    params, found = parse_params(entry.params, section, key)
    problems += found
    return entry, params


def make_plan(cfg: DictConfig, recipe: str) -> Plan:
    """Check everything that can be checked without doing work; raise UserError listing all."""
    problems: list[Problem] = []
    model_section = _section(cfg, "model")
    data_section = _section(cfg, "data")
    _component(MODELS, model_section, "model", problems)
    _component(DATASETS, data_section, "data", problems)
    steps, skipped = _steps(cfg, problems)
    calibrating = calibrating_slots(steps)
    size = (data_section or {}).get("calibration_size", 1) if isinstance(data_section, dict) else 1
    if calibrating and isinstance(size, int) and size < 1:
        problems.append(Problem("data.calibration_size", f"must be >= 1: stages.{calibrating[0]} calibrates on it, got {size}"))
    precision = _precision(steps)
    targets = _targets(cfg, precision, problems)
    ev = OmegaConf.to_object(cfg.eval) if "eval" in cfg else EvalConfig()
    problems += _eval_checks(ev) + _search_checks(cfg) + _top_level_checks(cfg)
    if problems:
        raise UserError(problems)
    container = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
                 for k, v in cfg.items_ex(resolve=False) if k != "hydra"}
    return Plan(recipe, model_section, data_section, steps, skipped, targets, precision, ev, int(cfg.seed),
                str(cfg.get("device", "cpu")), container, OmegaConf.select(cfg, "hydra.mode", default=None))


def _steps(cfg: DictConfig, problems: list[Problem]) -> tuple[list[StepPlan], list[str]]:
    """The pipeline's stages in order, each with its checked params; and the slots it skips."""
    sections = _section(cfg, "stages") or {}
    # A slot whose stage was removed (`~stage@stages.x`) keeps the recipe's values but no kind.
    stages = {k: v for k, v in sections.items() if isinstance(v, dict) and "kind" in v}
    pipeline = list(_section(cfg, "pipeline") or [])
    steps = []
    for i, slot in enumerate(pipeline):
        if not isinstance(slot, str) or not slot:
            problems.append(Problem(f"pipeline[{i}]", f"must name a stage slot, got {short(slot)}"))
            continue
        if slot in sections and slot not in stages:
            problems.append(Problem(f"stages.{slot}", f"no stage is selected for slot '{slot}' (removed with "
                                                      f"~stage@stages.{slot}?); select one with stage@stages.{slot}=NAME"))
            continue
        if slot not in stages:
            problems.append(Problem(f"pipeline[{i}]", f"no stage slot '{slot}'{did_you_mean(slot, stages)}; "
                                                      f"slots: {', '.join(stages) or 'none'}"))
            continue
        if pipeline.index(slot) != i:
            problems.append(Problem(f"pipeline[{i}]", f"stage '{slot}' is listed twice"))
            continue
        entry, params = _component(STAGES, stages[slot], f"stages.{slot}", problems)
        if entry is not None:
            steps.append(StepPlan(slot, stages[slot]["kind"], entry, params))
    return steps, [s for s in stages if s not in pipeline]


def _precision(steps: list[StepPlan]) -> str:
    """The precision of the weights the pipeline leaves: the last stage that says (class attribute
    `precision`, or a function of its params), else fp32."""
    produced = "fp32"
    for step in steps:
        produced = getattr(step.entry.obj, "precision", produced)
        if callable(produced):  # a stage whose output precision depends on its params
            produced = produced(step.params)
    return produced


def _targets(cfg: DictConfig, produced: str, problems: list[Problem]) -> list["TargetPlan"]:
    """The engines to build, each able to run what the pipeline leaves."""
    listed = _section(cfg, "targets") or []
    # `targets: [onnxruntime, {kind: openvino, threads: 4}]` replaces `target`: one engine each
    sections = [(f"targets[{i}]", {"kind": t} if isinstance(t, str) else t) for i, t in enumerate(listed)] \
        or [("target", _section(cfg, "target"))]
    targets = []
    for key, section in sections:
        entry, params = _component(TARGETS, section, key, problems)
        if entry is None or params is None:
            continue
        if any(t.kind == section["kind"] for t in targets):
            problems.append(Problem(key, f"target '{section['kind']}' is listed twice"))
            continue
        wanted = getattr(params, "precision", "auto")
        supported = getattr(entry.obj, "precisions", ("fp32",))
        if wanted not in ("auto", produced):
            problems.append(Problem(f"{key}.precision", f"{wanted} needs a pipeline that leaves {wanted} weights, "
                                                        f"but this pipeline leaves {produced}"))
        elif produced not in supported:
            problems.append(Problem(f"{key}.precision", f"target '{section['kind']}' cannot run {produced} "
                                                        f"(it runs {', '.join(supported)})"))
        if hasattr(params, "precision"):
            params.precision = produced
        problems += _target_checks(entry, params, key)
        targets.append(TargetPlan(section["kind"], entry, params, key))
    return targets


def _eval_checks(ev: EvalConfig) -> list[Problem]:
    found = []
    for i, name in enumerate([ev.metric] + list(ev.extra_metrics)):
        if name not in METRICS.names():
            key = "eval.metric" if i == 0 else f"eval.extra_metrics[{i - 1}]"
            found.append(Problem(key, f"unknown metric '{name}'{did_you_mean(name, METRICS.names())}; "
                                      f"registered: {', '.join(METRICS.names())}"))
    if ev.max_drop is not None and not 0 <= ev.max_drop <= 1:
        found.append(Problem("eval.max_drop", f"must be in [0, 1] (0.01 = 1 point), got {ev.max_drop}"))
    for key in ("min_speedup", "min_runtime_speedup"):
        value = getattr(ev, key)
        if value is not None and not value > 0:  # nan too
            found.append(Problem(f"eval.{key}", f"must be positive, got {value}"))
    for key in ("max_ppl_increase", "max_kld"):
        value = getattr(ev, key)
        if value is not None and not value >= 0:
            found.append(Problem(f"eval.{key}", f"must be >= 0, got {value}"))
    if ev.iters < 1:
        found.append(Problem("eval.iters", f"must be >= 1, got {ev.iters}"))
    if ev.warmup < 0:
        found.append(Problem("eval.warmup", f"must be >= 0, got {ev.warmup}"))
    if ev.parity_samples < 1:
        found.append(Problem("eval.parity_samples", f"must be >= 1, got {ev.parity_samples}"))
    return found


def _top_level_checks(cfg: DictConfig) -> list[Problem]:
    """seed, device and keys the recipe schema does not have."""
    found = []
    if not 0 <= cfg.get("seed", 0) < 2**32:  # numpy's seed range
        found.append(Problem("seed", f"must be in [0, 2**32), got {cfg.seed}"))
    for k in [k for k in cfg if k not in RECIPE_KEYS]:  # `+foo=1` adds a key Hydra's struct mode lets through
        found.append(Problem(str(k), f"unknown key{did_you_mean(k, RECIPE_KEYS)}; valid keys: "
                                     f"{', '.join(k for k in RECIPE_KEYS if k != 'hydra')}"))
    device = str(cfg.get("device", "cpu"))
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        found.append(Problem("device", f"must be cpu or cuda[:N], got {device!r}"))
    elif device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            found.append(Problem("device", "cuda was asked for but this machine has no CUDA GPU"))
    return found


def _search_checks(cfg: DictConfig) -> list[Problem]:
    """The `search` and `logger` keys: known values, and what they need installed."""
    import importlib.util

    found = []
    search = cfg.get("search") or {}
    if search.get("kind", "none") not in ("none", "budget"):
        found.append(Problem("search.kind", f"must be none or budget, got {search.get('kind')!r}"))
    for i, name in enumerate(search.get("objectives") or []):
        if name not in ("metric", "latency_ms", "tokens_per_s", "size_bytes"):
            found.append(Problem(f"search.objectives[{i}]",
                                 f"must be metric, latency_ms, tokens_per_s or size_bytes, got {name!r}"))
    if search.get("max_trials", 1) < 1:
        found.append(Problem("search.max_trials", f"must be >= 1, got {search.get('max_trials')}"))
    logger = cfg.get("logger", "none")
    if logger not in ("none", "tensorboard"):
        found.append(Problem("logger", f"must be none or tensorboard, got {logger!r}"))
    elif logger == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        found.append(Problem("logger", "tensorboard is not installed: pip install compressor[tensorboard]"))
    return found


def _target_checks(entry: Entry, params: Any, key: str) -> list[Problem]:
    """A target may define `requires()` -> [(key, message)]: missing runtimes, hardware."""
    requires = getattr(entry.obj, "requires", None)
    return [Problem(f"{key}.{k}" if k else key, msg) for k, msg in (requires(params) if requires else [])]
