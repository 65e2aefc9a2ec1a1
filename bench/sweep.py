"""Sweeps and search, measured.

1. A 6-job grid sweep of the digits recipe on 2 local joblib workers against the same sweep
   run serially (Hydra's basic launcher), each a fresh `compressor run -m`, in one run: the
   figure is the wall-time ratio serial / parallel (all 6 jobs must be ok in both).
2. `compressor run search=budget` on the default recipe as it ships: every trial's engine
   metric, drop and p50 latency, and the speedup of the best engine within eval.max_drop over
   the recipe as written.

    .venv/bin/python bench/sweep.py
Writes bench/results/sweep.json, bench/results/budget_search.json and two tables in README.md."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import update_readme, write_result  # noqa: E402

GRID = ["stages.prune.ratio=0.2,0.4,0.6", "stages.quantize.calibration_batches=2,4", "stages.finetune.epochs=3"]
LAUNCHERS = {"serial (basic launcher)": [], "2 joblib workers": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]}


def sweep(extra: list[str]) -> tuple[float, list[dict]]:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "compressor", "run", "-m", *GRID, *extra], cwd=tmp, check=True,
                       capture_output=True)
        seconds = time.perf_counter() - t
        rows = list(csv.DictReader(next(Path(tmp).glob("outputs/multirun/*/summary.csv")).open()))
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows), rows
    return seconds, rows


def budget() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "compressor", "run", "search=budget"], cwd=tmp, capture_output=True)
        search = json.loads(next(Path(tmp).glob("outputs/default/*/search.json")).read_text())
    lines = ["| trial | overrides | status | top-1 | drop | engine p50 ms |", "|---|---|---|---|---|---|"]
    for t in search["trials"]:
        best = " (best)" if t["trial"] == search["best_trial"] else ""
        cells = [f"{t[k]:.4f}" if t.get(k) is not None else "-" for k in ("metric", "drop")]
        lat = f"{t['latency_ms']:.3f}" if t.get("latency_ms") is not None else "-"
        lines.append(f"| {t['trial']}{best} | `{' '.join(t['overrides']) or 'the recipe as written'}` | {t['status']} | "
                     + " | ".join(cells) + f" | {lat} |")
    table = "\n".join(lines) + f"\n\n{search['conclusion']}."
    write_result("budget_search", search)
    update_readme("budget_search", table)
    print(table)


def main() -> None:
    seconds = {name: sweep(extra)[0] for name, extra in LAUNCHERS.items()}
    serial, parallel = seconds.values()
    ratio = serial / parallel
    table = ("| 6-job sweep of the digits recipe (2-core machine) | wall seconds |\n|---|---|\n"
             + "".join(f"| {name} | {s:.1f} |\n" for name, s in seconds.items())
             + f"| **serial / parallel** | **{ratio:.2f}x** |")
    write_result("sweep", {"grid": GRID, "seconds": seconds, "ratio": ratio})
    update_readme("sweep", table)
    print(table)


if __name__ == "__main__":
    main()
    budget()
