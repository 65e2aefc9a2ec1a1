import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=None, env=None, timeout=600):
    """Run `python -m compressor ARGS` as a user would; returns CompletedProcess."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "compressor", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("outputs/**/report.json"))


def load_report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """The default recipe run once through the CLI in an empty folder, shared by tests."""
    cwd = tmp_path_factory.mktemp("default_run")
    proc = cli("run", cwd=cwd)
    dirs = run_dirs(cwd)
    return proc, (dirs[0] if dirs else None)
