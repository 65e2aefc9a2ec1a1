"""Structural pruning across the torchvision zoo: every classification model, plus the
detection and segmentation models, built with weights=None, pruned by `prune_structured` at
ratio 0.5, run, exported to ONNX and run with ONNX Runtime; the engine must match the pruned
PyTorch model. Each model runs in its own process with a time limit, so one crash or hang
costs one row, not the table.

    .venv/bin/python bench/zoo_pruning.py [NAME ...]      # all models, or only these
Writes bench/results/zoo_pruning.json, bench/results/zoo_pruning.md and the README table."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, update_readme, write_result  # noqa: E402

RATIO = 0.5
TIME_LIMIT = 900  # seconds per model; the largest (regnet_y_128gf, vit_h_14) need a few minutes
NUM_CLASSES = {"classification": 1000, "detection": 91, "segmentation": 21}


def zoo() -> list[tuple[str, str]]:
    import torchvision.models as tvm

    return ([(n, "classification") for n in tvm.list_models(module=tvm)]
            + [(n, "detection") for n in tvm.list_models(module=tvm.detection)]
            + [(n, "segmentation") for n in tvm.list_models(module=tvm.segmentation)])


def input_size(name: str) -> int:
    """The smallest convenient input each model accepts (time on 2 cores is the budget)."""
    if name.startswith(("maxvit", "alexnet", "vgg")):
        return 224  # maxvit: 7x7 windows at every stage; the others pool adaptively to 6x6 / 7x7,
        # which ONNX exports only when that divides the feature map
    if name.startswith("inception"):
        return 96  # at least 75
    if name.startswith("vit_h_14"):
        return 56  # a multiple of the 14-pixel patch
    if name.startswith(("fasterrcnn", "maskrcnn", "keypointrcnn", "retinanet", "fcos")):
        return 320
    if name.startswith("ssdlite"):
        return 320
    if name.startswith("ssd"):
        return 300
    return 64


def build(name: str, family: str):
    import torch
    import torchvision.models as tvm

    size = input_size(name)
    kw = {"weights": None}
    if name.startswith("vit"):
        kw["image_size"] = size
    if name.startswith(("googlenet", "inception")):
        kw["aux_logits"] = False  # the aux heads run only in training mode, so a trace cannot see them
    if family != "classification":
        kw["weights_backbone"] = None
    if family == "detection" and not name.startswith("ssd"):
        kw.update(min_size=size, max_size=size)  # the default resizes every image to 800 px
    model = tvm.get_model(name, **kw).eval()
    if family == "detection":  # untrained heads score every box alike: break the ties so the
        with torch.no_grad():  # engine and PyTorch select the same boxes
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return model, size


def _flat(out) -> list:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat(v)]
    return []


@contextlib.contextmanager
def no_mha_fastpath():
    """MultiheadAttention's inference fast path (aten::_native_multi_head_attention) has no ONNX
    export; the plain path computes the same."""
    import torch

    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def check(name: str, family: str, row: dict) -> None:
    """Prune one model and check it end to end, filling `row`; raises at the first step that fails."""
    import logging

    import numpy as np
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from compressor.core.interfaces import Context, DataSplits
    from compressor.stages.prune.structured import PruneStructured, PruneStructuredParams
    from compressor.targets.onnx.export import export_onnx
    from compressor.targets.onnxruntime import OrtEngine

    row["step"] = "build"
    torch.manual_seed(0)
    model, size = build(name, family)
    x = torch.rand(1, 3, size, size)
    row["input"] = f"{size}x{size}"
    with torch.no_grad():
        ref_shapes = [tuple(t.shape) for t in _flat(model(x))]
    row["params_before"] = sum(p.numel() for p in model.parameters())

    row["step"] = "prune"
    dl = DataLoader(TensorDataset(x, torch.zeros(1, dtype=torch.long)), batch_size=1)
    data = DataSplits(train=dl, val=dl, calib=dl, num_classes=NUM_CLASSES[family], input_shape=(3, size, size))
    ctx = Context(data=data, device=torch.device("cpu"), teacher=None, evaluate=lambda m: {},
                  log=logging.getLogger("zoo"), progress=None)
    stage = PruneStructured()
    stage.params = PruneStructuredParams(ratio=RATIO)
    t = time.perf_counter()
    model = stage.apply(model, ctx)
    row["prune_seconds"] = round(time.perf_counter() - t, 2)
    row["params_after"] = sum(p.numel() for p in model.parameters())
    row.update(macs_ratio=ctx.notes["macs_ratio"], params_ratio=ctx.notes["params_ratio"])
    if row["params_after"] > 0.9 * row["params_before"]:
        raise AssertionError(f"barely pruned: params ratio {row['params_after'] / row['params_before']:.3f}")

    row["step"] = "forward"
    with torch.no_grad():
        outs = _flat(model(x))
    shapes = [tuple(t.shape) for t in outs]
    if family == "detection":  # the number of detections may change; the fields may not
        same = len(shapes) == len(ref_shapes) and all(a[1:] == b[1:] for a, b in zip(shapes, ref_shapes))
    else:
        same = shapes == ref_shapes
    if not same:
        raise AssertionError(f"output shapes changed: {ref_shapes[:3]} -> {shapes[:3]}")

    row["step"] = "export"
    with tempfile.TemporaryDirectory() as tmp, no_mha_fastpath():
        path = export_onnx(model, x, Path(tmp) / "model.onnx")
        row["onnx_mb"] = round(path.stat().st_size / 2**20, 1)
        row["step"] = "onnxruntime"
        engine = OrtEngine(path)
        got = engine.session.run(None, {engine.input_name: x.numpy()})

    row["step"] = "parity"
    if len(got) != len(outs):
        raise AssertionError(f"ONNX gives {len(got)} outputs, PyTorch {len(outs)}")
    worst = 0.0
    for ref, o in zip(outs, got):
        ref = ref.numpy()
        if ref.shape != o.shape:
            raise AssertionError(f"ONNX output shape {o.shape} != PyTorch {ref.shape}")
        if ref.size == 0:
            continue
        if family == "detection":
            # Untrained heads give near-tied scores, so which box wins a tie (and so the order and
            # the labels) is arbitrary even before pruning: compare the sorted scores only, and the
            # count of everything else (checked above).
            if ref.ndim != 1 or ref.dtype.kind != "f":
                continue
            ref, o = np.sort(ref), np.sort(o)
        ref, o = ref.astype(np.float64), o.astype(np.float64)
        diff = float(np.abs(ref - o).max())
        tol = 1e-4 + 1e-3 * float(np.abs(ref).max())  # relative to the output's magnitude
        worst = max(worst, diff / tol)
        row.setdefault("max_abs_diff", 0.0)
        row["max_abs_diff"] = max(row["max_abs_diff"], diff)
    row["parity_vs_tolerance"] = round(worst, 4)
    if worst > 1:
        raise AssertionError(f"ONNX Runtime differs from PyTorch: max abs {row['max_abs_diff']:.3g} "
                             f"({worst:.1f}x the tolerance)")
    row["step"] = "done"


def run_one(name: str, family: str) -> dict:
    """`check` in a fresh process with a time limit; its JSON row is the last stdout line."""
    t = time.perf_counter()
    cmd = [sys.executable, __file__, "--one", name, family]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIME_LIMIT)
        lines = proc.stdout.strip().splitlines()
        row = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {
            "passed": False, "reason": f"crashed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"}
    except subprocess.TimeoutExpired:
        row = {"passed": False, "reason": f"timeout after {TIME_LIMIT} s"}
    return {"model": name, "family": family, **row, "seconds": round(time.perf_counter() - t, 1)}


def one(name: str, family: str) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    row: dict = {}
    try:
        check(name, family, row)
        row["passed"] = True
    except Exception as e:  # the row records why, and the table goes on
        import traceback

        row["passed"] = False
        row["reason"] = f"{row['step']}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:240]}"
        row["traceback"] = traceback.format_exc()[-1500:]
    print(json.dumps(row))


def table(rows: list[dict]) -> str:
    lines = ["| model | family | input | params (M) before -> after | MACs ratio | passed | reason |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        params = (f"{r['params_before'] / 1e6:.1f} -> {r['params_after'] / 1e6:.1f}"
                  if "params_after" in r else "-")
        lines.append(f"| {r['model']} | {r['family']} | {r.get('input', '-')} | {params} | "
                     f"{r.get('macs_ratio', '-')} | {'yes' if r['passed'] else 'no'} | {r.get('reason', '')} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    parts = []
    for fam in NUM_CLASSES:
        fam_rows = [r for r in rows if r["family"] == fam]
        if fam_rows:
            parts.append(f"{fam} {sum(r['passed'] for r in fam_rows)}/{len(fam_rows)}")
    return ", ".join(parts)


def main(names: list[str]) -> None:
    models = [(n, f) for n, f in zoo() if not names or n in names]
    rows = []
    for name, family in models:
        row = run_one(name, family)
        rows.append(row)
        print(f"{name:40s} {'ok' if row['passed'] else 'FAIL'} {row['seconds']:7.1f}s {row.get('reason', '')}",
              flush=True)
    if names:  # a partial run does not overwrite the published table
        return
    from importlib.metadata import version

    head = (f"Every torchvision model built with `weights=None`, pruned by `prune_structured` "
            f"(ratio {RATIO}, magnitude importance), run, exported to ONNX and run with ONNX Runtime "
            f"(passes when the engine matches the pruned model within 1e-4 + 1e-3 x max |output|). "
            f"torch {version('torch')}, torchvision {version('torchvision')}, "
            f"torch-pruning {version('torch-pruning')}.\n\n**Passed: {summary(rows)}.**")
    write_result("zoo_pruning", {"ratio": RATIO, "summary": summary(rows), "rows": rows})
    (RESULTS / "zoo_pruning.md").write_text(head + "\n\n" + table(rows) + "\n")
    failed = [r for r in rows if not r["passed"]]
    readme = head + "\n\n" + ("Failures:\n\n" + table(failed) if failed else "No failures.")
    readme += "\n\nEvery row: `bench/results/zoo_pruning.md`."
    update_readme("zoo_pruning", readme)
    print(summary(rows))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        one(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1:])
