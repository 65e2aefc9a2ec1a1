"""Runs a validated plan: baseline -> stages -> target -> engine checks -> gates -> report.

The runner knows no stage or target by name; it measures the same things after every step
so the report can say what each one cost and gained."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from rich.console import Console
from rich.file_proxy import FileProxy
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from safetensors.torch import save as safetensors_bytes
from torch import nn

from compressor.core import distributed, quiet
from compressor.core.progress import task as progress_task
from compressor.measure import generation, lm_parity, parity
from compressor.measure import stats as measure
from compressor.core.atomic import remove_leftovers
from compressor.run.checkpoint import load_checkpoint, save_checkpoint
from compressor.data import build_data
from compressor.errors import UserError
from compressor.core.interfaces import Context, DataSplits, Handoff
from compressor.models import build_model
from compressor.models.causal_lm import is_causal_lm
from compressor.recipe.plan import Plan, calibrating_slots, not_bit_exact
from compressor.run.environment import facts
from compressor.registry import lower_is_better
from compressor.report.writer import write_outputs
from compressor.core.state import load_state, rng_state, save_state, set_rng_state

log = logging.getLogger("compressor")

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def snapshot(model: nn.Module, data: DataSplits, plan: Plan, device: torch.device, score, progress=None) -> dict[str, Any]:
    """Metric, parameters, MACs, size and PyTorch latency of a model, as the report shows them."""
    model.eval().to(device)
    example = data.example_input(1).to(device)
    return {
        "metric": score(measure.predict_torch(model, device)),
        "params": measure.count_params(model),
        "macs": measure.count_macs(model, example),
        "size_bytes": measure.weight_bytes(model),
        "sparsity": round(measure.sparsity(model), 4),
        "latency_ms": measure.torch_latency(model, example, plan.eval.warmup, plan.eval.iters, progress),
    }


def engine_checks(engine, model: nn.Module, data: DataSplits, plan: Plan, score) -> dict[str, Any]:
    """The engine's metric on the validation split and its parity with `model` (the PyTorch
    model it was built from) on the first `eval.parity_samples` of the same inputs: each input
    runs through the engine once."""
    torch_model = measure.predict_torch(model, torch.device("cpu"))
    outputs, refs, seen = [], [], 0

    def run(x: torch.Tensor) -> np.ndarray:
        nonlocal seen
        out = np.asarray(engine(x.numpy()), dtype=np.float32)
        if seen < plan.eval.parity_samples:
            x = x[: plan.eval.parity_samples - seen]
            outputs.append(out[: len(x)])
            refs.append(torch_model(x))
            seen += len(x)
        return out

    if measure.is_lm_data(data.val):  # logits of a whole vocabulary per token: compared window by window
        return {"metric": score(lambda x: engine(x.numpy())), "parity": lm_parity.compare(engine, torch_model, data.val,
                                                                     plan.eval.parity_samples, engine.precision)}
    metric = score(run)
    classifier = bool(data.num_classes) or plan.eval.metric in ("top1", "top5", "agreement")
    return {"metric": metric, "parity": parity.compare(np.concatenate(outputs), np.concatenate(refs), engine.precision, classifier)}


def gates(base: dict[str, Any], eng: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """The recipe's gates for one engine against the baseline PyTorch model."""
    out: dict[str, Any] = {}
    name = plan.eval.metric
    if plan.eval.max_drop is not None and name in base["metric"] and name in eng["metric"]:
        drop = base["metric"][name] - eng["metric"][name]
        if lower_is_better(name):
            drop = -drop
        out["max_drop"] = {"limit": plan.eval.max_drop, "value": round(drop, 6), "passed": drop <= plan.eval.max_drop + 1e-9}
    if plan.eval.min_speedup is not None:
        speedup = base["latency_ms"]["p50"] / max(eng["latency_ms"]["p50"], 1e-9)
        out["min_speedup"] = {"limit": plan.eval.min_speedup, "value": round(speedup, 3),
                              "passed": speedup >= plan.eval.min_speedup}
    if plan.eval.min_runtime_speedup is not None and "runtime_fp32" in eng:
        speedup = eng["runtime_fp32"]["speedup"]
        out["min_runtime_speedup"] = {"limit": plan.eval.min_runtime_speedup, "value": speedup,
                                      "passed": speedup >= plan.eval.min_runtime_speedup}
    base_ppl, eng_ppl = base["metric"].get("perplexity"), eng["metric"].get("perplexity")
    if plan.eval.max_ppl_increase is not None and base_ppl and eng_ppl:
        rise = eng_ppl / base_ppl - 1
        out["max_ppl_increase"] = {"limit": plan.eval.max_ppl_increase, "value": round(rise, 5),
                                   "passed": rise <= plan.eval.max_ppl_increase + 1e-9}
    if plan.eval.max_kld is not None and "kld" in eng["metric"]:
        out["max_kld"] = {"limit": plan.eval.max_kld, "value": round(eng["metric"]["kld"], 6),
                          "passed": eng["metric"]["kld"] <= plan.eval.max_kld}
    par = eng["parity"]
    out["parity"] = {"limit": f"{par['statistic']} <= {par['tolerance']:.3g}", "value": par["value"],
                     "passed": par["passed"]}
    bad = eng["parity"].get("nonfinite", 0)  # NaN/Inf outputs: its own gate, so the report says which failed
    out["nan_inf"] = {"limit": 0, "value": bad, "passed": bad == 0}
    return out


THROUGHPUT_BATCH = 32


def throughput(engine, data: DataSplits, plan: Plan) -> dict[str, float]:
    """Samples per second on a batch of validation inputs (up to 32), after warm-up."""
    xs = []
    for x, _ in data.val:
        xs.append(x.numpy())
        if sum(len(b) for b in xs) >= THROUGHPUT_BATCH:
            break
    x = np.concatenate(xs)[:THROUGHPUT_BATCH]
    runs = max(3, plan.eval.iters // 5)
    for _ in range(min(plan.eval.warmup, 3)):
        engine(x)
    t = time.perf_counter()
    for _ in range(runs):
        engine(x)
    return {"batch": int(len(x)), "samples_per_s": round(len(x) * runs / (time.perf_counter() - t), 1)}


def progress_bar(console: Console) -> Progress:
    """The run's progress: steps, and within a step its batches, epochs or iterations, with the
    time left. sys.stdout/sys.stderr are not redirected through it: what libraries print there
    stays on descriptors 1 and 2, which the run captures into its log file."""
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
                    redirect_stdout=False, redirect_stderr=False,
                    disable=not (console.is_terminal or console.is_jupyter))  # into a file: no frames, no blank line


@contextlib.contextmanager
def per_batch(progress: Progress, predict: Callable[[torch.Tensor], np.ndarray], description: str, loader):
    """`predict`, advancing a progress task once per batch of `loader` (validation can be long)."""
    try:
        total = len(loader)
    except TypeError:  # an iterable dataset: no length
        total = None
    with progress_task(progress, description, total) as task:
        def counted(x: torch.Tensor) -> np.ndarray:
            out = predict(x)
            progress.advance(task)
            return out

        yield counted


def stage_dir(run_dir: Path, i: int, slot: str) -> Path:
    return run_dir / "checkpoints" / f"{i}_{slot}"


def completed_stages(run_dir: Path, plan: Plan) -> int:
    """How many stages, from the first, a killed run finished (their record is written last)."""
    done = 0
    for i, step in enumerate(plan.steps, 1):
        if not (stage_dir(run_dir, i, step.slot) / "stage.safetensors").is_file():
            break
        done = i
    return done


@dataclass
class Pipeline:
    """One run as it moves through its steps: what every step reads, and the step now running
    (`where`, named if it runs out of memory)."""

    plan: Plan
    out_dir: Path
    read_dir: Path  # where finished stages are read from: the killed run's folder when resuming
    device: torch.device
    report: dict[str, Any]
    progress: Progress
    task: Any  # the progress bar's overall task
    main: bool  # rank 0 (the only process that writes), or the single process
    output: quiet.Captured  # what libraries write to descriptors 1 and 2 during the run
    where: str = "data"
    data: DataSplits | None = None
    score: Callable[[Callable[[torch.Tensor], np.ndarray]], dict[str, float]] | None = None  # metrics of a predict fn
    ctx: Context | None = None
    prompts: list[list[int]] = dataclasses.field(default_factory=list)  # language models: fixed prompts' token ids

    def step(self, description: str, where: str) -> None:
        self.progress.update(self.task, description=description)
        self.where = where
        self.output.drain()  # the previous step's library output, before this step's lines in the log


def run(plan: Plan, out_dir: Path, console: Console | None = None, resume_dir: Path | None = None) -> dict[str, Any]:
    """Run the plan, writing everything under `out_dir` (rank 0 only, under torchrun). With
    `resume_dir` (a killed run's folder), stages it finished are loaded, not run again, and a
    training stage it was in continues from its last complete epoch. Other libraries' output goes
    to compressor.log (core/quiet.py); the terminal gets their count at the end."""
    main = distributed.is_main()
    console = console or Console(stderr=True, quiet=not main)
    console.file = quiet.terminal(console.file)  # progress and table reach the terminal while 1 and 2 are captured
    out_dir = Path(out_dir)
    # in a terminal, log lines go through the console, above the progress display rather than into it
    log_stream = FileProxy(console, console.file) if console.is_terminal and not console.quiet else None
    try:
        with quiet.run_output(log_stream) as output:
            return _run(plan, out_dir, console, resume_dir, main, output)
    finally:
        if main and quiet.messages():
            log_file = os.path.relpath(out_dir / "compressor.log")  # outputs/...: as the user knows it
            log_file = log_file if not log_file.startswith("..") else out_dir.resolve() / "compressor.log"
            n = quiet.messages()
            console.print(f"{n} library message{'s' * (n != 1)} in {log_file}" + ("" if quiet.verbose else " (-v shows them)"),
                          markup=False, highlight=False, soft_wrap=True)  # one line, however long the path


def _run(plan: Plan, out_dir: Path, console: Console, resume_dir: Path | None, main: bool,
         output: quiet.Captured) -> dict[str, Any]:
    started = time.perf_counter()
    seed_everything(plan.seed)
    device = distributed.device_for(torch.device(plan.device))
    distributed.init(device)
    report: dict[str, Any] = {"recipe": plan.recipe, "status": "error", "baseline": None, "stages": [],
                              "engine": None, "gates": {}, "skipped": plan.skipped,
                              "not_bit_exact": not_bit_exact(plan), "environment": facts(), "seconds": 0.0}
    pipe = None
    try:
        with progress_bar(console) as progress:
            task = progress.add_task("pipeline", total=len(plan.steps) + 1 + 2 * len(plan.targets))
            pipe = Pipeline(plan, out_dir, Path(resume_dir) if resume_dir is not None else out_dir, device, report,
                            progress, task, main, output)
            model = baseline(pipe)
            model, done = resume(pipe, model) if resume_dir is not None else (model, 0)
            for i, step in enumerate(plan.steps, 1):
                if i > done:
                    model = run_stage(pipe, i, step, model)
            report["layer_bytes"] = {"baseline": measure.layer_bytes(pipe.ctx.teacher), "final": measure.layer_bytes(model)}
            if not main:  # the other processes only help train
                return report
            engines = [build_engine(pipe, t, model) for t in plan.targets]  # each measured the same way
            report["engine"] = engines[0]
            if len(engines) > 1:
                report["engines"] = engines
            for i, eng in enumerate(engines):  # the first engine's gates keep their plain names
                if "not_run" in eng:  # nothing measured here to judge (Core ML off Apple systems)
                    continue
                for name, g in gates(report["baseline"], eng, plan).items():
                    report["gates"][name if i == 0 else f"{name}@{eng['target']}"] = g
        report["status"] = "ok" if all(g["passed"] for g in report["gates"].values()) else "failed_gate"
    except UserError as e:
        report["error"] = str(e)
        raise
    except Exception as e:  # a bug or a runtime failure: recorded in the report, then re-raised
        oom = out_of_memory(e, pipe.where if pipe else "data", plan)
        if oom is not None:
            report["error"] = str(oom)
            raise oom from None
        report["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        report["seconds"] = round(time.perf_counter() - started, 3)
        if main:
            write_outputs(report, plan, out_dir, console)
    return report


def baseline(pipe: Pipeline) -> nn.Module:
    """Data and model, checked; the model's measurements (the report's baseline); the frozen copy
    stages may distil from, and the Context they all share."""
    plan, device, report = pipe.plan, pipe.device, pipe.report
    data = pipe.data = build_data(plan.data, plan.seed)
    model = build_model(plan.model).to(device)
    if getattr(model, "source_parity", None):  # a model converted from another format, checked against it
        report["source_parity"] = dict(model.source_parity)
    _check_fits(model, data, device)
    calibrating = calibrating_slots(plan.steps)
    if calibrating and next(iter(data.calib), None) is None:
        raise UserError(f"the calibration split is empty, and stages.{calibrating[0]} calibrates on it",
                        key="data.calibration_size")
    if not data.labelled:
        report["metric_unavailable"] = "the data has no labels: only fidelity metrics are measured"
    pipe.step("baseline", "data.batch_size")
    metric_names = [plan.eval.metric] + list(plan.eval.extra_metrics)
    with per_batch(pipe.progress, measure.predict_torch(model, device), "reference outputs", data.val) as predict:
        reference = measure.reference(predict, data.val)

    def score(predict) -> dict[str, float]:
        with per_batch(pipe.progress, predict, "evaluating", data.val) as counted:
            return measure.evaluate(counted, data.val, metric_names, reference, data.labelled)

    def evaluate(m: nn.Module) -> dict[str, float]:
        return score(measure.predict_torch(m, device))

    pipe.score = score
    report["baseline"] = snapshot(model, data, plan, device, score, pipe.progress)
    report["baseline"]["size_bytes"] = len(safetensors_bytes(_unique_tensors(model)))
    if is_causal_lm(model):  # what a user of the model sees: its greedy answers and its speed
        pipe.prompts = generation.prompts(model.tokenizer_dir)
        report["baseline"]["greedy_tokens"] = generation.greedy(model, pipe.prompts)
        report["baseline"]["generation"] = generation.torch_speed(model)
    log.info("baseline: %s", _brief(report["baseline"], plan))
    pipe.progress.advance(pipe.task)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    pipe.ctx = Context(data=data, device=device, teacher=teacher, log=log, progress=pipe.progress, seed=plan.seed,
                       evaluate=evaluate, score=_scorer(plan, evaluate))
    return model


def _unique_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state a safetensors file holds, each shared tensor once (tied embeddings and lm_head)."""
    seen, out = set(), {}
    for k, v in model.state_dict().items():
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            out[k] = v.detach().cpu().contiguous()
    return out


def resume(pipe: Pipeline, model: nn.Module) -> tuple[nn.Module, int]:
    """The model after the last stage a killed run finished, and how many stages that was."""
    if pipe.main:
        remove_leftovers(pipe.read_dir)  # a killed run's half-written temporary files
    done = completed_stages(pipe.read_dir, pipe.plan)
    if done:
        model = _resume(pipe.read_dir, pipe.plan, done, pipe.ctx, pipe.report).to(pipe.device)
        log.info("resumed %s after stage %d (%s)", pipe.read_dir, done, pipe.plan.steps[done - 1].slot)
        pipe.progress.advance(pipe.task, done)
    return model, done


def run_stage(pipe: Pipeline, i: int, step, model: nn.Module) -> nn.Module:
    """Stage `i`: apply it, measure the model it leaves, save its checkpoint and its record."""
    ctx, plan = pipe.ctx, pipe.plan
    pipe.step(f"stage {step.slot} ({step.kind})", f"stages.{step.slot}")
    ctx.notes = {}
    ctx.train_dir = stage_dir(pipe.read_dir, i, step.slot) / "train"
    t = time.perf_counter()
    try:
        with measure.PeakMemory() as memory:
            model = step.build().apply(model, ctx)
    except UserError as e:  # name the stage's keys in full
        for p in e.problems:
            p.key = f"stages.{step.slot}.{p.key}" if p.key else f"stages.{step.slot}"
        raise
    seconds = time.perf_counter() - t
    entry = {"name": step.slot, "kind": step.kind, "seconds": round(seconds, 3), "peak_memory_bytes": memory.bytes,
             **snapshot(model, pipe.data, plan, pipe.device, pipe.score, pipe.progress), "notes": ctx.notes}
    if pipe.prompts:
        entry["greedy_identity"] = generation.identity(pipe.report["baseline"]["greedy_tokens"],
                                                       generation.greedy(model, pipe.prompts))
    ckpt = stage_dir(pipe.out_dir, i, step.slot) / "model.safetensors"
    entry["checkpoint"] = str(ckpt.relative_to(pipe.out_dir))
    pipe.report["stages"].append(entry)
    if pipe.main:
        # a stage that swaps the architecture (student) names the new one in ctx.handoff.model
        save_checkpoint(model, ckpt, ctx.handoff.model or plan.model, extra={"stage": step.slot, "kind": step.kind})
        save_state(ckpt.with_name("stage.safetensors"),  # last: its presence means the stage is complete
                   {"entry": entry, "handoff": dataclasses.asdict(ctx.handoff),
                    "rng": rng_state(pipe.data.train.generator)})
        shutil.rmtree(ctx.train_dir, ignore_errors=True)
    log.info("stage %s (%s): %s in %.1fs", step.slot, step.kind, _brief(entry, plan), seconds)
    pipe.progress.advance(pipe.task)
    return model


def build_engine(pipe: Pipeline, t, model: nn.Module) -> dict[str, Any]:
    """One target's engine, built into engine/, then its size, metric, parity, latency, throughput."""
    ctx, plan, out_dir = pipe.ctx, pipe.plan, pipe.out_dir
    pipe.step(f"target {t.kind}", t.key)
    ctx.notes = {}
    engine_dir = out_dir / "engine"
    before = _file_ids(engine_dir)
    # no steps to count: a pulse; exporters and converters print to descriptors 1 and 2: into the log file
    with progress_task(pipe.progress, f"building the {t.kind} engine"), quiet.Captured(t.kind):
        engine = t.build().build(model.cpu().eval(), ctx, engine_dir)
    # this target's files: new or replaced (a resumed run rebuilds over a killed run's engine)
    files = [p for p, i in _file_ids(engine_dir).items() if before.get(p) != i]
    if Path(engine.path).is_dir():  # a package (Core ML): its own files, not the scripts written beside it
        files = [p for p in files if Path(engine.path) in p.parents]
    pipe.progress.advance(pipe.task)
    pipe.progress.update(pipe.task, description=f"engine {t.kind}: parity, metric, latency")
    example = pipe.data.example_input(1).numpy()
    entry = {
        "target": t.kind,
        "precision": engine.precision,
        "path": str(Path(engine.path).relative_to(out_dir)),
        "provider": engine.provider,
        "size_bytes": sum(p.stat().st_size for p in files),
    }
    if getattr(engine, "not_run", None):  # built and checked, but its runtime is not on this machine
        reason = f"not run: {engine.not_run}"
        pipe.progress.advance(pipe.task)
        return {**entry, "not_run": reason, "notes": ctx.notes}
    entry.update({
        **engine_checks(engine, model, pipe.data, plan, pipe.score),
        "latency_ms": measure.latency(lambda: engine(example), plan.eval.warmup, plan.eval.iters, pipe.progress),
        "batch_size": 1,
        "notes": ctx.notes,
    })
    if plan.eval.min_runtime_speedup is not None and engine.precision != "fp32" and hasattr(t.params, "precision"):
        entry["runtime_fp32"] = runtime_fp32(pipe, t, engine, example)
    if hasattr(engine, "generate"):  # a language model: tokens/s of its own decoding loop, and its answers
        entry["generation"] = engine.speed(128, 128)
        tokens = [list(engine.generate(ids, generation.NEW_TOKENS)) for ids in pipe.prompts]
        entry["greedy_identity"] = generation.identity(pipe.report["baseline"]["greedy_tokens"], tokens)
        model_ppl = (pipe.report["stages"][-1] if pipe.report["stages"] else pipe.report["baseline"])["metric"]
        if "perplexity" in model_ppl and "perplexity" in entry["metric"]:
            entry["ppl_vs_model"] = round(entry["metric"]["perplexity"] / model_ppl["perplexity"] - 1, 6)
    else:
        entry["throughput"] = throughput(engine, pipe.data, plan)
    pipe.progress.advance(pipe.task)
    return entry


def runtime_fp32(pipe: Pipeline, t, engine, example: np.ndarray) -> dict[str, Any]:
    """An FP32 engine of the same target from the model before the pipeline, built in a scratch
    folder and timed interleaved with `engine` (the same load on both): the speed-up an INT8
    engine gives over what its runtime does without this pipeline."""
    import tempfile

    target = t.build()
    target.params = dataclasses.replace(t.params, precision="fp32")
    ctx = dataclasses.replace(pipe.ctx, notes={})
    with tempfile.TemporaryDirectory(dir=pipe.out_dir) as tmp:
        with quiet.Captured(t.kind):
            fp32 = target.build(copy.deepcopy(pipe.ctx.teacher).cpu().eval(), ctx, Path(tmp))
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
        times = measure.interleaved_latency({"engine": lambda: engine(example), "fp32": lambda: fp32(example)},
                                            pipe.plan.eval.warmup, pipe.plan.eval.iters, pipe.progress)
    return {"latency_ms": times["fp32"], "size_bytes": size,
            "speedup": round(times["fp32"]["p50"] / max(times["engine"]["p50"], 1e-9), 3)}


def _resume(run_dir: Path, plan: Plan, done: int, ctx: Context, report: dict[str, Any]) -> nn.Module:
    """The model after stage `done` of a killed run, with the report entries, the state stages
    left for later ones and the random generators as they were then."""
    for i, step in enumerate(plan.steps[:done], 1):
        record = load_state(stage_dir(run_dir, i, step.slot) / "stage.safetensors")
        report["stages"].append(record["entry"])
        ctx.handoff = Handoff(**record["handoff"])
    report["resumed_after_stage"] = plan.steps[done - 1].slot
    model = load_checkpoint(stage_dir(run_dir, done, plan.steps[done - 1].slot) / "model.safetensors")
    set_rng_state(record["rng"], ctx.data.train.generator)  # after the load: rebuilding the model draws random init
    return model


OUT_OF_MEMORY = re.compile(r"out of memory|can't allocate memory|failed to allocate memory|DefaultCPUAllocator", re.I)


def out_of_memory(e: Exception, key: str, plan: Plan) -> UserError | None:
    """A failed allocation as one line naming the step and the batch size, or None."""
    if not isinstance(e, MemoryError) and not OUT_OF_MEMORY.search(str(e)):
        return None
    e.__traceback__ = None  # lets the failed step's tensors go before the report is written
    size = re.search(r"allocate (\d+) bytes|allocate ([\d.]+ ?[KMGT]i?B)", str(e), re.I)
    tried = f" (could not allocate {int(size[1]) / 2**30:.2f} GiB)" if size and size[1] else \
        f" (could not allocate {size[2]})" if size else ""
    if key == "data":  # building the data itself, before any batch
        return UserError(f"out of memory loading the data{tried}", key=key)
    batch = (plan.data or {}).get("batch_size")
    return UserError(f"out of memory at data.batch_size={batch}{tried}; lower data.batch_size", key=key)


def _file_ids(folder: Path) -> dict[Path, tuple[int, int]]:
    """Each file under `folder` with its inode and mtime: a file replaced since has others."""
    if not folder.is_dir():
        return {}
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def _scorer(plan: Plan, evaluate):
    """The recipe's metric as one number where higher is better (early stopping), or None."""
    sign = -1.0 if lower_is_better(plan.eval.metric) else 1.0

    def score(model: nn.Module) -> float | None:
        value = evaluate(model).get(plan.eval.metric)
        return None if value is None else sign * value

    return score


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
