"""Recipes cannot run code. Our own sections name components by registry name only; this
module guards what Hydra itself would import: any `_target_` (launchers, sweepers,
callbacks) and the class paths of logging configs. Only installed Hydra plugins and the
standard logging classes are allowed."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from compressor.errors import Problem

CODE_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")
LOGGING_CLASS_KEYS = ("class", "()", "stream")  # dictConfig resolves these as import paths
SAFE_LOGGING = ("logging.", "ext://sys.stdout", "ext://sys.stderr", "rich.logging.RichHandler")


def _plugin_targets() -> set[str]:
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher
    from hydra.plugins.sweeper import Sweeper

    found = set()
    for kind in (Launcher, Sweeper):
        for cls in Plugins.instance().discover(kind):
            found.add(f"{cls.__module__}.{cls.__name__}")
    return found


def unsafe_keys(cfg: DictConfig) -> list[Problem]:
    """Every key that would make Hydra or logging import something not on the allow-list."""
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
    return problems
