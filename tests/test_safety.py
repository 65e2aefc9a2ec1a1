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


# (override, the key the error names): each would make a run write outside its folder
OUTSIDE = [
    ("hydra.job_logging.handlers.file.filename={tmp}/x.log", "hydra.job_logging.handlers.file.filename"),
    ("hydra.job_logging.handlers.file.filename=../x.log", "hydra.job_logging.handlers.file.filename"),
    ("hydra.job_logging.handlers.file.filename=x.log", "hydra.job_logging.handlers.file.filename"),  # in the cwd
    ("hydra.job_logging.handlers.file.filename=${{hydra:runtime.output_dir}}/../../x.log",
     "hydra.job_logging.handlers.file.filename"),
    ("hydra.job_logging.handlers.file.filename=${{oc.env:HOME}}/x.log", "hydra.job_logging.handlers.file.filename"),
    ("hydra.job.name=../../../x", "hydra.job_logging.handlers.file.filename"),  # the log file is named after it
    ("hydra.output_subdir=../../x", "hydra.output_subdir"),
    ("hydra.output_subdir={tmp}/x", "hydra.output_subdir"),
    ("hydra.job_logging.handlers.console.class=logging.handlers.SocketHandler", "hydra.job_logging.handlers.console.class"),
    ("hydra.job_logging.handlers.file.filename=ext://antigravity.x", "hydra.job_logging.handlers.file.filename"),
]


@pytest.mark.parametrize("override,key", OUTSIDE)
def test_writes_outside_the_run_folder_refused(tmp_path, cli_inproc, override, key):
    proc = cli_inproc("run", override.format(tmp=tmp_path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}: "), proc.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/, no x.log


def test_sweep_and_launcher_folders_stay_in_the_sweep(tmp_path, cli_inproc):
    proc = cli_inproc("run", "-m", "hydra.sweep.subdir=../../elsewhere", "stages.prune.ratio=0.3,0.5")
    assert proc.returncode == 2 and proc.stderr.startswith("error: hydra.sweep.subdir: "), proc.stderr
    proc = cli_inproc("run", "-m", "hydra/launcher=joblib", f"hydra.launcher.temp_folder={tmp_path}/scratch",
                      "stages.prune.ratio=0.3,0.5")
    assert proc.returncode == 2 and proc.stderr.startswith("error: hydra.launcher.temp_folder: "), proc.stderr
    assert list(tmp_path.iterdir()) == []
    # the defaults, and folders inside the run folder, stay valid
    for args in (["hydra/launcher=joblib"], ["hydra.job_logging.handlers.file.filename=${hydra:runtime.output_dir}/x.log"],
                 ["hydra.output_subdir=meta"], ["hydra/launcher=submitit_local"]):
        proc = cli_inproc("validate", "-m", *args)
        assert proc.returncode == 0, (args, proc.stderr)


def test_job_environment_limited_to_harmless_variables(tmp_path, cli_inproc):
    # Hydra exports env_set to the job and its subprocesses (git, a C++ compiler): LD_PRELOAD would run code
    proc = cli_inproc("run", "+hydra.job.env_set.LD_PRELOAD=/tmp/evil.so", "+hydra.job.env_set.OMP_NUM_THREADS=2")
    assert proc.returncode == 2 and proc.stderr.startswith("error: hydra.job.env_set.LD_PRELOAD: "), proc.stderr
    assert "OMP_NUM_THREADS" not in proc.stderr and not (tmp_path / "outputs").exists()
