"""Framework overhead: `compressor run` (the default recipe) against the same pipeline as a
plain script (bench/plain_pipeline.py: the same libraries doing the same work), each a fresh
process, alternated, measured in one run. Where the framework's time goes beside the work: its
imports (`import compressor.cli`) and its validation (`compressor validate`, which `run` does
before any work), each timed the same way.

    .venv/bin/python bench/overhead.py [repeats]
Writes bench/results/overhead.json and the table in README.md. Goal: ratio <= 1.10."""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_kind, update_readme, write_result  # noqa: E402

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str], cwd: str) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t


def main(repeats: int = 5) -> None:
    commands = {
        "compressor": [sys.executable, "-m", "compressor", "run"],
        "plain": [sys.executable, str(HERE / "plain_pipeline.py")],
        "import": [sys.executable, "-c", "import compressor.cli"],
        "validate": [sys.executable, "-m", "compressor", "validate"],
    }
    seconds = {k: [] for k in commands}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            for k, cmd in commands.items():
                seconds[k].append(timed(cmd, tmp))
    m = {k: statistics.median(v) for k, v in seconds.items()}
    ratio = m["compressor"] / m["plain"]
    table = (f"Measured on {cpu_kind()}, {repeats} runs each, alternated.\n\n"
             "| pipeline (default recipe) | median wall seconds |\n|---|---|\n"
             f"| plain script, same libraries, same work | {m['plain']:.2f} |\n"
             f"| `compressor run` | {m['compressor']:.2f} |\n"
             f"| **ratio** | **{ratio:.3f}** (goal <= 1.10) |\n"
             f"| of which: `import compressor.cli` alone | {m['import']:.2f} |\n"
             f"| of which: `compressor validate` alone (imports + compose + checks) | {m['validate']:.2f} |")
    write_result("overhead", {"seconds": seconds, "median_seconds": m, "ratio": ratio, "repeats": repeats})
    update_readme("overhead", table)
    print(table)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
