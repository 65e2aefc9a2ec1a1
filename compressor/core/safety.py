"""Recipes cannot run code. Our own sections name components by registry name only; this
module guards what Hydra itself would import: any `_target_` (launchers, sweepers,
callbacks) and the class paths of logging configs. Only installed Hydra plugins and the
standard logging classes are allowed."""
from __future__ import annotations

import os
import re
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from compressor.errors import Problem

CODE_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")
LOGGING_CLASS_KEYS = ("class", "()", "stream")  # dictConfig resolves these as import paths
# Besides installed launchers and sweepers: Optuna's samplers (hydra/sweeper/sampler) and our
# own callback that writes a sweep's summary.
HYDRA_CLASSES = {f"optuna.samplers.{c}" for c in ("TPESampler", "RandomSampler", "CmaEsSampler", "NSGAIISampler",
                                                  "MOTPESampler", "GridSampler")} | {"compressor.search.sweep.SweepSummary"}
# Sweeper keys that would import code or write outside the sweep folder (a database URL): must stay null
NULL_ONLY = ("hydra.sweeper.custom_search_space", "hydra.sweeper.storage")
SAFE_LOGGING = ("logging.", "ext://sys.stdout", "ext://sys.stderr", "rich.logging.RichHandler")


def shell_commands(node: Any, path: str) -> list[Problem]:
    """Launcher settings that run shell commands on the job machines (submitit's `setup`, the Ray
    cluster's `*_commands`) must stay empty: a recipe cannot run commands that way either."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{path}.{k}"
            if (k == "setup" or str(k).endswith("_commands")) and v:
                found.append(Problem(key, "must stay empty: it would run shell commands on the job machines "
                                          "(prepare them outside the recipe)"))
            else:
                found += shell_commands(v, key)
    return found


def _plugin_targets() -> set[str]:
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher
    from hydra.plugins.sweeper import Sweeper

    found = set(HYDRA_CLASSES)
    for kind in (Launcher, Sweeper):
        for cls in Plugins.instance().discover(kind):
            found.add(f"{cls.__module__}.{cls.__name__}")
    return found


def unsafe_keys(cfg: DictConfig) -> list[Problem]:
    """Every key that would make Hydra or logging import something not on the allow-list, set the
    job's environment, or write outside the run folder."""
    allowed = _plugin_targets()
    problems: list[Problem] = []
    container = OmegaConf.to_container(cfg, resolve=False)

    def walk(node: Any, path: str, in_logging: bool) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                key = f"{path}.{k}" if path else str(k)
                logging_here = in_logging or k in ("job_logging", "hydra_logging")
                if k in CODE_KEYS and not (path.startswith("hydra.") and k == "_target_" and v in allowed):
                    problems.append(Problem(key, f"not allowed in a recipe: it would import or call code ({v!r})"))
                elif logging_here and k in LOGGING_CLASS_KEYS and isinstance(v, str) and not v.startswith(SAFE_LOGGING):
                    problems.append(Problem(key, f"logging may only use logging's own classes, not {v!r}"))
                else:
                    walk(v, key, logging_here)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]", in_logging)

    walk(container, "", False)
    for key in NULL_ONLY:
        if OmegaConf.select(cfg, key, default=None) is not None:
            problems.append(Problem(key, "must stay null: it would import code or write outside the run folder"))
    return problems + shell_commands(container.get("hydra", {}).get("launcher") or {}, "hydra.launcher") + outside_run_folder(cfg) + job_environment(cfg)


# What hydra.job.env_set may set for the job: Hydra exports it to the job and every process it starts.
SAFE_ENV = re.compile(r"(OMP|MKL|OPENBLAS|NUMEXPR)_NUM_THREADS|CUDA_VISIBLE_DEVICES|TOKENIZERS_PARALLELISM")


def job_environment(cfg: DictConfig) -> list[Problem]:
    names = OmegaConf.select(cfg, "hydra.job.env_set", default=None) or {}
    return [Problem(f"hydra.job.env_set.{k}", "a recipe may set only thread counts, CUDA_VISIBLE_DEVICES and "
                                              "TOKENIZERS_PARALLELISM; others (LD_PRELOAD, PYTHONPATH, CXX, ...) "
                                              "would run code in the job's subprocesses")
            for k in names if not SAFE_ENV.fullmatch(str(k))]


# What a logging config may instantiate as a handler: the console and files (checked below).
LOCAL_HANDLERS = {"logging.StreamHandler", "logging.FileHandler", "logging.NullHandler", "rich.logging.RichHandler",
                  "logging.handlers.RotatingFileHandler", "logging.handlers.TimedRotatingFileHandler",
                  "logging.handlers.WatchedFileHandler"}
STD_STREAMS = ("ext://sys.stdout", "ext://sys.stderr")
HYDRA_PATH_SECTIONS = ("run", "sweep", "job", "runtime", "job_logging", "hydra_logging", "output_subdir", "launcher")
# Folders Hydra's launchers write to (joblib's memmaps, submitit's job files); null: their default.
LAUNCHER_FOLDERS = ("hydra.launcher.temp_folder", "hydra.launcher.submitit_folder")


def _plain(node: Any) -> Any:
    """The unresolved tree; `${hydra:x}` (the running app's config) becomes `${hydra.x}`, this one."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node.replace("${hydra:", "${hydra.") if isinstance(node, str) else node


def _ext_imports(node: Any, path: str):
    """dictConfig imports the module of any `ext://module.name` value, whatever its key."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _ext_imports(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _ext_imports(v, f"{path}[{i}]")
    elif isinstance(node, str) and node.startswith("ext://") and node not in STD_STREAMS:
        yield Problem(path, f"logging may name only ext://sys.stdout or ext://sys.stderr, not {node!r}")


def outside_run_folder(cfg: DictConfig) -> list[Problem]:
    """A run writes only its folder (hydra.run.dir; hydra.sweep.dir for a sweep): log files,
    Hydra's .hydra/ and launchers' scratch files must land inside it, and logging may neither
    send records elsewhere (sockets, mail, HTTP) nor import a module through `ext://`."""
    def raw(v):
        return OmegaConf.to_container(v, resolve=False) if isinstance(v, (DictConfig, ListConfig)) else v

    # a copy to resolve in: the recipe, and the Hydra settings that name folders (not help texts)
    tree = {k: raw(v) for k, v in cfg.items_ex(resolve=False) if k != "hydra"}
    tree["hydra"] = {k: raw(v) for k, v in cfg.hydra.items_ex(resolve=False) if k in HYDRA_PATH_SECTIONS}
    c = OmegaConf.create(_plain(tree))
    try:  # resolved once: `${now:...}` must not move between two reads
        run, sweep = (os.path.abspath(str(OmegaConf.select(c, k))) for k in ("hydra.run.dir", "hydra.sweep.dir"))
    except Exception as e:  # an interpolation that does not resolve
        return [Problem("hydra.run.dir", f"cannot tell where the run writes: {str(e).splitlines()[0]}")]
    c.hydra.run.dir, c.hydra.sweep.dir, c.hydra.runtime.output_dir = run, sweep, run
    for key in ("num", "id"):  # set per job by Hydra; sweep.subdir names them
        if OmegaConf.is_missing(c.hydra.job, key):
            c.hydra.job[key] = 0
    cwd = run if c.hydra.job.get("chdir") else os.getcwd()  # relative log files are opened from here
    problems: list[Problem] = []
    checks = []  # (key naming a path, the folder a relative path starts from, the folders it must stay in)
    for section in ("job_logging", "hydra_logging"):
        logging_cfg = c.hydra.get(section)
        if not isinstance(logging_cfg, DictConfig):
            continue
        problems += _ext_imports(OmegaConf.to_container(logging_cfg, resolve=False), f"hydra.{section}")
        for name, handler in (logging_cfg.get("handlers") or {}).items():
            key = f"hydra.{section}.handlers.{name}"
            if not isinstance(handler, DictConfig):
                continue
            cls = handler.get("class") or handler.get("()")
            if cls not in LOCAL_HANDLERS:
                problems.append(Problem(f"{key}.class", f"a log handler may write only to the console or to a file "
                                                        f"in the run folder, not {cls!r}"))
            if "filename" in handler:
                checks.append((f"{key}.filename", cwd, [run, sweep]))
    if c.hydra.get("output_subdir") is not None:
        checks.append(("hydra.output_subdir", run, [run]))
    checks.append(("hydra.sweep.subdir", sweep, [sweep]))
    checks += [(k, cwd, [run, sweep]) for k in LAUNCHER_FOLDERS if OmegaConf.select(c, k, default=None) is not None]
    for key, base, roots in checks:
        if any(p.key == key for p in problems):  # an ext:// value: said once
            continue
        try:
            path = os.path.normpath(os.path.join(base, str(OmegaConf.select(c, key, throw_on_missing=True))))
        except Exception as e:  # an interpolation that does not resolve here
            problems.append(Problem(key, f"cannot tell where this writes: {str(e).splitlines()[0]}"))
            continue
        if not any(path == r or path.startswith(r + os.sep) for r in roots):
            problems.append(Problem(key, f"writes {path!r}, outside the run folder {roots[0]}; "
                                         f"a recipe may write only inside it"))
    return problems
