"""Framework overhead: `compressor run` (the default recipe) against the same pipeline as a
plain script (bench/plain_pipeline.py), each a fresh process, alternated, measured in one run.

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
from common import update_readme, write_result  # noqa: E402

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str], cwd: str) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t


def main(repeats: int = 3) -> None:
    framework, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            framework.append(timed([sys.executable, "-m", "compressor", "run"], tmp))
            plain.append(timed([sys.executable, str(HERE / "plain_pipeline.py")], tmp))
    f, p = statistics.median(framework), statistics.median(plain)
    ratio = f / p
    table = ("| pipeline (default recipe) | median wall seconds |\n|---|---|\n"
             f"| plain script, same libraries | {p:.2f} |\n| `compressor run` | {f:.2f} |\n"
             f"| **ratio** | **{ratio:.2f}** (goal <= 1.10; {repeats} runs each, alternated) |")
    write_result("overhead", {"compressor_seconds": framework, "plain_seconds": plain, "ratio": ratio})
    update_readme("overhead", table)
    print(table)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
