"""compressor: declarative, recipe-driven model compression.

    from compressor import compress, load_engine
    report, engine = compress("default", overrides=["stages.prune.ratio=0.3"])

Extending: register a stage, target, model, dataset or metric with its decorator.
"""
from compressor.api import bench_engine, compress, load_engine
from compressor.checkpoint import load_checkpoint, save_checkpoint
from compressor.errors import UserError
from compressor.interfaces import Context, DataSplits, Engine, Stage, Target
from compressor.registry import dataset, metric, model, stage, target

__version__ = "0.1.0"
__all__ = [
    "compress", "load_engine", "bench_engine", "load_checkpoint", "save_checkpoint", "UserError",
    "Context", "DataSplits", "Engine", "Stage", "Target", "stage", "target", "model", "dataset", "metric",
]
