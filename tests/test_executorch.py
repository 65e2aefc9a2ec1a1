"""ExecuTorch target on the packaged digits CNN: FP32 and INT8 programs really lowered to XNNPACK
and run by ExecuTorch's runtime; the INT8 one carries the quantize stage's own integers."""
import copy

import numpy as np
import pytest
import torch

pytest.importorskip("executorch")

from compressor.errors import UserError  # noqa: E402
from compressor.stages.quantize.int8 import QuantizeInt8, QuantizeInt8Params  # noqa: E402
from compressor.targets.executorch import ExecuTorchParams, ExecuTorchTarget, pt2e_representation  # noqa: E402
from compressor.testing import context, digits, digits_cnn, params, stage  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data, fp32 = digits(), digits_cnn()
    int8 = stage(QuantizeInt8, params(QuantizeInt8Params)).apply(copy.deepcopy(fp32), context(data, fp32))
    out = {}
    for precision, model in (("fp32", fp32), ("int8", int8)):
        ctx = context(data, fp32)
        target = stage(ExecuTorchTarget, params(ExecuTorchParams, precision=precision))
        engine = target.build(model, ctx, tmp_path_factory.mktemp(precision))
        out[precision] = (engine, model, ctx.notes)
    x = torch.cat([x for x, _ in data.val])
    return out, x


def test_fp32_program_is_fully_delegated_and_exact(built):
    (engine, model, notes), x = built[0]["fp32"], built[1]
    assert notes["delegated_share"] == 1.0 and notes["partitions"] == 1 and not notes["not_delegated"]
    with torch.no_grad():
        ref = model(x).numpy()
    out = engine(x.numpy())
    assert out.shape == ref.shape
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5  # the same float math, other kernels


def test_int8_program_runs_the_stages_integers_in_xnnpack(built):
    (engine, model, notes), x = built[0]["int8"], built[1]
    assert engine.precision == "int8" and engine.provider == "executorch:xnnpack"
    assert notes["delegated_share"] == 1.0 and not notes["not_delegated"]  # no op left to the portable kernels
    # the digits CNN's max-pool is quantized ahead of it, its ReLUs fold into the quantize after them
    assert notes["integer_graph"]["moved_before_pad_or_pool"] >= 1 and notes["integer_graph"]["clamps_dropped"] >= 1
    with torch.no_grad():
        ref = model(x).numpy()  # the fake-quantized PyTorch model the report measures
        rep = pt2e_representation(model)(x).numpy()
    # the PT2E form computes what the stage's model does: both round x / scale to int8 with the same scales
    # (measured bit-equal on AVX-512); a CPU whose vector kernels round a half the other way moves one
    # activation by one step, far below one 8-bit step of the output (2^-8)
    assert np.linalg.norm(rep - ref) / np.linalg.norm(ref) < 2 ** -12
    out = engine(x.numpy())
    # int8 activations: one step is 1/255 of a layer's range; XNNPACK requantizes in fixed point and the
    # logits gain one rounding (their range / 255), a few steps over the network
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.03
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.98


def test_int8_program_is_smaller_and_reloads(built):
    fp32, int8 = built[0]["fp32"][0], built[0]["int8"][0]
    ratio = fp32.path.stat().st_size / int8.path.stat().st_size
    assert ratio > 3.5  # int8 weights: measured 3.78x on digits (the program's own tables take the rest)
    again = ExecuTorchTarget.load(int8.path)
    x = built[1][:7].numpy()
    assert again.precision == "int8" and np.array_equal(again(x), int8(x))
    assert ExecuTorchTarget.load(fp32.path).precision == "fp32"


def test_bad_params_name_the_key():
    with pytest.raises(UserError, match="threads"):
        params(ExecuTorchParams, threads=-1)
    with pytest.raises(UserError, match="precision"):
        params(ExecuTorchParams, precision="int4")
