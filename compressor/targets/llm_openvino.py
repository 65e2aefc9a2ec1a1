"""The LLM engine on OpenVINO: the ONNX graph of compressor/targets/onnx/llm.py read by OpenVINO's
ONNX frontend and saved as IR (openvino_model.xml/.bin), decoded with the same `Decoder` loop.

Why the ONNX graph and not a second exporter: OpenVINO's ONNX frontend reads ONNX Runtime's contrib
ops. MatMulNBits becomes a u4/u8 Constant -> Convert -> Subtract(zero point) -> Multiply(scale)
decompression subgraph, which the CPU plugin runs as FullyConnected on compressed weights;
GatherBlockQuantized (the tied, quantized embedding) a compressed Gather on the same u4/u8 constant;
SimplifiedLayerNormalization and SkipSimplifiedLayerNormalization standard ops. So the IR keeps the
integers the report measured (`compressed_weights` checks it).

One difference: the `portable` graph, attention as ONNX's RotaryEmbedding + Attention (opset 23)
instead of com.microsoft GroupQueryAttention. OpenVINO 2026.4 reads GroupQueryAttention into an
internal op that compiles and, at batch 1, matches ONNX Runtime (logits within 3e-6), but (1) a
batch of more than one row fails in the CPU plugin (a Reshape in its translation), and (2)
`save_model` writes the op to the IR in an `extension` opset that `read_model` cannot create again.
ONNX's Attention becomes ScaledDotProductAttention and RotaryEmbedding the plugin's RoPE: standard
ops, any batch.
"""
from __future__ import annotations

import collections
import shutil
import tempfile
from pathlib import Path

import numpy as np

from compressor.errors import UserError
from compressor.models.causal_lm import CausalLM
from compressor.targets.onnx.llm import Decoder, copy_tokenizer, export_llm, read_meta
from compressor.targets.openvino_import import MISSING, import_openvino

XML = "openvino_model.xml"


def export_llm_openvino(model: CausalLM, out: Path) -> Path:
    """Writes out/openvino_model.xml/.bin, out/llm.json and the tokenizer; returns the .xml path."""
    try:
        ov = import_openvino()
    except ImportError as e:
        raise UserError(MISSING, key="target") from e
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:  # the ONNX file is a step, not an artifact
        onnx_path = export_llm(model, Path(tmp), portable=True)
        ov_model = ov.Core().read_model(str(onnx_path))
        # compress_to_fp16 off: float weights and the scales of the integer ones stay f32
        ov.save_model(ov_model, str(out / XML), compress_to_fp16=False)
        shutil.copyfile(Path(tmp) / "llm.json", out / "llm.json")
    copy_tokenizer(model.tokenizer_dir, out)
    return out / XML


def compressed_weights(xml: Path) -> dict[str, int]:
    """Bytes of the IR's constants by element type: an INT4 model's weights are u4 (its scales,
    norms and rotary caches f32)."""
    ov = import_openvino()
    sizes: collections.Counter = collections.Counter()
    for op in ov.Core().read_model(str(xml)).get_ops():
        if op.get_type_name() == "Constant":
            sizes[op.get_element_type().get_type_name()] += op.get_byte_size()
    return dict(sizes)


class OvLlmSession(Decoder):
    """OpenVINO (CPU by default) over a folder written by `export_llm_openvino`. Two infer requests
    take turns, each reading the KV cache the other just wrote, so the cache is never copied: a
    request's output tensors stay valid until that request runs again."""

    def __init__(self, folder: str | Path, threads: int = 0, device: str = "CPU", properties: dict | None = None):
        """`properties`: more OpenVINO compile properties, e.g. {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "32"}
        (int8 activations on compressed-weight layers, like MatMulNBits' accuracy_level 4)."""
        ov = import_openvino()
        folder = Path(folder)
        self.meta = read_meta(folder)
        self.path = folder / XML
        self.precision = self.meta["precision"]
        core = ov.Core()
        # f32: CPUs with AMX would otherwise compute in bf16. Dynamic quantization (int8 activations per
        # group of input features) only where the model rounds its activations so (activations: int8,
        # W8A8), with its block: OpenVINO's default on AVX-512 CPUs would round them for any model (8%
        # relative error on the tiny Llama). Otherwise the engine would not compute what the model computes.
        config = dict([ov.properties.hint.inference_precision(ov.Type.f32)])
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(self.meta.get("activation_block", 0))
        if threads:
            config.update([ov.properties.inference_num_threads(threads)])
        config.update(properties or {})
        self.compiled = core.compile_model(core.read_model(str(self.path)), device, config)
        self.provider = f"openvino:{device}"
        self.requests = [self.compiled.create_infer_request() for _ in range(2)]
        self.turn = 0
        self.past_names = [f"past_key_values.{i}.{p}" for i in range(self.meta["num_layers"]) for p in ("key", "value")]
        self.present_names = [n.replace("past_key_values", "present") for n in self.past_names]
        self._ov = ov

    def _empty_past(self, batch: int, capacity: int) -> list:  # OpenVINO grows its own
        m = self.meta
        return [np.zeros((batch, m["kv_heads"], 0, m["head_dim"]), np.float32) for _ in self.past_names]

    def _forward(self, ids: np.ndarray, mask: np.ndarray, past: list):
        request = self.requests[self.turn]
        self.turn ^= 1
        request.set_tensor("input_ids", self._ov.Tensor(ids))
        request.set_tensor("attention_mask", self._ov.Tensor(mask))
        for name, value in zip(self.past_names, past):
            request.set_tensor(name, value if isinstance(value, self._ov.Tensor) else self._ov.Tensor(value))
        request.infer()
        logits = request.get_tensor("logits").data
        return logits, [request.get_tensor(n) for n in self.present_names]

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        return np.array(super().__call__(input_ids))  # a copy: the request's buffer is reused

    def kernels(self) -> dict[str, int]:
        """`layer:precision` counts of the graph the device runs (constants left out); compressed
        weights show as FullyConnected whose weight input is u4/u8 (see `fully_connected_weights`)."""
        counts: collections.Counter = collections.Counter()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str)
            if kind not in ("Const", "Input", "Output"):
                counts[f"{kind}:{info['runtimePrecision'].astype(str)}"] += 1
        return dict(sorted(counts.items()))

    def fully_connected_weights(self) -> dict[str, int]:
        """Element types of the weight input of each FullyConnected the device runs."""
        counts: collections.Counter = collections.Counter()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            if op.get_rt_info()["layerType"].astype(str) == "FullyConnected":
                counts[op.input_value(1).get_element_type().get_type_name()] += 1
        return dict(counts)
