"""Structured pruning, measured where it counts: resnet18 (weights=None) pruned by
`prune_structured` at ratio 0.5, both models built as FP32 ONNX Runtime engines and timed in the
same process at 224x224, batch 1, alternating rounds so drift hits both alike.

    .venv/bin/python bench/pruning.py
Writes bench/results/pruning.json and the README table."""
from __future__ import annotations

import copy
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import update_readme, write_result  # noqa: E402

RATIO = 0.5
ROUNDS, WARMUP, ITERS = 10, 20, 50  # per round and engine: 500 timed runs each in all


def main() -> None:
    import numpy as np
    import torch
    import torchvision
    from torch.utils.data import DataLoader, TensorDataset

    from compressor.measure import stats as measure
    from compressor.core.interfaces import Context, DataSplits
    from compressor.stages.prune.structured import PruneStructured, PruneStructuredParams
    from compressor.targets.onnx.export import export_onnx
    from compressor.targets.onnxruntime import OrtEngine

    torch.manual_seed(0)
    dense = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(1, 3, 224, 224)
    dl = DataLoader(TensorDataset(x, torch.zeros(1, dtype=torch.long)), batch_size=1)
    data = DataSplits(train=dl, val=dl, calib=dl, num_classes=1000, input_shape=(3, 224, 224))
    ctx = Context(data=data, device=torch.device("cpu"), teacher=None, evaluate=lambda m: {},
                  log=logging.getLogger("bench"), progress=None)
    stage = PruneStructured()
    stage.params = PruneStructuredParams(ratio=RATIO)
    t = time.perf_counter()
    pruned = stage.apply(copy.deepcopy(dense), ctx)
    prune_seconds = time.perf_counter() - t

    models = {"unpruned": dense, "pruned": pruned}
    stats = {k: {"params": measure.count_params(m), "macs": measure.count_macs(m, x)} for k, m in models.items()}
    p50s: dict[str, list[float]] = {k: [] for k in models}
    with tempfile.TemporaryDirectory() as tmp:
        engines = {k: OrtEngine(export_onnx(m, x, Path(tmp) / f"{k}.onnx")) for k, m in models.items()}
        feed = x.numpy()
        with torch.no_grad():
            parity = float(np.abs(engines["pruned"](feed) - pruned(x).numpy()).max())
        for _ in range(ROUNDS):
            for k, engine in engines.items():
                p50s[k].append(measure.latency(lambda: engine(feed), warmup=WARMUP, iters=ITERS)["p50"])
        sizes = {k: (Path(tmp) / f"{k}.onnx").stat().st_size for k in models}
    latency = {k: statistics.median(v) for k, v in p50s.items()}
    result = {
        "model": "resnet18 (torchvision, weights=None)", "ratio": RATIO, "input": [1, 3, 224, 224],
        "prune_seconds": round(prune_seconds, 2), "parity_max_abs": parity,
        **{k: {**stats[k], "onnx_bytes": sizes[k], "latency_ms_p50": latency[k], "round_p50s": p50s[k]}
           for k in models},
        "macs_ratio": stats["pruned"]["macs"] / stats["unpruned"]["macs"],
        "params_ratio": stats["pruned"]["params"] / stats["unpruned"]["params"],
        "latency_ratio": latency["pruned"] / latency["unpruned"],
    }
    rows = [f"| {k} | {stats[k]['params'] / 1e6:.2f} | {stats[k]['macs'] / 1e9:.3f} | {sizes[k] / 2**20:.1f} | "
            f"{latency[k]:.2f} |" for k in models]
    table = "\n".join([
        f"resnet18 (`weights=None`) pruned by `prune_structured` (ratio {RATIO}), both as FP32 ONNX Runtime "
        f"engines, 224x224, batch 1; median of {ROUNDS} alternated rounds of {ITERS} runs after warm-up.",
        "",
        "| model | params (M) | GMACs | ONNX (MiB) | p50 latency (ms) |",
        "|---|---|---|---|---|",
        *rows,
        f"| **pruned / unpruned** | {result['params_ratio']:.3f} | **{result['macs_ratio']:.3f}** | "
        f"{sizes['pruned'] / sizes['unpruned']:.3f} | **{result['latency_ratio']:.3f}** |",
    ])
    path = write_result("pruning", result)
    update_readme("pruning", table)
    print(table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
