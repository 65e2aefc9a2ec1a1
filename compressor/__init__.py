"""compressor: declarative, recipe-driven model compression.

    from compressor import compress, load_engine
    report, engine = compress("default", overrides=["stages.prune.ratio=0.3"])

Extending: register a stage, target, model, dataset or metric with its decorator.
"""
import os

# ONNX Runtime's telemetry writes a device id and an event store to ~/.cache/Microsoft (and sends
# usage events); a run writes only its own folder. Read once, when onnxruntime is imported.
if not os.environ.get("ORT_DISABLE_TELEMETRY"):
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"

from compressor.api import bench_engine, compress, load_engine
from compressor.run.checkpoint import load_checkpoint, save_checkpoint
from compressor.errors import UserError
from compressor.core.interfaces import Context, DataSplits, Engine, Stage, Target
from compressor.registry import dataset, metric, model, stage, target

__version__ = "0.1.0"
__all__ = [
    "compress", "load_engine", "bench_engine", "load_checkpoint", "save_checkpoint", "UserError",
    "Context", "DataSplits", "Engine", "Stage", "Target", "stage", "target", "model", "dataset", "metric",
]
