"""Runs a validated plan: baseline -> stages -> target -> engine checks -> gates -> report.

The runner knows no stage or target by name; it measures the same things after every step
so the report can say what each one cost and gained."""
from __future__ import annotations

import copy
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from safetensors.torch import save as safetensors_bytes
from torch import nn

from compressor import measure
from compressor.checkpoint import save_checkpoint
from compressor.data import build_data
from compressor.errors import UserError
from compressor.interfaces import Context, DataSplits
from compressor.models import build_model
from compressor.plan import Plan, calibrating_slots
from compressor.registry import METRICS
from compressor.report import write_outputs

log = logging.getLogger("compressor")

# Parity tolerance on max |engine - pytorch|, relative to the output's magnitude; INT8 is
# judged on top-1 agreement instead, since rounding differences are expected there.
PARITY_TOL = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 5e-2}
INT8_MIN_AGREEMENT = 0.95


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def snapshot(model: nn.Module, data: DataSplits, plan: Plan, device: torch.device, score) -> dict[str, Any]:
    """Metric, parameters, MACs, size and PyTorch latency of a model, as the report shows them."""
    model.eval().to(device)
    example = data.example_input(1).to(device)
    return {
        "metric": score(measure.predict_torch(model, device)),
        "params": measure.count_params(model),
        "macs": measure.count_macs(model, example),
        "size_bytes": measure.weight_bytes(model),
        "sparsity": round(measure.sparsity(model), 4),
        "latency_ms": measure.torch_latency(model, example, plan.eval.warmup, plan.eval.iters),
    }


def parity(engine, model: nn.Module, data: DataSplits, precision: str, samples: int, device) -> dict[str, Any]:
    xs = []
    for x, _ in data.val:
        xs.append(x)
        if sum(len(t) for t in xs) >= samples:
            break
    x = torch.cat(xs)[:samples]
    ref = measure.predict_torch(model, device)(x)
    out = np.asarray(engine(x.numpy()), dtype=np.float32)
    finite = bool(np.isfinite(out).all())
    diff = np.abs(out - ref) if finite else np.array([np.inf])
    agreement = float((out.argmax(-1) == ref.argmax(-1)).mean()) if out.ndim > 1 and finite else None
    result = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "agreement": agreement,
              "samples": int(len(x)), "finite": finite}
    if precision.startswith("int8"):
        result["min_agreement"] = INT8_MIN_AGREEMENT
        result["passed"] = finite and (agreement is None or agreement >= INT8_MIN_AGREEMENT)
    else:
        tol = PARITY_TOL.get(precision, 1e-3) * max(1.0, float(np.abs(ref).max()))
        result["tolerance"] = tol
        result["passed"] = finite and result["max_abs"] <= tol
    return result


def gates(report: dict[str, Any], plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    base, eng = report["baseline"], report["engine"]
    name = plan.eval.metric
    if plan.eval.max_drop is not None and name in base["metric"] and name in eng["metric"]:
        drop = base["metric"][name] - eng["metric"][name]
        if getattr(METRICS.get(name).obj, "lower_is_better", False):
            drop = -drop
        out["max_drop"] = {"limit": plan.eval.max_drop, "value": round(drop, 6), "passed": drop <= plan.eval.max_drop + 1e-9}
    if plan.eval.min_speedup is not None:
        speedup = base["latency_ms"]["p50"] / max(eng["latency_ms"]["p50"], 1e-9)
        out["min_speedup"] = {"limit": plan.eval.min_speedup, "value": round(speedup, 3),
                              "passed": speedup >= plan.eval.min_speedup}
    out["parity"] = {"limit": "finite and within tolerance", "value": eng["parity"]["max_abs"],
                     "passed": eng["parity"]["passed"]}
    return out


def progress_bar(console: Console) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def run(plan: Plan, out_dir: Path, console: Console | None = None) -> dict[str, Any]:
    """Run the plan, writing everything under `out_dir`. Returns the report."""
    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    started = time.perf_counter()
    seed_everything(plan.seed)
    device = torch.device(plan.device)
    report: dict[str, Any] = {"recipe": plan.recipe, "status": "error", "baseline": None, "stages": [],
                              "engine": None, "gates": {}, "skipped": plan.skipped, "seconds": 0.0}
    try:
        with progress_bar(console) as progress:
            overall = progress.add_task("pipeline", total=len(plan.steps) + 3)
            data = build_data(plan.data, plan.seed)
            model = build_model(plan.model).to(device)
            _check_fits(model, data, device)
            calibrating = calibrating_slots(plan.steps)
            if calibrating and next(iter(data.calib), None) is None:
                raise UserError(f"the calibration split is empty, and stages.{calibrating[0]} calibrates on it",
                                key="data.calibration_size")
            if not data.labelled:
                report["metric_unavailable"] = "the data has no labels (synthetic): only fidelity metrics are measured"
            progress.update(overall, description="baseline")
            metric_names = [plan.eval.metric] + list(plan.eval.extra_metrics)
            reference = measure.collect(measure.predict_torch(model, device), data.val)[0]

            def score(predict) -> dict[str, float]:
                return measure.evaluate(predict, data.val, metric_names, reference, data.labelled)

            report["baseline"] = snapshot(model, data, plan, device, score)
            report["baseline"]["size_bytes"] = len(safetensors_bytes(
                {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))
            log.info("baseline: %s", _brief(report["baseline"], plan))
            progress.advance(overall)
            teacher = copy.deepcopy(model).eval().requires_grad_(False)
            ctx = Context(data=data, device=device, teacher=teacher, log=log, progress=progress, seed=plan.seed,
                          evaluate=lambda m: score(measure.predict_torch(m, device)))
            for i, step in enumerate(plan.steps, 1):
                progress.update(overall, description=f"stage {step.slot} ({step.kind})")
                ctx.notes = {}
                t = time.perf_counter()
                try:
                    model = step.build().apply(model, ctx)
                except UserError as e:  # name the stage's keys in full
                    for p in e.problems:
                        p.key = f"stages.{step.slot}.{p.key}" if p.key else f"stages.{step.slot}"
                    raise
                seconds = time.perf_counter() - t
                entry = {"name": step.slot, "kind": step.kind, "seconds": round(seconds, 3),
                         **snapshot(model, data, plan, device, score), "notes": ctx.notes}
                ckpt = out_dir / "checkpoints" / f"{i}_{step.slot}" / "model.safetensors"
                # a stage that swaps the architecture (student) names the new one in ctx.shared["model"]
                save_checkpoint(model, ckpt, ctx.shared.get("model", plan.model), extra={"stage": step.slot, "kind": step.kind})
                entry["checkpoint"] = str(ckpt.relative_to(out_dir))
                report["stages"].append(entry)
                log.info("stage %s (%s): %s in %.1fs", step.slot, step.kind, _brief(entry, plan), seconds)
                progress.advance(overall)

            progress.update(overall, description=f"target {plan.target_kind}")
            target = plan.build_target()
            ctx.notes = {}
            engine = target.build(model.cpu().eval(), ctx, out_dir / "engine")
            files = [p for p in (out_dir / "engine").rglob("*") if p.is_file()]
            progress.advance(overall)
            progress.update(overall, description="engine: parity, metric, latency")
            example = data.example_input(1).numpy()
            report["engine"] = {
                "target": plan.target_kind,
                "precision": engine.precision,
                "path": str(Path(engine.path).relative_to(out_dir)),
                "provider": engine.provider,
                "size_bytes": sum(p.stat().st_size for p in files),
                "metric": score(lambda x: np.asarray(engine(x.numpy()), dtype=np.float32)),
                "parity": parity(engine, model, data, engine.precision, plan.eval.parity_samples, torch.device("cpu")),
                "latency_ms": measure.latency(lambda: engine(example), plan.eval.warmup, plan.eval.iters),
                "batch_size": 1,
                "notes": ctx.notes,
            }
            progress.advance(overall)
        report["gates"] = gates(report, plan)
        report["status"] = "ok" if all(g["passed"] for g in report["gates"].values()) else "failed_gate"
    except UserError as e:
        report["error"] = str(e)
        raise
    except Exception as e:  # a bug or a runtime failure: recorded in the report, then re-raised
        report["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        report["seconds"] = round(time.perf_counter() - started, 3)
        write_outputs(report, plan, out_dir, console)
    return report


def _check_fits(model: nn.Module, data: DataSplits, device: torch.device) -> None:
    """Data whose shape does not fit the model: one line naming data, before any work."""
    x = data.example_input(1).to(device)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except RuntimeError as e:
        raise UserError(f"inputs of shape {tuple(x.shape)} do not fit the model: {str(e).splitlines()[0]}",
                        key="data") from e
    if data.num_classes and out.shape[-1] != data.num_classes:
        raise UserError(f"the model has {out.shape[-1]} outputs but the data has {data.num_classes} classes",
                        key="data")


def _brief(entry: dict[str, Any], plan: Plan) -> str:
    m = entry["metric"].get(plan.eval.metric)
    metric = f"{plan.eval.metric}={m:.4f} " if m is not None else ""
    return f"{metric}params={entry['params']} size={entry['size_bytes']}B p50={entry['latency_ms']['p50']:.3f}ms"
