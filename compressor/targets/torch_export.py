"""torch.export target: the model as an ExportedProgram (`model.pt2`), run by PyTorch itself,
eagerly or through torch.compile (Inductor), on CPU or CUDA, in FP32, FP16 or BF16.

No INT8 here: the fake-quantized model of our quantize stages would run as float ops, which
is not an INT8 engine. The ONNX Runtime and OpenVINO targets run those with integer kernels."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compressor.core.atomic import atomic_path
from compressor.core.interfaces import Context
from compressor.core.params import one_of
from compressor.core.untrusted import load_exported_program

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MAX_BATCH = 4096


@dataclass
class TorchExportParams:
    precision: str = "auto"  # auto: what the pipeline leaves (fp16/bf16 after those stages, else fp32)
    compile: bool = False  # run the exported program through torch.compile (Inductor)
    device: str = "cpu"  # cpu | cuda[:N]

    def check(self):
        yield from one_of(self.precision, ("auto",) + TorchExportTarget.precisions, "precision")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            yield "device", f"must be cpu or cuda[:N], got {self.device!r}"


class TorchExportEngine:
    """A loaded ExportedProgram, callable on numpy batches."""

    def __init__(self, path: Path, compile: bool = False, device: str = "cpu"):
        self.path, self.device = Path(path), torch.device(device)
        program = load_exported_program(self.path)  # its pickles restricted to tensors
        self.module = program.module().to(self.device)
        first = [s for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"][0]
        meta = program.graph.find_nodes(op="placeholder", target=first.arg.name)[0].meta["val"]
        self.input_shape = [d if isinstance(d, int) else -1 for d in meta.shape]
        self.input_dtype = np.int64 if meta.dtype == torch.int64 else np.float32
        self.dtype = meta.dtype if meta.dtype.is_floating_point else next(self.module.parameters()).dtype
        self.precision = {v: k for k, v in DTYPES.items()}.get(self.dtype, "fp32")
        self.run = torch.compile(self.module) if compile else self.module
        self.provider = f"torch.export{' + torch.compile' if compile else ''}:{self.device.type}"

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        if t.is_floating_point():
            t = t.to(self.dtype)
        out = self.run(t)
        out = getattr(out, "logits", out)
        return out.float().cpu().numpy()


class TorchExportTarget:
    """torch.export ExportedProgram (model.pt2) with a dynamic batch dimension."""

    params: TorchExportParams
    precisions = ("fp32", "fp16", "bf16")
    suffixes = (".pt2",)

    @staticmethod
    def requires(params: TorchExportParams) -> list[tuple[str, str]]:
        if params.device.startswith("cuda") and not torch.cuda.is_available():
            return [("device", "cuda was asked for but this machine has no CUDA GPU")]
        return []

    def build(self, model: nn.Module, ctx: Context, out_dir: Path) -> TorchExportEngine:
        p = self.params
        out_dir.mkdir(parents=True, exist_ok=True)
        example = ctx.data.example_input(2)  # batch 2: an example of batch 1 would fix the dimension at 1
        if example.is_floating_point():  # the pipeline left the weights in this precision (plan checks it)
            example = example.to(DTYPES[p.precision])
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        with torch.no_grad():
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False)
        path = out_dir / "model.pt2"
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a killed run leaves no half-written file
            torch.export.save(program, f)
        ctx.notes["ops"] = len([n for n in program.graph.nodes if n.op == "call_function"])
        return TorchExportEngine(path, p.compile, p.device)

    @staticmethod
    def load(path: Path) -> TorchExportEngine:
        return TorchExportEngine(path)
