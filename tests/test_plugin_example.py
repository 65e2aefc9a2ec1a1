"""The complete plugin example in docs/DESIGN.md section 5 runs as written: registered through the
public surface, checked as a recipe's params, applied to the real digits CNN."""
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.errors import UserError
from compressor.registry import STAGES
from compressor.testing import context, digits, digits_cnn, params

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md"


@pytest.fixture
def example():
    text = DESIGN.read_text()
    code = re.search(r"```python\n(# acme_prune/__init__.py\n.*?)```", text, re.S).group(1)
    module = types.ModuleType("acme_prune")
    exec(compile(code, "acme_prune/__init__.py", "exec"), module.__dict__)
    yield module
    STAGES.entries.pop("acme_shrink", None)


def test_the_design_plugin_example_registers_prunes_and_trains(example):
    entry = STAGES.get("acme_shrink")
    assert entry.obj is example.Shrink and entry.params is example.ShrinkParams
    with pytest.raises(UserError, match="ratio"):
        params(example.ShrinkParams, ratio=1.5)
    data, model = digits(), digits_cnn()
    ctx = context(data, teacher=digits_cnn(), evaluate="top1")
    before = ctx.evaluate(model)["top1"]
    stage = example.Shrink()
    stage.params = params(example.ShrinkParams, ratio=0.5, epochs=1, lr=3e-4)
    out = stage.apply(model, ctx)
    linear = [m.weight for m in out.modules() if isinstance(m, torch.nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in linear) / sum(w.numel() for w in linear)
    assert zeros >= 0.5 and ctx.notes["zeroed_weights"] > 0  # pruned zeros stay zero through fit
    assert len(ctx.notes["epoch_loss"]) == 1 and np.isfinite(ctx.notes["epoch_loss"][0])
    assert ctx.evaluate(out)["top1"] >= before - 0.05, (before, ctx.evaluate(out))
