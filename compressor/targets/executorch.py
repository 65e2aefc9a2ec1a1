"""ExecuTorch target: torch.export -> XNNPACK-delegated program (`model.pte`), run by ExecuTorch's
own runtime (its Python bindings) for latency, parity and the metric.

- fp32: the model as it is, every op XNNPACK can run delegated to it.
- int8: the quantize stage's model, written in the PT2E representation XNNPACK reads (int8
  `quantize_per_tensor`/`dequantize_per_tensor` around activations, int8 weights with a
  `dequantize_per_channel`). The scales are the stage's, so the engine computes what the report
  measured in PyTorch; nothing is calibrated again except what the stage leaves in float and
  XNNPACK needs in integers (see `integer_graph`).

Why not ExecuTorch's own PT2E `XNNPACKQuantizer`: it does not fuse ReLU6 into the conv before it,
so each ReLU6 shares its conv's pre-clamp range and keeps a few dozen of 256 levels inside [0, 6]
(efficientnet-lite0 on real photos: top-1 agreement with FP32 0.48 here, see bench/edge.py). Our
stage quantizes each conv's input after the clamp; below, a clamp whose quantize already clamps
the same is dropped, which lets XNNPACK run conv -> requantize as one integer kernel."""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compressor.core import quiet
from compressor.core.atomic import atomic_path
from compressor.core.interfaces import Context
from compressor.core.params import one_of
from compressor.errors import UserError
from compressor.modules.quant import QuantWrapper

MISSING = "ExecuTorch is not installed: pip install 'compressor[executorch]'"
INT8 = (-128, 127, torch.int8)
CALIBRATION_BATCHES = 8  # for the few float outputs XNNPACK needs quantized (see integer_graph)


@dataclass
class ExecuTorchParams:
    precision: str = "auto"  # auto: what the pipeline leaves (int8 after a quantize stage, else fp32)
    threads: int = 0  # XNNPACK's thread pool (process-wide); 0 leaves ExecuTorch's default

    def check(self):
        yield from one_of(self.precision, ("auto",) + ExecuTorchTarget.precisions, "precision")
        if self.threads < 0:
            yield "threads", f"must be >= 0, got {self.threads}"


def _ops():
    import torchao.quantization.pt2e  # noqa: F401 (registers the quantized_decomposed ops)

    return torch.ops.quantized_decomposed


class _Int8Layer(nn.Module):
    """A QuantWrapper in the PT2E representation: the same scales, uint8 activation ranges moved
    to int8 (zero point - 128: the same real values), the weight's integers stored as int8."""

    def __init__(self, w: QuantWrapper):
        super().__init__()
        self.inner = w.inner
        self.act = (float(w.act_scale), int(w.act_zero_point) - 128)
        self.out = (float(w.out_scale), int(w.out_zero_point) - 128) if w.quantize_output else None
        self.register_buffer("weight_int8", w.weight_integers().to(torch.int8))
        self.register_buffer("weight_scale", w.weight_scale.detach().clone().float())
        self.register_buffer("weight_zero", torch.zeros_like(w.weight_scale, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = _ops()
        x = qd.dequantize_per_tensor(qd.quantize_per_tensor(x, *self.act, *INT8), *self.act, *INT8)
        qmax = 127  # symmetric weights: -128 is never used
        w = qd.dequantize_per_channel(self.weight_int8, self.weight_scale, self.weight_zero, 0, -qmax, qmax, torch.int8)
        y = F.linear(x, w, self.inner.bias) if isinstance(self.inner, nn.Linear) else \
            self.inner._conv_forward(x, w, self.inner.bias)
        if self.out is not None:
            y = qd.dequantize_per_tensor(qd.quantize_per_tensor(y, *self.out, *INT8), *self.out, *INT8)
        return y


def pt2e_representation(model: nn.Module) -> nn.Module:
    """The quantize stage's model with each QuantWrapper as an `_Int8Layer` (computes the same)."""
    import copy

    out = copy.deepcopy(model).eval()
    for name, m in list(out.named_modules()):
        if isinstance(m, QuantWrapper):
            if m.dynamic:
                raise UserError("executorch runs static INT8 (quantize_int8); dynamic INT8 is for onnxruntime",
                                key="target.precision")
            out.set_submodule(name, _Int8Layer(m))
    return out


def _qrange(q) -> tuple[float, float]:
    scale, zp, qmin, qmax = q.args[1:5]
    return scale * (qmin - zp), scale * (qmax - zp)


def integer_graph(gm: torch.fx.GraphModule, calib: list[torch.Tensor]) -> dict[str, int]:
    """Rewrites the exported PT2E graph so that XNNPACK runs it in integers end to end, without
    changing what it computes beyond one rounding where noted. Returns what each rule did.

    1. A zero pad or a max-pool before a quantize: quantized before it too, with the same range
       (XNNPACK wants them so; exact: 0 is an int8 value, and max commutes with rounding).
    2. A clamp (relu, relu6) whose every user quantizes into a range inside the clamp's: dropped,
       the quantize clamps the same (the stage's post-clamp ranges start at 0 and end <= 6).
    3. A conv/linear/clamp output left in float (the last conv before the pooling, the logits):
       quantized over the clamp's exact range, or over the range seen on the calibration batches
       (the one added rounding: 1/255 of that range).
    4. Each user its own dequantize (the PT2E convention the XNNPACK partitioner expects)."""
    qd, aten, g = _ops(), torch.ops.aten, gm.graph
    Q, DQ = qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default
    clamps = (aten.hardtanh.default, aten.relu.default)
    computes = (aten.conv2d.default, aten.conv1d.default, aten.linear.default)
    done = {"moved_before_pad_or_pool": 0, "clamps_dropped": 0, "outputs_quantized": 0}

    def qdq_after(node, scale, zp):
        with g.inserting_after(node):
            q = g.call_function(Q, (node, scale, zp, *INT8))
        with g.inserting_after(q):
            dq = g.call_function(DQ, (q, scale, zp, *INT8))
        for u in list(node.users):
            if u is not q:
                u.replace_input_with(node, dq)

    def bounds(n):
        return (n.args[1], n.args[2]) if n.target == aten.hardtanh.default else (0.0, math.inf)

    for n in reversed(list(g.nodes)):  # 1, from the end: a chain of them passes the range up
        zero_pad = (n.target == aten.constant_pad_nd.default and (len(n.args) < 3 or not n.args[2])) or \
            (n.target == aten.pad.default and tuple(n.args[2:3]) in ((), ("constant",)) and not (n.args[3:4] or [0])[0])
        users = list(n.users)
        if (zero_pad or n.target in MAX_POOLS) and len(users) == 1 and users[0].target == Q:
            qdq_after(n.args[0], users[0].args[1], users[0].args[2])
            done["moved_before_pad_or_pool"] += 1
    float_out = [n for n in g.nodes if n.op == "call_function" and n.target in computes + clamps
                 and any(u.target != Q for u in n.users) and (n.target in clamps or not _feeds_clamp(n, clamps))]
    ranges = _observe(gm, [n for n in float_out if n.target in computes or bounds(n)[1] == math.inf], calib)
    for n in float_out:  # 3
        lo, hi = bounds(n) if n.target in clamps and bounds(n)[1] < math.inf else ranges[n.name]
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = max((hi - lo) / 255.0, 1e-12)
        qdq_after(n, scale, int(min(255, max(0, round(-lo / scale)))) - 128)
        done["outputs_quantized"] += 1
    for n in list(g.nodes):  # 2
        if n.target in clamps and n.users:
            a, b = bounds(n)
            if all(u.target == Q and a - 1e-9 <= _qrange(u)[0] and _qrange(u)[1] <= b + 1e-6 for u in n.users):
                n.replace_all_uses_with(n.args[0])
                g.erase_node(n)
                done["clamps_dropped"] += 1
    for n in list(g.nodes):  # 4
        if n.target == DQ and len(n.users) > 1:
            for u in list(n.users)[1:]:
                with g.inserting_before(u):
                    u.replace_input_with(n, g.call_function(DQ, n.args))
    g.lint()
    gm.recompile()
    return done


MAX_POOLS = (torch.ops.aten.max_pool2d.default, torch.ops.aten.max_pool1d.default)


def _feeds_clamp(n, clamps) -> bool:
    return len(n.users) == 1 and next(iter(n.users)).target in clamps


def _observe(gm: torch.fx.GraphModule, nodes, calib: list[torch.Tensor]) -> dict[str, tuple[float, float]]:
    """min/max of the named nodes' outputs over the calibration batches."""
    names = {n.name for n in nodes}
    seen: dict[str, tuple[float, float]] = {}

    class Watch(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in names:
                lo, hi = seen.get(n.name, (math.inf, -math.inf))
                seen[n.name] = (min(lo, float(out.min())), max(hi, float(out.max())))
            return out

    if names:
        with torch.no_grad():
            for x in calib:
                Watch(gm).run(x)
    return seen


def delegation(program) -> dict:
    """How much of the lowered graph XNNPACK runs: delegated and other ops, by op type."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(program.exported_program().graph_module)
    left = {k: v.non_delegated for k, v in info.delegation_by_operator.items() if v.non_delegated and k != "getitem"}
    other = sum(left.values())  # getitem only unpacks a delegate's outputs
    return {"delegated_ops": info.num_delegated_nodes, "other_ops": other,
            "delegated_share": round(info.num_delegated_nodes / max(info.num_delegated_nodes + other, 1), 4),
            "partitions": info.num_delegated_subgraphs, "not_delegated": left}


class ExecuTorchEngine:
    """A loaded `.pte` program, run by ExecuTorch's runtime one sample at a time (the program's
    batch is fixed at 1, as a phone app runs it)."""

    provider = "executorch:xnnpack"

    def __init__(self, path: Path, precision: str = "fp32", threads: int = 0):
        from executorch.runtime import Runtime

        self.path, self.precision = Path(path), precision
        if threads:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(threads)
        with quiet.Captured("executorch"):  # the runtime's cpuinfo lines on descriptor 2: into the log file
            self.method = Runtime.get().load_program(self.path).load_method("forward")
        meta = self.method.metadata.input_tensor_meta(0)
        self.input_shape = [-1] + list(meta.sizes())[1:]
        self.input_dtype = np.float32

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return np.concatenate([self.method.execute([x[i:i + 1]])[0].numpy() for i in range(len(x))])


class ExecuTorchTarget:
    """ExecuTorch program (model.pte), XNNPACK-delegated: FP32, or INT8 from the quantize stage."""

    params: ExecuTorchParams
    precisions = ("fp32", "int8")
    suffixes = (".pte",)

    @staticmethod
    def requires(params: ExecuTorchParams | None = None) -> list[tuple[str, str]]:
        return [] if importlib.util.find_spec("executorch") else [("", MISSING)]

    def build(self, model: nn.Module, ctx: Context, out_dir: Path) -> ExecuTorchEngine:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        p = self.params
        out_dir.mkdir(parents=True, exist_ok=True)
        example = ctx.data.example_input(2).cpu().float()
        with torch.no_grad():
            if p.precision == "int8":
                batch = torch.export.Dim("batch", min=1, max=4096)  # batch 2: calibration below runs whole batches
                gm = torch.export.export(pt2e_representation(model), (example,), dynamic_shapes=({0: batch},),
                                         strict=False).module()
                calib = [x.float() for (x, _), _ in zip(ctx.data.calib, range(CALIBRATION_BATCHES))]
                ctx.notes["integer_graph"] = integer_graph(gm, calib)
                model = gm
            program = torch.export.export(model, (example[:1],), strict=False)
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                                  constant_methods={"int8": int(p.precision == "int8")})
        ctx.notes.update(delegation(lowered))
        path = out_dir / "model.pte"
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a killed run leaves no half-written file
            f.write(lowered.to_executorch().buffer)
        return ExecuTorchEngine(path, p.precision, p.threads)

    @staticmethod
    def load(path: Path) -> ExecuTorchEngine:
        if not importlib.util.find_spec("executorch"):
            raise UserError(MISSING, key="engine")
        from executorch.runtime import Runtime

        with quiet.Captured("executorch"):
            program = Runtime.get().load_program(Path(path))  # ours records its precision; others: fp32 assumed
            int8 = "int8" in program.method_names and program.load_method("int8").execute([])[0]
        return ExecuTorchEngine(path, "int8" if int8 else "fp32")
