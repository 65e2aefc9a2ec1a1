"""auto-round's result, held by WeightOnly exactly: a tiny random Llama, 5 iterations."""
import importlib.util

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.skipif(importlib.util.find_spec("auto_round") is None,
                                reason="auto-round is not installed (pip install auto-round)")


def _tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    from compressor.models.causal_lm import CausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    config._attn_implementation = "eager"
    return CausalLM(LlamaForCausalLM(config).eval()).eval()


def _check_exact(lm, results):
    from compressor.modules.quant import WeightOnly
    from compressor.stages.quantize.autoround import to_weight_only

    to_weight_only(lm, results)
    for name, r in results.items():
        wo = lm.get_submodule(name)
        assert isinstance(wo, WeightOnly) and wo.group_size == r["group_size"]
        # auto-round's weight is in the dtype it tuned in (bf16 on CPUs with AVX-512 BF16 or AMX)
        assert float((wo.inner.weight.detach().to(r["weight"].dtype) - r["weight"]).float().abs().max()) < 1e-6
        assert torch.equal(wo.integers(), r["integers"])
        assert torch.equal(wo.scale, r["scale"]) and torch.equal(wo.zero_point, r["zero_point"])


@pytest.mark.slow
def test_weight_only_holds_autoround_exactly():
    from compressor.stages.quantize.autoround import autoround_layers

    lm = _tiny_lm()
    before = {n: p.clone() for n, p in lm.state_dict().items()}
    calib = torch.randint(0, 512, (8, 32), generator=torch.Generator().manual_seed(1))
    # group 128 does not divide the 64/128-wide inputs: fitted to 64 (q/k/v/o, gate/up) and 128 (down)
    results = autoround_layers(lm, calib, bits=4, group_size=128, symmetric=True, iters=5, seed=0)

    linears = [n for n, m in lm.named_modules() if type(m) is nn.Linear and ".layers." in n]
    assert sorted(results) == sorted(linears) and len(linears) == 14  # lm_head stays float
    assert all(torch.equal(p, before[n]) for n, p in lm.state_dict().items())  # the caller's model untouched
    assert results["model.model.layers.0.self_attn.q_proj"]["group_size"] == 64
    assert results["model.model.layers.0.mlp.down_proj"]["group_size"] == 128
    for r in results.values():
        assert r["integers"].dtype == torch.uint8 and int(r["integers"].max()) <= 15
        assert bool((r["zero_point"] == 8).all())
    # auto-round's symmetric grid gives -8 to the side of the larger magnitude: negative scales
    assert any(bool((r["scale"] < 0).any()) for r in results.values())

    _check_exact(lm, results)
    with torch.no_grad():
        assert torch.isfinite(lm(calib[:2])).all()


@pytest.mark.slow
def test_asymmetric_and_only_the_layers_asked_for():
    from compressor.stages.quantize.autoround import autoround_layers

    lm = _tiny_lm()
    calib = torch.randint(0, 512, (4, 16), generator=torch.Generator().manual_seed(2))
    name = "model.model.layers.1.mlp.down_proj"
    results = autoround_layers(lm, calib, bits=4, group_size=None, symmetric=False, iters=2, seed=0, layers=[name])
    assert list(results) == [name]
    r = results[name]
    assert r["group_size"] == 128 and r["scale"].shape == (64, 1)  # None: one group per output channel
    assert int(r["zero_point"].min()) >= 0 and int(r["zero_point"].max()) <= 15
    _check_exact(lm, results)
    assert type(lm.get_submodule("model.model.layers.1.mlp.up_proj")) is nn.Linear
