"""The default recipe's pipeline as a plain script: the same libraries, the same work and the
same deliverables, and no framework. The work is the recipe's: structured pruning of half the
channels by Torch-Pruning (L2 magnitude), 5 epochs of fine-tuning (lr 1e-3, AdamW, cosine), static
INT8 (BN folded, 99.99th-percentile activations over 4 calibration batches, per-channel weights,
bias correction), an ONNX Runtime engine checked on the validation split and timed; the
deliverables: per-step accuracy, parameters, MACs and latency, safetensors checkpoints, a JSON
report and a plot. bench/overhead.py times it against `compressor run`."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from compressor.data.digits import DigitsParams, build as build_digits
from compressor.models.digits_cnn import DigitsCNNParams, build as build_cnn
from compressor.modules.quant import QUANTIZABLE, PercentileObserver, QuantWrapper, needs_reduce_range
from compressor.stages.quantize.int8 import correct_bias, fold_batchnorm
from compressor.targets.onnx.export import export_onnx
from compressor.training.loop import accuracy, fit


def p50(fn, warmup=10, iters=50):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def measure(model, data, one):
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(one)
    with torch.inference_mode():
        lat = p50(lambda: model(one))
    return {"top1": accuracy(model, data.val), "params": sum(p.numel() for p in model.parameters()),
            "macs": counter.get_total_flops() // 2, "p50_ms": lat}


def main(out: Path = Path("plain_run")) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    out.mkdir(exist_ok=True)
    data = build_digits(DigitsParams())
    one = data.example_input()
    model = build_cnn(DigitsCNNParams())
    report = {"baseline": measure(model, data, one), "stages": []}

    def step(name):
        report["stages"].append({"name": name, **measure(model, data, one)})
        (out / name).mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / name / "model.safetensors"))

    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    model.eval()
    tp.pruner.MetaPruner(model, one, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                         ignored_layers=[classifier]).step()
    step("prune")
    fit(model, data.train, epochs=5, lr=1e-3)
    step("finetune")
    model.eval()
    fold_batchnorm(model)
    wrappers = []
    for name, m in list(model.named_modules()):
        if isinstance(m, QUANTIZABLE):
            w = QuantWrapper(m, 7 if needs_reduce_range() else 8)
            w.observer = PercentileObserver(99.99)
            model.set_submodule(name, w)
            wrappers.append(w)
    with torch.no_grad():
        for i, (x, _) in enumerate(data.calib):
            if i < 4:
                model(x)
    for w in wrappers:
        w.set_act_range(*w.observer.range())
        w.set_weight_scale()
        w.observer = None
    correct_bias(model, (x for (x, _), _ in zip(data.calib, range(4))), torch.device("cpu"))
    step("quantize")
    path = export_onnx(model, one, out / "model.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    run = lambda x: sess.run(None, {"input": x.numpy()})[0]  # noqa: E731
    right = total = 0
    for x, y in data.val:
        right += int((run(x).argmax(1) == y.numpy()).sum())
        total += len(y)
    x, _ = next(iter(data.val))
    with torch.no_grad():
        parity = float(np.abs(run(x) - model(x).numpy()).max())
    report["engine"] = {"top1": right / total, "parity_max_abs": parity, "p50_ms": p50(lambda: run(one)),
                        "size_bytes": path.stat().st_size}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [report["baseline"]] + report["stages"] + [report["engine"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    axes[0].bar(range(len(points)), [p["top1"] for p in points])
    axes[1].bar(range(len(points)), [p["p50_ms"] for p in points])
    fig.savefig(out / "report.png", dpi=110)
    print(json.dumps(report["engine"]))


if __name__ == "__main__":
    main()
