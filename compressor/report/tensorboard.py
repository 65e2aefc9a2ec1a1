"""`logger=tensorboard`: the run's figures as TensorBoard events in `<run>/tensorboard/`, made
from the report when the run ends: per step (0 = baseline, then each stage, then each engine)
the metric, parameters, size and latency; each training stage's loss per epoch; and the
recipe's overrides as hparams, so `tensorboard --logdir outputs/multirun/<time>` compares the
jobs of a sweep side by side."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def write_tensorboard(report: dict[str, Any], engines: list[dict[str, Any]], overrides: dict[str, Any],
                      out_dir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(out_dir)) as writer:
        steps = [report["baseline"] or {}] + report["stages"] + engines
        for i, step in enumerate(steps):
            for name, value in (step.get("metric") or {}).items():
                if value is not None:
                    writer.add_scalar(f"pipeline/{name}", value, i)
            for key in ("params", "size_bytes"):
                if step.get(key) is not None:
                    writer.add_scalar(f"pipeline/{key}", step[key], i)
            if (step.get("latency_ms") or {}).get("p50") is not None:
                writer.add_scalar("pipeline/latency_p50_ms", step["latency_ms"]["p50"], i)
        for stage in report["stages"]:
            for epoch, loss in enumerate((stage.get("notes") or {}).get("epoch_loss", []), 1):
                writer.add_scalar(f"train/{stage['name']}/loss", loss, epoch)
        engine = report.get("engine") or {}
        final = {f"engine/{k}": v for k, v in (engine.get("metric") or {}).items() if v is not None}
        if (engine.get("latency_ms") or {}).get("p50") is not None:
            final["engine/latency_p50_ms"] = engine["latency_ms"]["p50"]
        if final:
            hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in overrides.items()}
            writer.add_hparams(hparams or {"recipe": report["recipe"]}, final, run_name=".")
