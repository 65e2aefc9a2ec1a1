"""What a sweep writes beside its jobs: summary.csv, summary.md and pareto.png, built from the
jobs' report.json files (so `compressor report SWEEP_DIR` rebuilds them at any time)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from compressor.core.atomic import atomic_path, write_text
from compressor.registry import lower_is_better

COLUMNS = ["job", "overrides", "status", "metric", "latency_ms", "tokens_per_s", "size_bytes", "pareto_latency",
           "pareto_size"]


class SweepSummary(Callback):
    """Named in base.yaml's hydra.callbacks: Hydra calls it in the launching process when a
    sweep ends, whatever launcher ran the jobs (in this process, joblib workers, Ray, SLURM)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        SWEEP_DIRS.append(Path(str(config.hydra.sweep.dir)))


SWEEP_DIRS: list[Path] = []


def engine_values(report: dict[str, Any], metric_name: str | None) -> dict[str, Any]:
    """What a sweep compares of one job's engine. A language model's engine is timed by its decode
    speed (batch 1): latency_ms is then the milliseconds per generated token, 1000 / tokens_per_s."""
    engine = report.get("engine") or {}
    speed = (engine.get("generation") or {}).get("decode_tokens_per_s")
    return {"metric": (engine.get("metric") or {}).get(metric_name),
            "latency_ms": 1000 / speed if speed else (engine.get("latency_ms") or {}).get("p50"),
            "tokens_per_s": speed, "size_bytes": engine.get("size_bytes")}


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder (one holding a report.json or Hydra's record), in job order. A job
    that left no report failed before its run started (the reason is in its compressor.log)."""
    rows = []
    jobs = {p.parent for p in sweep_dir.glob("*/report.json")} | {p.parent for p in sweep_dir.glob("*/.hydra")}
    for job in sorted(jobs, key=lambda p: (len(p.name), p.name)):
        report_file = job / "report.json"
        report = json.loads(report_file.read_text()) if report_file.is_file() else {"status": "error"}
        overrides = job / ".hydra" / "overrides.yaml"
        metric_name = next(iter((report.get("baseline") or {}).get("metric") or {}), None)
        rows.append({"job": job.name, "overrides": " ".join(_overrides(overrides)) if overrides.is_file() else "",
                     "status": report.get("status"), "metric_name": metric_name, **engine_values(report, metric_name)})
    common = set.intersection(*(set(r["overrides"].split()) for r in rows)) if rows else set()
    for r in rows:  # what varies between jobs is what a reader needs
        r["overrides"] = " ".join(o for o in r["overrides"].split() if o not in common)
    lower = lower_is_better(next((r["metric_name"] for r in rows if r["metric_name"]), None))
    for key in ("latency_ms", "size_bytes"):
        front = pareto([r for r in rows if r["metric"] is not None and r[key] is not None], key, lower)
        for r in rows:
            r[f"pareto_{key.split('_')[0]}"] = r["job"] in front
    return rows


def _overrides(path: Path) -> list[str]:
    import yaml

    return [str(o) for o in yaml.safe_load(path.read_text()) or []]


def pareto(rows: list[dict[str, Any]], cost: str, lower_is_better: bool = False) -> set[str]:
    """Jobs no other job beats on both: metric at least as good (as high, or as low for perplexity)
    and `cost` at least as low, one strictly."""
    sign = -1 if lower_is_better else 1
    return {r["job"] for r in rows
            if not any(sign * o["metric"] >= sign * r["metric"] and o[cost] <= r[cost]
                       and (o["metric"] != r["metric"] or o[cost] < r[cost]) for o in rows)}


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = job_rows(sweep_dir)
    if not rows:
        return rows
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(sweep_dir / "summary.csv", buf.getvalue())
    name = next((r["metric_name"] for r in rows if r["metric_name"]), "metric")
    decode = any(r["tokens_per_s"] for r in rows)  # language models: timed by decode tokens/s
    speed = "decode tok/s" if decode else "p50 ms"
    lines = [f"# Sweep: {len(rows)} jobs", "", f"| job | overrides | status | {name} | {speed} | size KiB | Pareto (speed / size) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        metric = f"{r['metric']:.4f}" if r["metric"] is not None else "-"
        key = "tokens_per_s" if decode else "latency_ms"
        latency = f"{r[key]:.3f}" if r[key] is not None else "-"
        size = f"{r['size_bytes'] / 1024:.1f}" if r["size_bytes"] is not None else "-"
        marks = " / ".join("yes" if r[k] else "no" for k in ("pareto_latency", "pareto_size"))
        lines.append(f"| {r['job']} | `{r['overrides']}` | {r['status']} | {metric} | {latency} | {size} | {marks} |")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["", "Not ok: " + ", ".join(f"job {r['job']} ({r['status']}: `{r['overrides']}`)" for r in failed)]
    if plot_pareto(rows, sweep_dir / "pareto.png"):
        lines += ["", f"![{name} against engine {'decode speed' if decode else 'latency'} and size, Pareto front "
                      "marked](pareto.png)"]
    write_text(sweep_dir / "summary.md", "\n".join(lines) + "\n")
    return rows


def plot_pareto(rows: list[dict[str, Any]], path: Path) -> bool:
    points = [r for r in rows if r["metric"] is not None and r["latency_ms"] is not None and r["size_bytes"] is not None]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decode = all(r["tokens_per_s"] for r in points)
    speed = ("tokens_per_s", "engine decode tokens/s (batch 1)") if decode else ("latency_ms", "engine p50 latency (ms)")
    name = points[0]["metric_name"] or "metric"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (key, label), flag in ((axes[0], speed, "pareto_latency"), (axes[1], ("size_bytes", "engine size (KiB)"), "pareto_size")):
        scale = 1 / 1024 if key == "size_bytes" else 1
        ax.scatter([r[key] * scale for r in points], [r["metric"] for r in points], color="#999", label="job")
        front = sorted((r for r in points if r[flag]), key=lambda r: r[key])
        ax.plot([r[key] * scale for r in front], [r["metric"] for r in front], "o-", color="#dd8452", label="Pareto front")
        for r in points:
            ax.annotate(r["job"], (r[key] * scale, r["metric"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel(name + (" (lower is better)" if lower_is_better(name) else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True
