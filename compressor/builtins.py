"""The built-in components: this list is what ships. Each entry is (kind, name, object, params) with
"module:attribute" references; the registry imports a module only when one of its entries is used, so
nothing here imports anything and no import cycle runs through the registry."""
from __future__ import annotations

S, T = "compressor.stages", "compressor.targets"
M, D, E = "compressor.models", "compressor.data", "compressor.measure.metrics"

BUILTINS: list[tuple[str, str, str, str | None]] = [
    ("stage", "prune_magnitude", f"{S}.prune.magnitude:PruneMagnitude", f"{S}.prune.magnitude:PruneMagnitudeParams"),
    ("stage", "prune_structured", f"{S}.prune.structured:PruneStructured", f"{S}.prune.structured:PruneStructuredParams"),
    ("stage", "prune_nm", f"{S}.prune.nm:PruneNM", f"{S}.prune.nm:PruneNMParams"),
    ("stage", "prune_layers", f"{S}.prune.layers:PruneLayers", f"{S}.prune.layers:PruneLayersParams"),
    ("stage", "sensitivity", f"{S}.prune.sensitivity:Sensitivity", f"{S}.prune.sensitivity:SensitivityParams"),
    ("stage", "finetune", f"{S}.train.finetune:Finetune", f"{S}.train.finetune:FinetuneParams"),
    ("stage", "distill", f"{S}.train.distill:Distill", f"{S}.train.distill:DistillParams"),
    ("stage", "student", f"{S}.train.student:Student", f"{S}.train.student:StudentParams"),
    ("stage", "lowrank", f"{S}.rewrite.lowrank:LowRank", f"{S}.rewrite.lowrank:LowRankParams"),
    ("stage", "depthwise", f"{S}.rewrite.depthwise:Depthwise", f"{S}.rewrite.depthwise:DepthwiseParams"),
    ("stage", "quantize_int8", f"{S}.quantize.int8:QuantizeInt8", f"{S}.quantize.int8:QuantizeInt8Params"),
    ("stage", "quantize_qat", f"{S}.quantize.qat:QuantizeQAT", f"{S}.quantize.qat:QuantizeQATParams"),
    ("stage", "quantize_dynamic", f"{S}.quantize.dynamic:QuantizeDynamic", f"{S}.quantize.dynamic:QuantizeDynamicParams"),
    ("stage", "quantize_weight_only", f"{S}.quantize.weight_only:QuantizeWeightOnly",
     f"{S}.quantize.weight_only:QuantizeWeightOnlyParams"),
    ("stage", "quantize_experimental", f"{S}.quantize.experimental:QuantizeExperimental",
     f"{S}.quantize.experimental:QuantizeExperimentalParams"),
    ("stage", "quantize_w8a8", f"{S}.quantize.w8a8:QuantizeW8A8", f"{S}.quantize.w8a8:QuantizeW8A8Params"),
    ("stage", "prune_sparse", f"{S}.prune.sparse_llm:PruneSparse", f"{S}.prune.sparse_llm:PruneSparseParams"),
    ("stage", "quantize_fp16", f"{S}.quantize.float16:QuantizeFP16", f"{S}.quantize.float16:QuantizeFloatParams"),
    ("stage", "quantize_bf16", f"{S}.quantize.float16:QuantizeBF16", f"{S}.quantize.float16:QuantizeFloatParams"),

    ("target", "onnxruntime", f"{T}.onnxruntime:OnnxRuntimeTarget", f"{T}.onnxruntime:OnnxRuntimeParams"),
    ("target", "torch_export", f"{T}.torch_export:TorchExportTarget", f"{T}.torch_export:TorchExportParams"),
    ("target", "openvino", f"{T}.openvino:OpenVinoTarget", f"{T}.openvino:OpenVinoParams"),
    ("target", "executorch", f"{T}.executorch:ExecuTorchTarget", f"{T}.executorch:ExecuTorchParams"),
    ("target", "litert", f"{T}.litert:LiteRtTarget", f"{T}.litert:LiteRtParams"),
    ("target", "coreml", f"{T}.coreml:CoreMlTarget", f"{T}.coreml:CoreMlParams"),

    ("model", "digits_cnn", f"{M}.digits_cnn:build", f"{M}.digits_cnn:DigitsCNNParams"),
    ("model", "torchvision", f"{M}.torchvision_zoo:build", f"{M}.torchvision_zoo:TorchvisionParams"),
    ("model", "huggingface", f"{M}.huggingface:build", f"{M}.huggingface:HuggingFaceParams"),
    ("model", "timm", f"{M}.timm_zoo:build", f"{M}.timm_zoo:TimmParams"),
    ("model", "efficientnet_lite", f"{M}.efficientnet_lite:build", f"{M}.efficientnet_lite:EfficientNetLiteParams"),
    ("model", "onnx", f"{M}.onnx_file:build", f"{M}.onnx_file:OnnxParams"),

    ("dataset", "digits", f"{D}.digits:build", f"{D}.digits:DigitsParams"),
    ("dataset", "imagefolder", f"{D}.images:build_imagefolder", f"{D}.images:ImageFolderParams"),
    ("dataset", "synthetic", f"{D}.images:build_synthetic", f"{D}.images:SyntheticParams"),
    ("dataset", "hf_dataset", f"{D}.text:build", f"{D}.text:HFDatasetParams"),
    ("dataset", "text", f"{D}.text:build_text", f"{D}.text:TextParams"),
    ("dataset", "tensors", f"{D}.tensors:build", f"{D}.tensors:TensorsParams"),
    ("dataset", "torchvision_dataset", f"{D}.torchvision_data:build", f"{D}.torchvision_data:TorchvisionDatasetParams"),
    ("dataset", "photos", f"{D}.photos:build", f"{D}.photos:PhotosParams"),
] + [("metric", name, f"{E}:{name}", None)
     for name in ("top1", "top5", "agreement", "fidelity", "neighbour_agreement", "output_mse")] + [
    ("metric", name, f"compressor.measure.lm:{name}", None) for name in ("perplexity", "kld", "token_agreement")]
