"""Registry: explicit built-ins, entry-point plugins, duplicate and unknown names."""
import textwrap

import pytest

from compressor.errors import UserError
from compressor.registry import STAGES, Registry
from conftest import cli


def test_builtins_registered_with_params():
    assert {"prune_magnitude", "finetune", "quantize_int8"} <= set(STAGES.names())
    assert STAGES.get("finetune").provider == "compressor"


def test_duplicate_name_names_both_providers():
    reg = Registry("stage", "compressor.test_nothing")
    reg.add("x", object, provider="pkg_a")
    with pytest.raises(UserError) as e:
        reg.add("x", object, provider="pkg_b")
    assert "pkg_a" in str(e.value) and "pkg_b" in str(e.value)


def test_unknown_name_lists_close_matches_and_all():
    with pytest.raises(UserError) as e:
        STAGES.get("quantize_int9")
    msg = str(e.value)
    assert "did you mean 'quantize_int8'" in msg and "prune_magnitude" in msg and "finetune" in msg


def test_params_must_be_dataclass():
    reg = Registry("stage", "compressor.test_nothing")
    with pytest.raises(TypeError):
        reg.add("y", object, params=dict)


def _write_plugin(root):
    """A real installed-looking distribution: a module plus dist-info with entry points."""
    pkg = root / "acme_prune"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from compressor import stage

        @dataclass
        class HalveParams:
            factor: float = 0.5

        @stage("acme_halve", params=HalveParams)
        class Halve:
            """Scales every weight (a toy third-party stage)."""
            def apply(self, model, ctx):
                import torch
                with torch.no_grad():
                    for p in model.parameters():
                        p.mul_(self.params.factor)
                return model
    '''))
    (pkg / "recipes").mkdir()
    (pkg / "recipes" / "__init__.py").write_text("")
    (pkg / "recipes" / "acme_recipe.yaml").write_text(
        "defaults:\n  - base\n  - model: digits_cnn\n  - data: digits\n  - /stage@stages.halve: acme_halve\n"
        "  - target: onnxruntime\n  - _self_\npipeline: [halve]\n")
    info = root / "acme_prune-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-prune\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[compressor.stages]\nacme = acme_prune\n\n[compressor.recipes]\nacme = acme_prune.recipes\n")
    (info / "top_level.txt").write_text("acme_prune\n")


def test_entry_point_plugin_found_without_edit(tmp_path):
    _write_plugin(tmp_path)
    env = {"PYTHONPATH": str(tmp_path)}
    proc = cli("ls", "stages", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines() if "acme_halve" in l)
    assert "acme-prune" in line or "acme_prune" in line
    proc = cli("ls", "recipes", cwd=tmp_path, env=env)
    assert "acme_recipe" in proc.stdout
    proc = cli("validate", "acme_recipe", "stages.halve.factor=0.25", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "1. halve (acme_halve)" in proc.stdout
