"""`search=budget`: the fastest engine whose measured metric drop stays within eval.max_drop.

Coordinate search over the whole pipeline, every candidate built and measured on its engine
(nothing is assumed faster: on a CPU without VNNI an INT8 engine can be slower than FP32).
Trial 0 is the recipe as written; then each axis in turn (pruning ratios, precision, layers
kept in float, target) tries its other values with the other axes at the best found so far.

The run folder holds every trial under `trials/<i>/` (a full run folder each; `compressor
report RUN/trials` tabulates them), and after every trial `search.json`, `report.json`
(the best trial's report plus a `search` section) and `engine/` (the best engine so far)."""
from __future__ import annotations

import copy
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape

from compressor.core import quiet
from compressor.core.atomic import write_json, write_text
from compressor.errors import UserError

log = logging.getLogger("compressor")


def axes(cfg: DictConfig, plan) -> list[tuple[str, list[str]]]:
    """(override key, candidate values) per axis; the recipe's own value is not repeated."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if cfg.search.space:
        parsed = OverridesParser.create().parse_overrides(list(cfg.search.space))
        return [(o.get_key_element(), list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_string()])
                for o in parsed]
    found = []
    for step in plan.steps:  # pruning: a ladder of ratios
        ratio = getattr(step.params, "ratio", None)
        if isinstance(ratio, float):
            found.append((f"stages.{step.slot}.ratio", [str(r) for r in (0.25, 0.5, 0.75) if abs(r - ratio) > 1e-9]))
    quantizing = [s for s in plan.steps if getattr(s.entry.obj, "precision", "fp32") != "fp32"]
    for step in quantizing:  # layers kept in float: the stage's own accuracy-aware fallback
        if hasattr(step.params, "max_drop") and step.params.max_drop is None and plan.eval.max_drop is not None:
            found.append((f"stages.{step.slot}.max_drop", [str(plan.eval.max_drop / 2)]))
    if quantizing:  # precision: the same pipeline left in float
        rest = [s.slot for s in plan.steps if s not in quantizing]
        found.append(("pipeline", ["[" + ",".join(rest) + "]"]))
    if "target" in cfg and cfg.target is not None and not cfg.targets:
        from compressor.registry import TARGETS

        others = [k for k in ("onnxruntime", "openvino") if k != cfg.target.kind and k in TARGETS.names()]
        if others:
            found.append(("target", others))
    return [(k, v) for k, v in found if v]


def budget_search(cfg: DictConfig, recipe: str, out_dir: Path, console: Console) -> dict[str, Any]:
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    from compressor.recipe.plan import make_plan
    from compressor.run.runner import progress_bar, run

    base = [o for o in HydraConfig.get().overrides.task if not o.split("=", 1)[0].lstrip("+~").startswith("search")]
    plan = make_plan(cfg, recipe)
    if plan.eval.max_drop is None:
        raise UserError("search=budget needs a budget: set eval.max_drop (e.g. 0.01)", key="eval.max_drop")
    space = axes(cfg, plan)
    log.info("budget search over %s", space)
    trials: list[dict[str, Any]] = []
    chosen: dict[str, str] = {}  # axis -> value of the best trial so far
    best: dict[str, Any] | None = None

    def attempt(changes: dict[str, str]) -> None:
        nonlocal best, chosen
        i, overrides = len(trials), [f"{k}={v}" for k, v in changes.items()]
        trial, report, better = {"trial": i, "overrides": overrides}, None, False
        trials.append(trial)
        label = escape(f"trial {i} [{' '.join(overrides) or 'the recipe as written'}]")
        try:
            trial_plan = make_plan(compose(config_name=HydraConfig.get().job.config_name, overrides=base + overrides), recipe)
        except Exception as e:  # a combination the recipe cannot take (INT8 on torch_export): recorded, not fatal
            trial.update(status="invalid", error=(str(e).splitlines() or [type(e).__name__])[0])
        else:
            trial_dir = out_dir / "trials" / str(i)
            write_text(trial_dir / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(base + overrides)))
            try:
                report = run(trial_plan, trial_dir, Console(quiet=True))
            except Exception as e:  # one failing candidate does not end the search
                trial.update(status="error", error=(f"{type(e).__name__}: {e}".splitlines())[0])
        if report is not None:
            engine = report["engine"]
            trial.update(status=report["status"], metric=engine["metric"].get(plan.eval.metric),
                         drop=report["gates"].get("max_drop", {}).get("value"), latency_ms=engine["latency_ms"]["p50"],
                         size_bytes=engine["size_bytes"], target=engine["target"], precision=engine["precision"])
            better = report["status"] == "ok" and (best is None or trial["latency_ms"] < best["latency_ms"])
            if better:
                best, chosen = trial, dict(changes)
                _promote(trial_dir, out_dir)
            console.print(f"{label}: {report['status']}, {plan.eval.metric} {_num(trial['metric'])} (drop {_num(trial['drop'])}), "
                          f"p50 {trial['latency_ms']:.3f} ms" + ("  [green]<- best so far[/]" if better else ""))
        else:
            console.print(f"{label}: {trial['status']} ({escape(trial['error'])})")
        _write(out_dir, trials, best, report if better else None, plan)

    console.file = quiet.terminal(console.file)  # the bar reaches the terminal while a trial captures 1 and 2
    with progress_bar(console) as progress:  # each trial runs with a quiet console: the search has the bar
        task = progress.add_task("budget search", total=min(cfg.search.max_trials, 1 + sum(len(v) for _, v in space)))
        attempt({})
        progress.advance(task)
        for key, values in space:
            for value in values:
                if len(trials) >= cfg.search.max_trials:
                    break
                progress.update(task, description=f"budget search: {key}={value}")
                attempt({**chosen, key: value})
                progress.advance(task)
    return _write(out_dir, trials, best, None, plan, console)


def _promote(trial_dir: Path, out_dir: Path) -> None:
    """The trial's engine becomes the run's engine/ (copied aside, then swapped in by renames)."""
    new, old, engine = out_dir / "engine.new", out_dir / "engine.old", out_dir / "engine"
    shutil.rmtree(new, ignore_errors=True)
    shutil.copytree(trial_dir / "engine", new)
    if engine.exists():
        os.replace(engine, old)
    os.replace(new, engine)
    shutil.rmtree(old, ignore_errors=True)


def _write(out_dir: Path, trials: list[dict[str, Any]], best: dict[str, Any] | None, best_report: dict[str, Any] | None,
           plan, console: Console | None = None) -> dict[str, Any]:
    """search.json and report.json as they stand now (a killed search leaves the best so far);
    with a console (the end), also report.md, manifest.json and the trials' summary."""
    import json

    first = trials[0] if trials[0].get("latency_ms") is not None else None
    summary = {"max_drop": plan.eval.max_drop, "trials": trials, "best_trial": best["trial"] if best else None}
    if best and first:
        summary["speedup_vs_recipe"] = round(first["latency_ms"] / best["latency_ms"], 3)
    summary["conclusion"] = _conclusion(trials, best, first, plan.eval.max_drop)
    write_json(out_dir / "search.json", summary)
    report_file = out_dir / "report.json"
    if best_report is not None:  # the best trial's report, its checkpoints named from this folder
        report = copy.deepcopy(best_report)
        for stage in report["stages"]:
            stage["checkpoint"] = f"trials/{best['trial']}/{stage['checkpoint']}"
    elif report_file.is_file():
        report = json.loads(report_file.read_text())
    else:
        report = {"recipe": plan.recipe, "status": "failed_gate", "baseline": None, "stages": [], "engine": None,
                  "gates": {}}
    report["search"] = summary
    if console is None:
        write_json(report_file, report)
        return report
    from compressor.report.writer import write_outputs
    from compressor.search.sweep import write_summary

    if best is None:
        report["status"] = "failed_gate"
    write_summary(out_dir / "trials")
    write_outputs(report, plan, out_dir, console)
    log.info("budget search: %s", summary["conclusion"])
    console.print(f"search: {escape(summary['conclusion'])}")
    return report


def _conclusion(trials: list[dict[str, Any]], best: dict[str, Any] | None, first: dict[str, Any] | None,
                max_drop: float) -> str:
    measured = [t for t in trials if t.get("latency_ms") is not None]
    if best is None:
        if not measured:
            return "no candidate could be built and measured (see trials)"
        closest = min(measured, key=lambda t: t["drop"] if t["drop"] is not None else float("inf"))
        return (f"no candidate stays within max_drop={max_drop}: the smallest drop measured was "
                f"{closest['drop']} (trial {closest['trial']}: {' '.join(closest['overrides']) or 'the recipe as written'})")
    what = " ".join(best["overrides"]) or "the recipe as written"
    if first is None or best["trial"] == 0:
        return f"the recipe as written is the fastest engine within the budget ({best['latency_ms']:.3f} ms p50)"
    return (f"trial {best['trial']} ({what}): {best['latency_ms']:.3f} ms p50 against {first['latency_ms']:.3f} ms for the "
            f"recipe as written ({first['latency_ms'] / best['latency_ms']:.2f}x), drop {best['drop']} <= {max_drop}")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
