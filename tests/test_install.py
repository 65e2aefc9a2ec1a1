"""A non-editable install works from an empty folder (recipes shipped as package data)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_non_editable_install_from_empty_folder(tmp_path):
    wheels, site, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True, cwd=tmp_path)
    wheel = next(wheels.glob("compressor-*.whl"))
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=empty, env=env, capture_output=True, text=True)

    where = run("-c", "import compressor, compressor.recipes as r; print(compressor.__file__); print(list(r.__path__)[0])")
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout
    assert (site / "compressor" / "recipes" / "default.yaml").is_file()
    assert (site / "compressor" / "models" / "digits_cnn.safetensors").is_file()
    proc = run("-m", "compressor", "validate")
    assert proc.returncode == 0, proc.stderr
    proc = run("-m", "compressor", "ls", "recipes")
    assert "default" in proc.stdout
    assert list(empty.iterdir()) == []  # validate and ls wrote nothing
