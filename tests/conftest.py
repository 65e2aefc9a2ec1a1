import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# `make test` runs two xdist workers on the machine's cores: one math thread each (the CLI runs they
# start inherit it), or the four threads of two torch/OpenMP pools fight over two cores
if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = os.environ.get(var) or "1"


ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=None, env=None, timeout=600):
    """Run `python -m compressor ARGS` as a user would; returns CompletedProcess."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "compressor", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli_inproc(tmp_path, monkeypatch, capsys):
    """The same CLI entry point, in this process (no interpreter start-up per call): for the
    many checks that stop at validation. Returns a function like `cli` giving (code, out, err)."""
    from compressor.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")

    def call(*args):
        code = main(list(args))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return call


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("outputs/**/report.json"))


def load_report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


@pytest.fixture(scope="session")
def default_run_home(tmp_path_factory):
    """The empty HOME the default run sees: it must stay empty."""
    return tmp_path_factory.mktemp("default_run_home")


@pytest.fixture(scope="session")
def default_run(tmp_path_factory, default_run_home):
    """The default recipe run once through the CLI in an empty folder, shared by tests. Its HOME
    (and the XDG folders under it) is empty, and so are the switches the program sets itself."""
    cwd = tmp_path_factory.mktemp("default_run")
    home = default_run_home
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_DATA_HOME": str(home / ".local/share"), "MPLCONFIGDIR": "", "ORT_DISABLE_TELEMETRY": ""}
    proc = cli("run", cwd=cwd, env=env)
    dirs = run_dirs(cwd)
    return proc, (dirs[0] if dirs else None)


# bench/gpu.py, bench/targets.py and bench/quantization.py still import the tiny BERT from here
