"""The default recipe, measured: per-stage metric, size, latency and wall time.

    make bench        (or: .venv/bin/python bench/default_recipe.py)
Writes bench/results/default.json and the table in README.md."""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import update_readme, write_result  # noqa: E402


def main() -> None:
    import compressor

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        t = time.perf_counter()
        report, _ = compressor.compress("default")
        wall = time.perf_counter() - t
    base = report["baseline"]
    rows = [("baseline (PyTorch fp32)", base, None)]
    rows += [(f"{s['name']} ({s['kind']})", s, s["seconds"]) for s in report["stages"]]
    eng = report["engine"]
    rows.append((f"engine ({eng['target']} {eng['precision']})", eng, None))
    lines = ["| step | top-1 | size (KiB) | size vs baseline | p50 latency (ms) | latency vs baseline | seconds |",
             "|---|---|---|---|---|---|---|"]
    for name, r, sec in rows:
        lines.append(f"| {name} | {r['metric']['top1']:.4f} | {r['size_bytes'] / 1024:.1f} | "
                     f"{r['size_bytes'] / base['size_bytes']:.3f} | {r['latency_ms']['p50']:.3f} | "
                     f"{r['latency_ms']['p50'] / base['latency_ms']['p50']:.2f} | {sec if sec is not None else '-'} |")
    lines.append(f"\nWhole run: {wall:.1f} s wall (`compressor.compress('default')`), status `{report['status']}`.")
    path = write_result("default", {"report": report, "wall_seconds": wall})
    update_readme("default", "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
