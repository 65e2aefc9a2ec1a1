"""The Python API: compress a recipe, load a built engine, bench it, rebuild a report."""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from omegaconf import OmegaConf
from rich.console import Console

from compressor.core.atomic import write_text
from compressor.errors import UserError
from compressor.measure.stats import latency
from compressor.registry import TARGETS


def compress(recipe: str | None = None, overrides: list[str] | None = None, output_dir: str | Path | None = None):
    """Run a recipe (a packaged name or a .yaml path) as `compressor run` would.
    Returns (report, engine). Raises UserError for an invalid recipe."""
    from compressor.recipe.compose import compose_recipe, locate
    from compressor.recipe.load import check
    from compressor.run.runner import run

    overrides = list(overrides or [])
    ref = locate(recipe)
    plan = check(ref, overrides)[0]
    out = Path(output_dir) if output_dir else Path("outputs") / ref.name / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    cfg, _ = compose_recipe(ref, overrides)
    # the same three files Hydra writes for `compressor run`
    write_text(out / ".hydra" / "config.yaml", OmegaConf.to_yaml(plan.config))
    write_text(out / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))
    write_text(out / ".hydra" / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": cfg.hydra})))
    # on the root logger, as Hydra's: compressor.log holds our records and other libraries' (core/quiet.py)
    handler = logging.FileHandler(out / "compressor.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger("compressor").setLevel(logging.INFO)
    try:
        report = run(plan, out, Console(quiet=True))
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    engine = load_engine(out / report["engine"]["path"]) if report.get("engine") else None
    return report, engine


def load_engine(path: str | Path):
    """A callable engine for any built artifact (file, engine folder, or run folder)."""
    path = Path(path)
    readable = {s for name in TARGETS.names() for s in getattr(TARGETS.get(name).obj, "suffixes", ())}
    if path.is_dir() and path.suffix not in readable:  # a run or engine folder, not a package (.mlpackage)
        candidates = [p for p in sorted((path / "engine").glob("*") if (path / "engine").is_dir() else path.glob("*"))
                      if p.is_file() or p.suffix in readable]
        # the file a target reads, not its companions (OpenVINO's model.bin sorts before model.xml)
        candidates = [p for p in candidates if p.suffix in readable] or candidates
        report = path / "report.json"
        if report.is_file():
            engine = json.loads(report.read_text()).get("engine") or {}
            if engine.get("path"):
                candidates = [path / engine["path"]]
        if not candidates:
            raise UserError(f"no engine file in {path}", key="engine")
        path = candidates[0]
    if not path.exists():
        raise UserError(f"engine file not found: {path}", key="engine")
    if path.is_file() and path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes): build the engine again (compressor run)", key="engine")
    for name in TARGETS.names():
        target = TARGETS.get(name).obj
        if path.suffix in getattr(target, "suffixes", ()):
            try:
                return target.load(path)
            except UserError:
                raise
            except Exception as e:  # a runtime's own multi-line message for a damaged or wrong file
                lines = [x.strip() for x in str(e).splitlines() if x.strip()] or [""]
                # the first line that says something: not a heading such as "Exception from core.cpp:84:"
                reason = next((x for x in lines if not x.endswith(":")), lines[0])[:300]
                raise UserError(f"{path}: not a valid {path.suffix} engine ({type(e).__name__}: {reason})",
                                key="engine") from e
    raise UserError(f"no registered target reads '{path.suffix}' files ({path})", key="engine")


def generate(path: str | Path, prompt: str, max_new_tokens: int = 128, sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, chat: bool = True) -> Iterator[str]:
    """Stream the text a language-model engine writes after `prompt` (through the tokenizer's chat
    template where it has one and `chat`), piece by piece as tokens come: greedy, or sampled."""
    engine = load_engine(path)
    if not hasattr(engine, "generate"):
        raise UserError(f"{engine.path} is not a language-model engine (built from a model with task: causal_lm)",
                        key="engine")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(Path(engine.path).parent), local_files_only=True)
    if chat and tok.chat_template:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      tokenize=True, return_dict=True)["input_ids"]
    else:
        ids = tok(prompt)["input_ids"]
    out, shown = [], ""
    for token in engine.generate(list(ids), max_new_tokens, greedy=not sample, temperature=temperature, top_p=top_p,
                                 seed=seed):
        out.append(token)
        text = tok.decode(out, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # a character still split between tokens waits for the next
            yield text[len(shown):]
            shown = text


def bench_engine(path: str | Path, batch: int = 32, warmup: int = 10, iters: int = 50) -> dict[str, Any]:
    engine = load_engine(path)
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in engine.input_shape]
    rng = np.random.default_rng(0)
    one = (rng.integers(0, 100, [1] + shape[1:]) if getattr(engine, "input_dtype", np.float32) == np.int64
           else rng.standard_normal([1] + shape[1:])).astype(getattr(engine, "input_dtype", np.float32))
    many = np.repeat(one, batch, axis=0)
    lat = latency(lambda: engine(one), warmup, iters)
    fixed = engine.input_shape[0] if engine.input_shape and isinstance(engine.input_shape[0], int) else None
    try:
        engine(many)
    except Exception as e:  # a file exported with a fixed batch (another tool's ONNX) refuses other batches
        if fixed and fixed != batch:
            raise UserError(f"{engine.path} takes a fixed batch of {fixed}, not {batch}: give --batch {fixed}",
                            key="bench") from e
        raise
    t = time.perf_counter()
    runs = max(3, iters // 5)
    for _ in range(runs):
        engine(many)
    throughput = batch * runs / (time.perf_counter() - t)
    return {"path": str(engine.path), "provider": engine.provider, "precision": engine.precision,
            "latency_ms": lat, "batch": batch, "throughput": throughput}


def rebuild_report(path: str | Path, console: Console) -> dict[str, Any]:
    from compressor.report.writer import print_table, write_readable

    path = Path(path)
    file = path / "report.json"
    if not file.is_file():
        raise UserError(f"no report.json in {path}", key="report")
    report = json.loads(file.read_text())
    write_readable(report, path)
    print_table(report, console)
    return report
