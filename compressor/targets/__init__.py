"""Targets: build an engine from the compressed model and run it. `onnxruntime`, `openvino` (both
through `onnx/`) and `torch_export`. A target is a class with `params`, `build(model, ctx, out_dir)
-> Engine` and `load(path) -> Engine`. Targets import `modules`, `core` and `compressor.targets.onnx`;
never a stage, `run`, `recipe` or `report`."""
