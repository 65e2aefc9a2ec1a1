"""Distilled student vs the same student on labels alone, over several seeds.

The packaged `digits_student` recipe (a width-6 digits CNN, 4% of the reference's parameters,
20 epochs) run with seeds 0..4; each run trains the student twice from the same start, once
distilled from the packaged teacher and once on labels alone, and reports both.
Writes bench/results/distillation.{json,md} and the README block.

    .venv/bin/python bench/distillation.py
"""
from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, update_readme, write_result  # noqa: E402

from compressor.api import compress  # noqa: E402

SEEDS = range(5)


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in SEEDS:
            report, _ = compress("digits_student", [f"seed={seed}", "pipeline=[student]"], Path(tmp) / str(seed))
            n = report["stages"][0]["notes"]
            rows.append({"seed": seed, "distilled": n["distilled_metric"]["top1"],
                         "labels_only": n["labels_only_metric"]["top1"], "params_ratio": n["params_ratio"]})
            print(rows[-1], flush=True)
    mean = {k: statistics.mean(r[k] for r in rows) for k in ("distilled", "labels_only")}
    wins = sum(r["distilled"] > r["labels_only"] for r in rows)
    write_result("distillation", {"recipe": "digits_student", "rows": rows, "mean": mean, "wins": wins})
    lines = ["Distilled student vs labels alone (`bench/distillation.py`): packaged `digits_student` recipe, "
             f"width-6 digits CNN ({rows[0]['params_ratio']:.1%} of the reference's parameters), 20 epochs, "
             "top-1 on the 360 validation digits.", "",
             "| seed | distilled | labels only | difference (points) |", "|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['distilled']:.4f} | {r['labels_only']:.4f} | {100 * (r['distilled'] - r['labels_only']):+.2f} |"
              for r in rows]
    lines.append(f"| mean | {mean['distilled']:.4f} | {mean['labels_only']:.4f} | "
                 f"{100 * (mean['distilled'] - mean['labels_only']):+.2f} |")
    lines += ["", f"Distillation wins {wins} of {len(rows)} seeds."]
    (RESULTS / "distillation.md").write_text("\n".join(lines) + "\n")
    update_readme("distillation", "\n".join(lines))


if __name__ == "__main__":
    main()
