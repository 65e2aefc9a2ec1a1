"""Malformed recipes and overrides: each problem is one line naming its key, before any work.
Most run the CLI entry point in-process; the Hydra hand-over runs as a real subprocess."""
import pytest

from conftest import cli


def lines(proc):
    return [l for l in proc.stderr.splitlines() if l.strip()]


@pytest.mark.parametrize("override, key", [
    ("stages.prune.amount=2", "stages.prune.amount"),          # unknown key (typo for ratio)
    ("stages.prune.ratio=abc", "stages.prune.ratio"),          # wrong type
    ("stages.prune.ratio=1.5", "stages.prune.ratio"),          # value out of range
    ("stage@stages.prune=prune_magnitud", "stages.prune"),     # unknown stage
    ("target=onnxrt", "target"),                               # unknown target
    ("pipeline=[prune,distill]", "pipeline[1]"),               # stage missing from pipeline
    ("eval.metric=top2", "eval.metric"),                       # unknown metric
    ("model.widht=3", "model.widht"),                          # unknown model key
    ("data.channels=2", "data.channels"),                      # bad value
    ("data.calibration_size=0", "data.calibration_size"),      # quantize_int8 would have nothing to calibrate on
])
def test_one_line_naming_the_key(tmp_path, cli_inproc, override, key):
    proc = cli_inproc("run", override)
    assert proc.returncode == 2, proc.stderr
    out = lines(proc)
    assert len(out) == 1, out
    assert out[0].startswith(f"error: {key}"), out
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "outputs").exists(), "nothing may be written before validation passes"


def test_typo_gets_did_you_mean(tmp_path, cli_inproc):
    proc = cli_inproc("validate", "stages.prune.rato=0.3", "target=onnxruntme")
    out = lines(proc)
    assert proc.returncode == 2
    assert any("stages.prune.rato" in l and "did you mean 'ratio'" in l for l in out), out
    assert any(l.startswith("error: target") and "did you mean 'onnxruntime'" in l for l in out), out


def test_all_problems_reported_at_once(tmp_path, cli_inproc):
    proc = cli_inproc("validate", "stages.prune.amount=2", "stages.finetune.epochs=-1", "eval.max_drop=5",
               "target.precision=fp16")
    keys = [l.split(":")[1].strip() for l in lines(proc)]
    assert proc.returncode == 2
    assert keys == ["stages.prune.amount", "stages.finetune.epochs", "target.precision", "eval.max_drop"], keys


def test_precision_needs_a_quantize_stage(tmp_path, cli_inproc):
    proc = cli_inproc("validate", "pipeline=[prune,finetune]", "target.precision=int8")
    assert proc.returncode == 2 and "target.precision" in proc.stderr


def test_unknown_recipe_and_missing_file(tmp_path, cli_inproc):
    proc = cli_inproc("run", "defualt")
    assert proc.returncode == 2 and "did you mean 'default'" in proc.stderr
    proc = cli_inproc("run", "./nope.yaml")
    assert proc.returncode == 2 and "recipe file not found" in proc.stderr


def test_validate_lists_what_runs_and_what_is_skipped(tmp_path, cli_inproc):
    proc = cli_inproc("validate", "pipeline=[quantize]")
    assert proc.returncode == 0, proc.stderr
    assert "1. quantize (quantize_int8)" in proc.stdout
    assert "skip    prune" in proc.stdout and "skip    finetune" in proc.stdout


def test_add_swap_and_remove_stages(tmp_path, cli_inproc):
    proc = cli_inproc("validate", "+stage@stages.ft2=finetune", "pipeline=[prune,ft2,quantize]", "~stage@stages.finetune")
    assert proc.returncode == 0, proc.stderr
    assert "2. ft2 (finetune)" in proc.stdout and "finetune (not in pipeline)" not in proc.stdout
    # a swap keeps the recipe's values for the slot: ones the new stage does not take are named
    proc = cli_inproc("validate", "stage@stages.prune=finetune")
    assert proc.returncode == 2 and proc.stderr.startswith("error: stages.prune.ratio: not a parameter")


def test_swap_a_stage(tmp_path, cli_inproc):
    (tmp_path / "r.yaml").write_text(
        "defaults:\n  - base\n  - model: digits_cnn\n  - data: digits\n  - /stage@stages.a: prune_magnitude\n"
        "  - target: onnxruntime\n  - _self_\npipeline: [a]\n")
    proc = cli_inproc("validate", "./r.yaml", "stage@stages.a=finetune", "stages.a.epochs=1")
    assert proc.returncode == 0, proc.stderr
    assert "1. a (finetune)" in proc.stdout


def test_user_recipe_file_outside_the_package(tmp_path, cli_inproc):
    (tmp_path / "my").mkdir()
    (tmp_path / "my" / "edge.yaml").write_text(
        "defaults:\n  - base\n  - model: digits_cnn\n  - data: digits\n  - /stage@stages.quantize: quantize_int8\n"
        "  - target: onnxruntime\n  - _self_\npipeline: [quantize]\n")
    proc = cli_inproc("validate", "./my/edge.yaml", "stages.quantize.calibrator=minmax")
    assert proc.returncode == 0, proc.stderr
    assert "recipe 'edge'" in proc.stdout


def test_unknown_command_and_list(tmp_path, cli_inproc):
    proc = cli_inproc("rn")
    assert proc.returncode == 2 and "did you mean 'run'" in proc.stderr
    proc = cli_inproc("ls", "stagse")
    assert proc.returncode == 2 and "did you mean 'stages'" in proc.stderr


def test_hydra_flags_still_work(tmp_path):
    proc = cli("run", "--cfg", "job", "stages.prune.ratio=0.3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ratio: 0.3" in proc.stdout
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("args", [["stages.prune.ratio=0.3", "--cfg", "job"], ["--cfg", "job", "stages.prune.ratio=0.3"]])
def test_hydra_flags_and_overrides_in_any_order(cli_inproc, args):
    r = cli_inproc("run", "default", *args)
    assert r.returncode == 0 and "ratio: 0.3" in r.stdout
