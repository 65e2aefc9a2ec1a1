"""What a plugin may use: the contract types, the registration decorators and the helpers a stage or
target needs. Everything else in `compressor` is internal and may move; this module, the top-level
API (`compressor.compress`, `load_engine`, ...), `compressor.errors` and `compressor.testing` keep
their names.

A stage:  a class with `params` (a dataclass the runner fills from the recipe) and
          `apply(model, ctx: Context) -> nn.Module`; it writes no files, reports through `ctx.notes`
          and leaves messages for later stages in `ctx.handoff` (typed fields).
A target: a class with `params`, `build(model, ctx, out_dir) -> Engine` and `load(path) -> Engine`;
          optional class attributes `precisions` (what it can run) and `requires(params)`
          -> [(key, message)] (missing runtime or hardware, reported at validation).
An engine: `path`, `precision`, `provider` and `__call__(numpy batch) -> numpy outputs`.
A model source: `build(params, load_weights=True) -> nn.Module`.
A dataset: `build(params, seed=0) -> DataSplits`.
A metric: `fn(outputs, labels, reference) -> float`, higher is better; `fn.needs = "reference"`
          when it compares with the uncompressed model's outputs instead of labels.
Register each with its decorator (`@stage("name", Params)`, ...) in a module named by an entry
point of group `compressor.stages` / `.targets` / `.models` / `.datasets` / `.metrics`.
docs/DESIGN.md, "Plugins", has a complete example.
"""
from compressor.core.atomic import atomic_path, write_json, write_text
from compressor.core.interfaces import Context, DataSplits, Engine, Handoff, Stage, Target
from compressor.core.params import flat, one_of
from compressor.errors import Problem, UserError
from compressor.modules.quant import float_dtype, is_dynamic, is_quantized, is_weight_only
from compressor.registry import dataset, metric, model, stage, target
from compressor.targets.onnx.export import OPSET, export_onnx
from compressor.training.loop import fit
from compressor.training.settings import TrainSettings

__all__ = [
    "Context", "DataSplits", "Engine", "Handoff", "Stage", "Target",
    "stage", "target", "model", "dataset", "metric",
    "Problem", "UserError", "one_of", "flat", "TrainSettings", "fit",
    "atomic_path", "write_json", "write_text",
    "export_onnx", "OPSET", "float_dtype", "is_quantized", "is_dynamic", "is_weight_only",
]
