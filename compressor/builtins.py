"""The built-in components, registered explicitly: this file is the list of what ships."""
from __future__ import annotations


def register() -> None:
    from compressor import metrics
    from compressor.data import digits, images, tensors, text, torchvision_data
    from compressor.data import photos
    from compressor.models import efficientnet_lite
    from compressor.models import digits_cnn, huggingface, timm_zoo, torchvision_zoo
    from compressor.registry import DATASETS, METRICS, MODELS, STAGES, TARGETS
    from compressor.stages import finetune, prune_magnitude, prune_structured, quantize_int8, quantize_qat
    from compressor.stages import quantize_dynamic, quantize_experimental, quantize_float, quantize_weight_only
    from compressor.stages import depthwise, distill, lowrank, prune_layers, prune_nm, sensitivity, student
    from compressor.targets import onnxruntime, openvino, torch_export

    STAGES.add("prune_magnitude", prune_magnitude.PruneMagnitude, prune_magnitude.PruneMagnitudeParams)
    STAGES.add("prune_structured", prune_structured.PruneStructured, prune_structured.PruneStructuredParams)
    STAGES.add("prune_nm", prune_nm.PruneNM, prune_nm.PruneNMParams)
    STAGES.add("prune_layers", prune_layers.PruneLayers, prune_layers.PruneLayersParams)
    STAGES.add("sensitivity", sensitivity.Sensitivity, sensitivity.SensitivityParams)
    STAGES.add("finetune", finetune.Finetune, finetune.FinetuneParams)
    STAGES.add("distill", distill.Distill, distill.DistillParams)
    STAGES.add("student", student.Student, student.StudentParams)
    STAGES.add("lowrank", lowrank.LowRank, lowrank.LowRankParams)
    STAGES.add("depthwise", depthwise.Depthwise, depthwise.DepthwiseParams)
    STAGES.add("quantize_int8", quantize_int8.QuantizeInt8, quantize_int8.QuantizeInt8Params)
    STAGES.add("quantize_qat", quantize_qat.QuantizeQAT, quantize_qat.QuantizeQATParams)
    STAGES.add("quantize_dynamic", quantize_dynamic.QuantizeDynamic, quantize_dynamic.QuantizeDynamicParams)
    STAGES.add("quantize_weight_only", quantize_weight_only.QuantizeWeightOnly,
               quantize_weight_only.QuantizeWeightOnlyParams)
    STAGES.add("quantize_experimental", quantize_experimental.QuantizeExperimental,
               quantize_experimental.QuantizeExperimentalParams)
    STAGES.add("quantize_fp16", quantize_float.QuantizeFP16, quantize_float.QuantizeFloatParams)
    STAGES.add("quantize_bf16", quantize_float.QuantizeBF16, quantize_float.QuantizeFloatParams)

    TARGETS.add("onnxruntime", onnxruntime.OnnxRuntimeTarget, onnxruntime.OnnxRuntimeParams)
    TARGETS.add("torch_export", torch_export.TorchExportTarget, torch_export.TorchExportParams)
    TARGETS.add("openvino", openvino.OpenVinoTarget, openvino.OpenVinoParams)

    MODELS.add("digits_cnn", digits_cnn.build, digits_cnn.DigitsCNNParams)
    MODELS.add("torchvision", torchvision_zoo.build, torchvision_zoo.TorchvisionParams)
    MODELS.add("huggingface", huggingface.build, huggingface.HuggingFaceParams)
    MODELS.add("timm", timm_zoo.build, timm_zoo.TimmParams)
    MODELS.add("efficientnet_lite", efficientnet_lite.build, efficientnet_lite.EfficientNetLiteParams)
    DATASETS.add("digits", digits.build, digits.DigitsParams)
    DATASETS.add("imagefolder", images.build_imagefolder, images.ImageFolderParams)
    DATASETS.add("synthetic", images.build_synthetic, images.SyntheticParams)
    DATASETS.add("hf_dataset", text.build, text.HFDatasetParams)
    DATASETS.add("text", text.build_text, text.TextParams)
    DATASETS.add("tensors", tensors.build, tensors.TensorsParams)
    DATASETS.add("torchvision_dataset", torchvision_data.build, torchvision_data.TorchvisionDatasetParams)
    DATASETS.add("photos", photos.build, photos.PhotosParams)

    for fn in (metrics.top1, metrics.top5, metrics.agreement, metrics.fidelity, metrics.neighbour_agreement,
               metrics.output_mse):
        METRICS.add(fn.__name__, fn)
