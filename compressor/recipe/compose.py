"""The recipe schema, its ConfigStore nodes, and composing a recipe with every problem found.

Structured configs: the top level is `RecipeConfig`; each registered stage, target, model
and dataset becomes a typed node in its group (`stage/quantize_int8`, `target/onnxruntime`,
...) made from its params dataclass plus a `kind` field, so Hydra type-checks overrides and
the command line can address every parameter (`stages.prune.ratio=0.3`).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from hydra import compose, initialize_config_dir, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from compressor.core.files import FORMATS, sniff
from compressor.core.params import schema
from compressor.errors import Problem, UserError, did_you_mean, short
from compressor.registry import DATASETS, MODELS, STAGES, TARGETS

RECIPES_MODULE = "compressor.recipes"
OVERRIDE_GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic"
DEFAULT_RECIPE = "default"


@dataclass
class EvalConfig:
    metric: str = "top1"  # the metric the gates judge; must be registered
    extra_metrics: List[str] = field(default_factory=list)
    max_drop: Optional[float] = 0.01  # largest allowed absolute drop of the metric (0.01 = 1 point)
    min_speedup: Optional[float] = None  # engine p50 latency vs the baseline PyTorch model's
    # engine p50 latency vs an FP32 engine of the same target built from the model before the pipeline
    # (an INT8 edge engine must beat its own runtime's FP32, not PyTorch eager)
    min_runtime_speedup: Optional[float] = None
    warmup: int = 10
    iters: int = 50
    parity_samples: int = 512  # validation inputs parity is judged on (all of them where the split is smaller)
    max_ppl_increase: Optional[float] = None  # language models: largest allowed relative perplexity increase (0.05 = 5%)
    max_kld: Optional[float] = None  # language models: largest allowed mean KL divergence to the uncompressed model


@dataclass
class SearchConfig:
    kind: str = "none"  # none | budget (`search=budget`: fastest engine within eval.max_drop)
    # What a run hands back to a Hydra sweeper (optuna), in order: metric, latency_ms, size_bytes
    objectives: List[str] = field(default_factory=list)
    # search=budget: sweep-style overrides ("stages.prune.ratio=0.3,0.5"); empty = derived from the recipe
    space: List[str] = field(default_factory=list)
    max_trials: int = 12


@dataclass
class RecipeConfig:
    model: Any = None
    data: Any = None
    stages: Dict[str, Any] = field(default_factory=dict)
    pipeline: List[str] = field(default_factory=list)
    target: Any = None
    targets: List[Any] = field(default_factory=list)  # several engines in one run: [onnxruntime, openvino]
    eval: EvalConfig = field(default_factory=EvalConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    logger: str = "none"  # none | tensorboard (events in <run>/tensorboard/, needs compressor[tensorboard])
    seed: int = 0
    device: str = "cpu"


# group in the config tree -> registry whose entries fill it
GROUPS = {"stage": STAGES, "target": TARGETS, "model": MODELS, "data": DATASETS}


_STORED: dict[tuple[str, str], tuple] = {}  # what register_nodes put in the ConfigStore last


def register_nodes() -> None:
    """Put the schema and one typed node per registered component into Hydra's ConfigStore.
    Called before every compose; an unchanged entry is not stored again (each store converts
    a dataclass to a config, a third of a `validate`)."""
    cs = ConfigStore.instance()
    wanted = {("", "recipe_schema"): (RecipeConfig, None, None)}
    for group, registry in GROUPS.items():
        for name in registry.names():
            entry = registry.get(name)
            wanted[(group, name)] = (entry.params, entry.provider, name)
    for (group, name), (params, provider, kind) in wanted.items():
        stored = (cs.repo.get(group, {}) if group else cs.repo).get(f"{name}.yaml")
        if _STORED.get((group, name)) == (params, provider, kind) and stored is not None:
            continue
        node = RecipeConfig if kind is None else _node_class(name, params)
        cs.store(group=group or None, name=name, node=node, provider=provider)
        _STORED[(group, name)] = (params, provider, kind)


def _node_class(name: str, params: type | None) -> Any:
    fields = [("kind", str, dataclasses.field(default=name))]
    if params is None:
        return dataclasses.make_dataclass(f"{name}_node", fields)
    return dataclasses.make_dataclass(f"{params.__name__}Node", fields, bases=(schema(params),))


# ---------------------------------------------------------------- locating recipes


@dataclass
class RecipeRef:
    name: str  # config name (file stem)
    source: str = f"pkg://{RECIPES_MODULE}"  # primary folder: pkg://module or an absolute directory


def recipe_sources() -> list[str]:
    """The packaged recipe tree, then plugins' trees (entry point group `compressor.recipes`)."""
    return [f"pkg://{RECIPES_MODULE}"] + [f"pkg://{ep.value}" for ep in metadata.entry_points(group="compressor.recipes")]


def _names_in(source: str) -> set[str]:
    root = resources.files(source[len("pkg://"):])
    return {p.name.rsplit(".", 1)[0] for p in root.iterdir() if p.name.endswith(".yaml") and p.name != "base.yaml"}


def recipe_names() -> list[str]:
    """Top-level recipes (not config groups) from this package and plugins."""
    return sorted(set().union(*(_names_in(s) for s in recipe_sources())))


def locate(arg: Optional[str]) -> RecipeRef:
    if not arg:
        return RecipeRef(DEFAULT_RECIPE)
    if arg.endswith((".yaml", ".yml")) or "/" in arg or "\\" in arg:
        path = Path(arg).expanduser()
        if path.is_dir():
            raise UserError(f"{arg} is a folder: give a recipe file (.yaml) in it", key="recipe")
        if path.suffix != ".yaml" and path.is_file():  # e.g. a checkpoint; Hydra reads <name>.yaml files only
            hint = f"rename it to {path.stem}.yaml" if path.suffix == ".yml" else "a recipe is a .yaml file"
            raise UserError(f"{arg} is not read as a recipe: {hint}", key="recipe")
        if path.suffix != ".yaml":
            path = path.with_suffix(".yaml")
        if not path.is_file():
            raise UserError(f"recipe file not found: {arg}", key="recipe")
        return RecipeRef(path.stem, str(path.resolve().parent))
    for source in recipe_sources():
        if arg in _names_in(source):
            return RecipeRef(arg, source)
    names = recipe_names()
    raise UserError(f"no packaged recipe '{arg}'{did_you_mean(arg, names)}; packaged: {', '.join(names)}", key="recipe")


def search_path_override(ref: RecipeRef) -> list[str]:
    """The recipe trees besides the primary one, so that `model: digits_cnn`, `base` and
    plugins' groups resolve from a user's folder or a plugin's recipe."""
    extra = [s for s in recipe_sources() if s != ref.source]
    return [f"hydra.searchpath=[{','.join(extra)}]"] if extra else []


def _initialize(ref: RecipeRef):
    GlobalHydra.instance().clear()
    register_nodes()
    if ref.source.startswith("pkg://"):
        return initialize_config_module(config_module=ref.source[len("pkg://"):], version_base="1.3", job_name="compressor")
    return initialize_config_dir(config_dir=ref.source, version_base="1.3", job_name="compressor")


def shown(path: str | Path) -> str:
    """A path as a message shows it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def yaml_problem(path: str | Path, e: Exception) -> Problem:
    """A YAML error as one line: file:line:column, what the parser found, where its context began."""
    mark, context = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    where = f"{shown(path)}:{mark.line + 1}:{mark.column + 1}" if mark else shown(path)
    what = getattr(e, "problem", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
    started = f" ({e.context} at {context.line + 1}:{context.column + 1})" if context and e.context else ""
    return Problem("recipe", f"{where}: YAML syntax error: {what}{started}; fix the YAML at that place")


def recipe_file_problem(ref: RecipeRef, overrides: list[str] = ()) -> Optional[Problem]:
    """A user's recipe file, or a group file of its folder that the recipe or an override chooses
    (`override model: mine`, `model=mine`), that is not a YAML mapping (binary, a syntax error, a
    list; the recipe also empty), as one line naming the file, before Hydra reads it (its messages
    name neither file nor line)."""
    if ref.source.startswith("pkg://"):
        return None
    path = Path(ref.source) / f"{ref.name}.yaml"
    problem, doc = _yaml_mapping(path, "a recipe")
    if problem is not None or doc is None:
        return problem or Problem("recipe", f"{shown(path)} {'is empty' if not path.read_text().strip() else 'holds only comments'}: "
                                            "a recipe is a YAML mapping naming model, data and target; start from a "
                                            "packaged one (compressor ls recipes) or with defaults: [default, _self_]")
    for group_file in _chosen_group_files(Path(ref.source), doc, overrides):
        problem, _ = _yaml_mapping(group_file, "a config file")  # an empty group file is valid Hydra
        if problem is not None:
            return problem
    return None


def _yaml_mapping(path: Path, what: str) -> tuple[Optional[Problem], Any]:
    """(the problem with `path` as a YAML mapping or None, its content)."""
    name = shown(path)
    try:
        found = sniff(path) if path.stat().st_size else "text"
        if found == "binary":
            return Problem("recipe", f"{name} is not UTF-8 text: {what} is a YAML text file"), None
        if found != "text":
            return Problem("recipe", f"{name} is {FORMATS[found]}, not {what.replace('a ', 'a YAML ', 1)} (a text file)"), None
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))  # sniff read 4 KB: a bad byte may come later
    except UnicodeDecodeError as e:
        return Problem("recipe", f"{name} is not UTF-8 text (byte {e.start}): {what} is a YAML text file"), None
    except yaml.YAMLError as e:
        return yaml_problem(path, e), None
    except OSError as e:
        return Problem("recipe", f"cannot read {name}: {e.strerror or type(e).__name__}"), None
    if doc is not None and not isinstance(doc, dict):
        kind = "a list" if isinstance(doc, list) else f"a single value ({short(doc, 40)})"
        keys = "defaults:, model:, data:, stages:, target:" if what == "a recipe" else "kind: and its parameters"
        return Problem("recipe", f"{name}: the top level is {kind}, not a mapping: {what} is keys such as {keys}"), None
    return None, doc


def _chosen_group_files(root: Path, recipe: dict, overrides) -> list[Path]:
    """The files of `root`'s config groups that the recipe's defaults list and the overrides name."""
    chosen = [item for entry in recipe.get("defaults") or [] if isinstance(entry, dict) for item in entry.items()]
    chosen += [tuple(o.split("=", 1)) for o in overrides if "=" in o]
    files = []
    for key, value in chosen:
        group = str(key).removeprefix("override ").lstrip("+~/").split("@")[0].strip()
        for option in value if isinstance(value, list) else [value]:
            path = root / group / f"{option}.yaml"
            if group and isinstance(option, str) and ".." not in group + option and path.is_file():
                files.append(path)
    return files


def override_problems(overrides: list[str]) -> tuple[list[str], list[Problem]]:
    """Each override parsed alone: a malformed one is one line naming it with Hydra's reason, and
    is left out so that the others are still checked. Returns (the well-formed ones, problems)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, good, problems = OverridesParser.create(), [], []
    for line in overrides:
        try:
            parsed = parser.parse_override(line)
        except HydraException as e:  # the reason, then a link to the grammar
            lines = [x for x in str(e).splitlines() if x.strip() and not x.startswith(("See ", "Error parsing"))]
            reason = f"{lines[0] if lines else type(e).__name__} (override syntax: {OVERRIDE_GRAMMAR})"
            problems.append(Problem(_override_key(line) or "override", f"cannot parse '{line}': {reason}"))
            continue
        if not parsed.key_or_group:
            problems.append(Problem("override", f"'{line}' names no key: write KEY=VALUE, e.g. stages.prune.ratio=0.3"))
            continue
        good.append(line)
    return good, problems


def compose_recipe(ref: RecipeRef, overrides: list[str]) -> tuple[Optional[DictConfig], list[Problem]]:
    """Compose with Hydra. A bad override is recorded and dropped, and composing goes on,
    so one call reports every override problem at once."""
    problem = recipe_file_problem(ref, overrides)
    if problem is not None:
        return None, [problem]
    problems: list[Problem] = []
    overrides = list(overrides)
    for _ in range(len(overrides) + 1):
        try:
            with _initialize(ref):
                cfg = compose(ref.name, overrides + search_path_override(ref), return_hydra_config=True)
            _add_key_hints(cfg, problems)
            return cfg, problems
        except Exception as e:  # Hydra and OmegaConf raise many types; each becomes one line
            problem, culprit = _explain(e, overrides)
            if culprit is None and isinstance(e, MissingConfigException) and e.missing_cfg_file:
                problem.key = _default_package(ref, e.missing_cfg_file) or problem.key
            elif culprit is None and problem.key == "recipe":  # Hydra did not say: the override without which it composes
                culprit = next((o for o in overrides if _composes(ref, [x for x in overrides if x != o])), None)
                problem.key = _override_key(culprit) if culprit else problem.key
            problems.append(problem)
            if culprit is None:
                return None, problems
            overrides.remove(culprit)
    return None, problems


def _composes(ref: RecipeRef, overrides: list[str]) -> bool:
    try:
        with _initialize(ref):
            compose(ref.name, overrides + search_path_override(ref), return_hydra_config=True)
        return True
    except Exception:  # any composition error
        return False


def _default_package(ref: RecipeRef, missing: str) -> Optional[str]:
    """The key a recipe's defaults entry fills (`/stage@stages.prune: nosuch` -> stages.prune),
    for an option that does not exist; None if the recipe file has no such entry."""
    source = ref.source
    root = resources.files(source[len("pkg://"):]) if source.startswith("pkg://") else Path(source)
    try:
        defaults = yaml.safe_load((root / f"{ref.name}.yaml").read_text()).get("defaults") or []
    except Exception:  # unreadable or not a mapping: Hydra's own message stands
        return None
    for entry in defaults:
        for k, v in (entry.items() if isinstance(entry, dict) else []):
            group, _, package = str(k).lstrip("/").partition("@")
            if f"{group}/{v}" == missing:
                return package or group.replace("/", ".")
    return None


def _explain(e: Exception, overrides: list[str]) -> tuple[Problem, Optional[str]]:
    """One line for a composition error, and the override that caused it (if any)."""
    msg = str(e)
    marked = next((x for x in (e, e.__cause__, e.__context__) if isinstance(x, yaml.MarkedYAMLError)), None)
    if marked is not None:  # a file of the recipe's tree (its defaults) that is not valid YAML
        mark = marked.problem_mark or marked.context_mark
        return yaml_problem(mark.name if mark else "recipe", marked), None
    if isinstance(e, MissingConfigException) and e.missing_cfg_file:
        missing = e.missing_cfg_file
        group, _, option = missing.rpartition("/")
        options = list(e.options or [])
        culprit = next((o for o in overrides if o.split("=", 1)[-1].strip() == option or missing in o), None)
        key = _override_key(culprit) if culprit and "@" in culprit else group.replace("/", ".") or "recipe"
        hint = did_you_mean(option, options)
        known = f"; available: {', '.join(options)}" if options else ""
        return Problem(key, f"no config '{option}'{hint}{known}"), culprit
    m = re.match(r"Could not override '([^']+)'", msg)
    if m:
        key = m.group(1)
        culprit = next((o for o in overrides if _override_key(o) == key), None)
        deeper = getattr(e.__cause__, "full_key", "") or ""
        if culprit and deeper.startswith(f"{key}."):  # a dict value with a new key: Hydra merges only with `+`
            return Problem(deeper, f"not in {key}; to add it write +{culprit.lstrip('+')}"), culprit
        return Problem(key, "unknown key"), culprit
    m = re.match(r"Error merging override (.+)", msg)
    cause = e.__cause__
    if m:
        line = m.group(1).strip()
        key = getattr(cause, "full_key", None) or _override_key(line)
        detail = str(cause).splitlines()[0] if cause else msg
        return Problem(key, detail), line if line in overrides else None
    inner = next((x for x in (e, cause, e.__context__) if isinstance(x, OmegaConfBaseException)), None)
    if inner is not None:  # e.g. a recipe value for a key the selected stage does not take
        key = getattr(inner, "full_key", "") or "recipe"
        line = str(inner).strip().splitlines()[0]
        m = re.match(r"Key '([^']+)' not in '(\w+?)(?:ParamsNode|_node|Node)'", line)
        if m:
            line = f"not a parameter of the selected component ({m.group(2)}){_hint_for(inner, m.group(1))}"
        return Problem(key, line), None
    first = msg.strip().splitlines()[0][:300] if msg.strip() else type(e).__name__
    culprit = next((o for o in overrides if o in msg), None)
    return Problem(_override_key(culprit) if culprit else "recipe", first), culprit


def _hint_for(err: OmegaConfBaseException, key: str) -> str:
    node_type = getattr(err, "object_type", None)
    if node_type is None or not dataclasses.is_dataclass(node_type):
        return ""
    names = [f.name for f in dataclasses.fields(node_type) if f.name != "kind"]
    return did_you_mean(key, names) + f"; valid keys: {', '.join(names)}"


def _override_key(line: str) -> str:
    return line.lstrip("+~").split("=", 1)[0].split("@")[-1]


def _add_key_hints(cfg: DictConfig, problems: list[Problem]) -> None:
    """'unknown key' gets a did-you-mean among the keys its section accepts. Component
    sections are typed nodes holding every parameter, so their keys are the valid ones."""
    for p in problems:
        if p.message != "unknown key":
            continue
        parts = p.key.split(".")
        depth = 0  # the deepest section that exists names the candidates
        while depth < len(parts) - 1 and isinstance(OmegaConf.select(cfg, ".".join(parts[: depth + 1])), DictConfig):
            depth += 1
        leaf = parts[depth]
        node = OmegaConf.select(cfg, ".".join(parts[:depth])) if depth else cfg
        if isinstance(node, DictConfig):
            keys = [k for k in node.keys() if k != "kind" and not str(k).startswith("hydra")]
            p.message += did_you_mean(leaf, keys) + (f"; valid keys: {', '.join(map(str, keys))}" if keys else "")
