"""Shared by the benchmarks: where results go, and the README tables they refresh."""
from __future__ import annotations

import json
import platform
import re
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def machine() -> dict:
    from compressor.run.environment import cpu

    c = cpu()
    return {"cpu": c["model"], "cpu_kind": cpu_kind(), "cores": c["cores"], "python": platform.python_version()}


def cpu_kind() -> str:
    """The instruction sets INT8 speed and rounding hinge on, from the CPU flags (as lscpu shows them)."""
    from compressor.run.environment import cpu

    c = cpu()
    found = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in c["flags"]]
    return "x86 " + "+".join(found) if found else c["arch"]


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


def update_readme(name: str, markdown: str) -> None:
    """Replace the block between <!-- bench:NAME --> and <!-- /bench:NAME --> in README.md."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)


def interleaved_p50(fns: dict, warmup: int, iters: int) -> dict[str, float]:
    """Median ms of each callable, timed as the runtime speed gate times them (each round calls
    each once, in a fresh random order: compressor.measure.stats.interleaved_latency)."""
    from compressor.measure.stats import interleaved_latency

    return {n: t["p50"] for n, t in interleaved_latency(fns, warmup, iters).items()}


def import_nncf():
    """nncf without its usage telemetry (as compressor.targets.openvino imports openvino): with
    openvino_telemetry hidden at import, nncf keeps its no-op stub."""
    from compressor.targets.openvino import import_openvino

    import_openvino()
    hidden = "openvino_telemetry" not in sys.modules
    if hidden:
        sys.modules["openvino_telemetry"] = None
    try:
        import nncf
    finally:
        if hidden:
            sys.modules.pop("openvino_telemetry", None)
    return nncf
