"""Recipes and overrides cannot make the program import or call code."""
import pytest


BYPASSES = [
    "+hydra.callbacks.x._target_=os.system",
    "+hydra.callbacks.x._target_=logging.os.system",
    "hydra.job_logging.handlers.console.class=os.system",
    "+hydra.job_logging.handlers.x.()=builtins.eval",  # refused by Hydra's own override parser
    "+stages.prune._target_=builtins.eval",
    "+model._partial_=true",
    "hydra.launcher._target_=subprocess.call",
]


@pytest.mark.parametrize("override", BYPASSES)
def test_code_paths_refused_before_anything_runs(tmp_path, cli_inproc, override):
    proc = cli_inproc("run", override)
    assert proc.returncode == 2, proc.stderr
    key = override.lstrip("+").split("=")[0]
    assert proc.stderr.startswith("error: ") and key.split(".")[0] in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_recipe_file_with_target_refused(tmp_path, cli_inproc):
    (tmp_path / "evil.yaml").write_text(
        "defaults:\n  - default\n  - _self_\nhydra:\n  callbacks:\n    pwn:\n      _target_: os.system\n"
        "      command: touch pwned\n")
    proc = cli_inproc("run", "./evil.yaml")
    assert proc.returncode == 2 and "hydra.callbacks.pwn._target_" in proc.stderr
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "outputs").exists()
