"""The LLM engines (compressor/targets/onnx/llm.py on ONNX Runtime, compressor/targets/llm_openvino.py
on OpenVINO) against the PyTorch model they were built from, on tiny random Llamas: logits of full
windows, greedy decoding with the KV cache token for token against a full recompute, and the ops
and weight types the runtimes actually run."""
import contextlib
import copy
import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from compressor.errors import UserError
from compressor.models.causal_lm import CausalLM
from compressor.modules.quant import WeightOnly
from compressor.targets.onnx.llm import LlmSession, block_size, export_llm

try:
    from compressor.targets.openvino import import_openvino

    import_openvino()
    HAVE_OPENVINO = True
except ImportError:
    HAVE_OPENVINO = False
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="OpenVINO is not installed (pip install openvino)")

FLOAT_TOL, QUANT_TOL = 1e-4, 2e-3


def tiny_llama(seed: int = 0, **overrides) -> CausalLM:
    """initializer_range 0.5 (not 0.02): a random model with the default initialization repeats one
    token forever, which would let a broken cache pass the greedy test."""
    torch.manual_seed(seed)
    kwargs = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=True, rope_theta=10000, initializer_range=0.5)
    config = LlamaConfig(**{**kwargs, **overrides})
    config._attn_implementation = "eager"
    return CausalLM(LlamaForCausalLM(config).eval())


def weight_only(lm: CausalLM, group_size=lambda linear: 32, bits=lambda name: 4,
                symmetric=lambda name: name == "k_proj") -> CausalLM:
    """Every Linear of the decoder and lm_head (tied to the embedding) as WeightOnly, quantized."""
    lm = copy.deepcopy(lm)
    for module in list(lm.model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                wo = WeightOnly(child, bits=bits(name), group_size=group_size(child), symmetric=symmetric(name))
                wo.quantize()
                setattr(module, name, wo)
    assert lm.model.lm_head.inner.weight is lm.model.model.embed_tokens.weight  # still tied
    return lm


def int4_int8(name: str) -> int:
    return 8 if name in ("v_proj", "down_proj") else 4


def rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@contextlib.contextmanager
def one_torch_thread():
    """Tiny models: two OpenMP threads only wait on each other (10x slower next to the engines'
    thread pools on a 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def greedy_reference(lm: CausalLM, prompt: list[int], n: int, eos: list[int]) -> list[int]:
    """PyTorch, no cache: the argmax of a full recompute, one token at a time, stopping before eos."""
    seq, new = list(prompt), []
    with torch.no_grad(), one_torch_thread():
        for _ in range(n):
            token = int(lm(torch.tensor([seq]))[0, -1].argmax())
            if token in eos:
                break
            seq.append(token)
            new.append(token)
    return new


def torch_logits(lm: CausalLM, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad(), one_torch_thread():
        return lm(torch.from_numpy(ids)).numpy()


WINDOW = np.random.default_rng(0).integers(0, 512, (3, 24))  # batch 3, a full window each
PROMPT = [5, 77, 301, 12, 9]


@pytest.fixture(scope="module")
def float_lm():
    return tiny_llama()


@pytest.fixture(scope="module")
def quant_lm(float_lm):
    return weight_only(float_lm, bits=int4_int8)


@pytest.fixture(scope="module")
def expected(float_lm, quant_lm):
    """PyTorch's logits of WINDOW and greedy tokens after PROMPT, computed once per model."""
    return {which: (torch_logits(lm, WINDOW), greedy_reference(lm, PROMPT, 16, [2]))
            for which, lm in (("float", float_lm), ("quant", quant_lm))}


def build(lm, folder, openvino=False):
    """An engine of `lm` in `folder`: ONNX Runtime's, or OpenVINO's."""
    if openvino:
        from compressor.targets.llm_openvino import OvLlmSession, export_llm_openvino

        export_llm_openvino(lm, folder)
        return OvLlmSession(folder, threads=1)
    export_llm(lm, folder)
    return LlmSession(folder, threads=1)


@pytest.fixture(scope="module")
def ort_float(float_lm, tmp_path_factory):
    return build(float_lm, tmp_path_factory.mktemp("ort_float"))


@pytest.fixture(scope="module")
def ort_quant(quant_lm, tmp_path_factory):
    return build(quant_lm, tmp_path_factory.mktemp("ort_quant"))


# --- ONNX Runtime --------------------------------------------------------------------------------

def test_ort_float_logits_match_pytorch(expected, ort_float):
    assert ort_float.precision == "fp32" and ort_float.provider == "CPUExecutionProvider"
    assert rel_error(ort_float(WINDOW), expected["float"][0]) < FLOAT_TOL
    ops = ort_float.kernels()
    # per layer: q|k|v packed into one MatMul (GroupQueryAttention reads them packed), o, gate|up packed
    # (then Split), down; plus lm_head as Gemm on the tied embedding table
    assert ops["GroupQueryAttention"] == 2 and ops["MatMul"] == 2 * 4 and ops["Gemm"] == 1
    assert "MatMulNBits" not in ops
    assert ops["SkipSimplifiedLayerNormalization"] == 4  # residual Adds fused: 2 per layer


def test_ort_weight_only_logits_match_pytorch(expected, ort_quant):
    assert ort_quant.precision == "int4_int8_weight_only"
    assert rel_error(ort_quant(WINDOW), expected["quant"][0]) < QUANT_TOL
    ops = ort_quant.kernels()
    assert ops["GroupQueryAttention"] == 2
    # q, k (symmetric), v (INT8) stay apart; gate|up (same grid) packed; lm_head too
    assert ops["MatMulNBits"] == 2 * 6 + 1 and "MatMul" not in ops
    assert ops["GatherBlockQuantized"] == 1  # the tied embedding reads lm_head's integers


@pytest.mark.parametrize("which", ["float", "quant"])
def test_ort_greedy_generate_matches_full_recompute(which, expected, request):
    engine = request.getfixturevalue(f"ort_{which}")
    tokens = expected[which][1]
    assert engine.eos_ids == [2] and len(set(tokens)) > 4  # the model does not just repeat itself
    assert engine.shared_kv  # GroupQueryAttention writes each step's keys into one buffer in place
    assert list(engine.generate(PROMPT, 16)) == tokens


def test_ort_per_channel_groups_are_reblocked(tmp_path):
    """Per-channel groups of 96 and 192 inputs (not powers of two) run as blocks of 32 and 64
    sharing one scale; lm_head's group of 128 is wider than its 96 inputs (zero-padded)."""
    lm = tiny_llama(seed=1, hidden_size=96, intermediate_size=192, num_attention_heads=3, num_key_value_heads=1)
    lm = weight_only(lm, group_size=lambda linear: 128 if linear.out_features == 512 else linear.in_features,
                     symmetric=lambda name: False)  # one grid: q|k|v packed
    assert (block_size(96), block_size(192), block_size(128)) == (32, 64, 128)
    export_llm(lm, tmp_path)
    engine = LlmSession(tmp_path, threads=1)
    assert engine.kernels()["MatMulNBits"] == 2 * 4 + 1
    assert rel_error(engine(WINDOW), torch_logits(lm, WINDOW)) < QUANT_TOL
    assert list(engine.generate(PROMPT, 8)) == greedy_reference(lm, PROMPT, 8, engine.eos_ids)


def test_ort_accuracy_level_4(quant_lm, expected, tmp_path):
    """int8 activations inside MatMulNBits: faster on CPUs, not exact (blockwise int8 rounding of
    activations; 8% of the largest logit on this random model, whose activations are wide)."""
    import onnx

    export_llm(quant_lm, tmp_path, accuracy_level=4)
    nodes = onnx.load(str(tmp_path / "model.onnx")).graph.node
    assert {a.i for n in nodes if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"} == {4}
    got, ref = LlmSession(tmp_path, threads=1)(WINDOW), expected["quant"][0]
    assert rel_error(got, ref) < 0.2 and (got.argmax(-1) == ref.argmax(-1)).mean() > 0.8


def test_ort_llama3_rope(tmp_path):
    lm = tiny_llama(rope_parameters={"rope_type": "llama3", "factor": 8.0, "rope_theta": 10000.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 16})
    export_llm(lm, tmp_path)
    assert rel_error(LlmSession(tmp_path, threads=1)(WINDOW), torch_logits(lm, WINDOW)) < FLOAT_TOL


def test_unsupported_rope_and_group_are_user_errors(tmp_path):
    lm = tiny_llama(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(UserError, match="rope type dynamic"):
        export_llm(lm, tmp_path)
    with pytest.raises(UserError, match="group size 24"):
        block_size(24)


def test_metadata_tokenizer_sampling_and_speed(float_lm, tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    (tok / "chat_template.jinja").write_text("{{ messages }}")
    (tok / "model.safetensors").write_text("not a tokenizer file")
    lm = CausalLM(float_lm.model, tokenizer_dir=tok)
    out = tmp_path / "engine"
    export_llm(lm, out)
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()
    assert not (out / "model.safetensors").exists()
    meta = json.loads((out / "llm.json").read_text())
    assert meta["num_layers"] == 2 and meta["kv_heads"] == 2 and meta["head_dim"] == 16
    assert meta["vocab_size"] == 512 and meta["eos_token_ids"] == [2] and meta["context_length"] == 2048

    engine = LlmSession(out, threads=1)
    sampled = list(engine.generate(PROMPT, 8, greedy=False, temperature=0.8, top_p=0.9, seed=3))
    assert sampled == list(engine.generate(PROMPT, 8, greedy=False, temperature=0.8, top_p=0.9, seed=3))
    assert all(0 <= t < 512 for t in sampled)
    figures = engine.speed(prompt_len=8, new_tokens=4, repeats=1)
    assert figures["ttft_ms"] > 0 and figures["decode_tokens_per_s"] > 0
    with pytest.raises(UserError, match="exceed"):
        engine(np.zeros((1, 2049), np.int64))


# --- OpenVINO ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ov_float(float_lm, tmp_path_factory):
    return build(float_lm, tmp_path_factory.mktemp("ov_float"), openvino=True)


@pytest.fixture(scope="module")
def ov_quant(quant_lm, tmp_path_factory):
    return build(quant_lm, tmp_path_factory.mktemp("ov_quant"), openvino=True)


@needs_openvino
def test_ov_float_logits_match_pytorch_and_ort(expected, ov_float, ort_float):
    got = ov_float(WINDOW)
    assert rel_error(got, expected["float"][0]) < FLOAT_TOL
    assert rel_error(got, ort_float(WINDOW)) < FLOAT_TOL
    assert ov_float.fully_connected_weights() == {"f32": 2 * 4 + 1}  # packed as on ONNX Runtime


@needs_openvino
def test_ov_weight_only_keeps_weights_compressed(expected, ov_quant, ort_quant):
    from compressor.targets.llm_openvino import compressed_weights

    assert ov_quant.precision == "int4_int8_weight_only"
    got = ov_quant(WINDOW)
    assert rel_error(got, expected["quant"][0]) < QUANT_TOL
    assert rel_error(got, ort_quant(WINDOW)) < QUANT_TOL
    # the device runs every Linear (lm_head included) on u4 / u8 weights, none was expanded to f32
    assert ov_quant.fully_connected_weights() == {"u4": 2 * 4 + 1, "u8": 2 * 2}
    sizes = compressed_weights(ov_quant.path)
    assert sizes["u4"] > 0 and sizes["u8"] > 0


@needs_openvino
@pytest.mark.parametrize("which", ["float", "quant"])
def test_ov_greedy_generate_matches_full_recompute(which, expected, request):
    engine = request.getfixturevalue(f"ov_{which}")
    assert list(engine.generate(PROMPT, 16)) == expected[which][1]
    figures = engine.speed(prompt_len=8, new_tokens=4, repeats=1)
    assert figures["decode_tokens_per_s"] > 0
