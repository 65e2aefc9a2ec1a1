"""GPU figures, for a machine with a CUDA GPU (CI has none; `make bench` does not run this).

- torch_export with torch.compile at FP16 and BF16 (and TensorRT when the plugin's runtime is
  installed) for resnet18 at 224x224 and the BERT of tests/conftest.py, each against PyTorch
  eager FP32 on the same GPU in the same run -> bench/results/gpu_targets.json
- distillation with mixed precision (the packaged digits_student recipe with device=cuda):
  samples/s and the AMP dtype the loop chose, against the same run with amp=off
  -> bench/results/gpu_distill.json

    .venv/bin/python bench/gpu.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import write_result  # noqa: E402

TIMING = ["eval.warmup=20", "eval.iters=200", "eval.max_drop=null", "device=cuda"]


def models(tmp: Path) -> dict[str, list[str]]:
    from compressor.testing import sentiment_csv, tiny_bert

    folder = tiny_bert(tmp / "bert")
    csv = sentiment_csv(tmp / "sentiment.csv", n=800)
    return {
        "resnet18 224x224": ["model=torchvision", "model.name=resnet18", "model.num_classes=10", "data.image_size=224",
                             "data.channels=3"],
        "BERT (2 layers, hidden 64)": ["model=huggingface", f"model.path={folder}", "data=hf_dataset",
                                       f"data.train={csv}", f"data.tokenizer={folder}", "data.max_length=16"],
    }


def targets() -> list[str]:
    from compressor.registry import TARGETS

    out = ["{kind: torch_export, device: cuda, compile: true}"]
    if "tensorrt" in TARGETS.names() and not TARGETS.get("tensorrt").obj.requires(TARGETS.get("tensorrt").params()):
        out.append("tensorrt")
    return out


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU; this machine has none")
    from compressor.api import compress

    gpu = torch.cuda.get_device_name(0)
    rows, distill = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, model in models(tmp).items():
            for half in ("quantize_fp16", "quantize_bf16"):
                report, _ = compress("default", model + [f"+stage@stages.half={half}", "pipeline=[half]",
                                                          f"targets=[{','.join(targets())}]"] + TIMING, tmp / f"{name[:4]}{half}")
                base = report["baseline"]
                for e in report.get("engines") or [report["engine"]]:
                    rows.append({"model": name, "precision": e["precision"], "target": e["target"], "provider": e["provider"],
                                 "p50_ms": e["latency_ms"]["p50"], "eager_fp32_p50_ms": base["latency_ms"]["p50"],
                                 "speedup": base["latency_ms"]["p50"] / e["latency_ms"]["p50"],
                                 "throughput": e["throughput"]["samples_per_s"], "parity": e["parity"]})
                    print(rows[-1], flush=True)
        for amp in ("auto", "off"):
            report, _ = compress("digits_student", ["pipeline=[student]", "device=cuda", f"stages.student.amp={amp}"],
                                 tmp / f"distill_{amp}")
            n = report["stages"][0]["notes"]
            distill.append({"amp": n.get("amp", "off"), "samples_per_s": n["samples_per_s"],
                            "distilled_top1": n["distilled_metric"]["top1"]})
            print(distill[-1], flush=True)
    write_result("gpu_targets", {"gpu": gpu, "rows": rows})
    write_result("gpu_distill", {"gpu": gpu, "runs": distill})


if __name__ == "__main__":
    main()
