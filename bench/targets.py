"""One recipe, every CPU backend: resnet18 and a small BERT at FP32 and INT8 on ONNX Runtime,
OpenVINO and torch.export, each engine timed against PyTorch eager in the same run.

Each row comes from one `compress()` run with `targets: [...]`: the runner times the PyTorch
FP32 baseline and every engine in that run (p50 at batch 1 and throughput at batch 32), so a
ratio never mixes two runs. torch.export has no INT8 (fake quantization would run as float
ops), so the INT8 runs build ONNX Runtime and OpenVINO only. The models are trained here
briefly (nothing downloaded): resnet18 on digits upsampled to 32x32 RGB, the BERT of
tests/conftest.py on a toy sentiment file. Machine idle, both cores, default threads.

    .venv/bin/python bench/targets.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, update_readme, write_result  # noqa: E402

TIMING = ["eval.warmup=20", "eval.iters=200", "eval.max_drop=null"]


def resnet18(tmp: Path) -> list[str]:
    """Train resnet18 on 32x32 digits, save it as safetensors; the recipe overrides that load it."""
    import torchvision
    from safetensors.torch import save_file

    from compressor.data.digits import DigitsParams, build as build_digits
    from compressor.training.loop import fit

    torch.manual_seed(0)
    data = build_digits(DigitsParams(image_size=32, channels=3))
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    fit(model, data.train, epochs=5, lr=2e-3, weight_decay=1e-4)
    path = tmp / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return ["model=torchvision", "model.name=resnet18", "model.num_classes=10", f"model.checkpoint={path}",
            "data.image_size=32", "data.channels=3"]


def bert(tmp: Path) -> list[str]:
    from compressor.data.text import HFDatasetParams, build as build_text
    from compressor.models.huggingface import HuggingFaceParams, build
    from compressor.testing import sentiment_csv, tiny_bert
    from compressor.training.loop import fit

    folder = tiny_bert(tmp / "bert")
    csv = sentiment_csv(tmp / "sentiment.csv", n=800)
    model = build(HuggingFaceParams(path=str(folder)))
    torch.manual_seed(0)
    fit(model, build_text(HFDatasetParams(train=str(csv), tokenizer=str(folder), max_length=16)).train, epochs=3, lr=2e-3)
    model.model.save_pretrained(folder)  # HFClassifier wraps the transformers model
    return ["model=huggingface", f"model.path={folder}", "data=hf_dataset", f"data.train={csv}",
            f"data.tokenizer={folder}", "data.max_length=16"]


RUNS = {"fp32": ("pipeline=[]", "targets=[onnxruntime,openvino,torch_export]"),
        "int8": ("+stage@stages.q=quantize_int8", "pipeline=[q]", "targets=[onnxruntime,openvino]")}


def main() -> None:
    from compressor.api import compress

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, setup in (("resnet18", resnet18), ("BERT (2 layers, hidden 64)", bert)):
            model = setup(tmp)
            for precision, run in RUNS.items():
                report, _ = compress("default", model + list(run) + TIMING, tmp / f"{name[:4]}_{precision}")
                base = report["baseline"]
                for e in report.get("engines") or [report["engine"]]:
                    rows.append({"model": name, "precision": precision, "target": e["target"],
                                 "provider": e["provider"], "metric": e["metric"], "baseline_metric": base["metric"],
                                 "p50_ms": e["latency_ms"]["p50"], "eager_p50_ms": base["latency_ms"]["p50"],
                                 "speedup": base["latency_ms"]["p50"] / e["latency_ms"]["p50"],
                                 "throughput": e["throughput"]["samples_per_s"], "size_bytes": e["size_bytes"],
                                 "parity": e["parity"]["passed"]})
                    print(rows[-1], flush=True)
    write_result("targets", {"rows": rows})
    lines = ["`bench/targets.py`: one `compress()` run per model and precision with `targets: [...]`; "
             "speedup = PyTorch eager FP32 p50 / engine p50 at batch 1, both measured in that run; "
             "throughput at batch 32. resnet18 at 32x32 RGB, BERT at 16 tokens.", "",
             "| model | precision | target | top-1 | p50 ms | eager p50 ms | speedup vs eager | samples/s (batch 32) | size KiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        top1 = r["metric"].get("top1")
        lines.append(f"| {r['model']} | {r['precision']} | {r['target']} | {top1:.4f} | {r['p50_ms']:.3f} | "
                     f"{r['eager_p50_ms']:.3f} | {r['speedup']:.2f}x | {r['throughput']:,.0f} | {r['size_bytes'] / 1024:,.0f} |")
    (RESULTS / "targets.md").write_text("\n".join(lines) + "\n")
    update_readme("targets", "\n".join(lines))


if __name__ == "__main__":
    main()
