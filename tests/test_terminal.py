"""What a run shows on the terminal: a table legible at 80 columns, our own lines only (other
libraries' output goes to compressor.log, counted; `-v` shows it), progress that survives the
capture of file descriptors 1 and 2."""
import logging
import os
import re
import subprocess
import sys

import pytest
from rich.console import Console

from compressor.core import quiet
from compressor.report.writer import print_table
from conftest import cli, load_report, run_dirs

# what our own lines look like: a log line of ours or Hydra's, the table, gates, training, the count
OURS = re.compile(r"^\[[^\]]+\]\[(compressor|HYDRA|hydra)[^\]]*\]|^ *\S+: (ok|failed_gate|error) *$|^ step |^ ?─+ *$|"
                  r"^ \S+ |^gate |^training |^distillation |^\d+ library messages? in ")
# words no line of ours holds (the table names onnxruntime and PyTorch: not listed)
LIBRARIES = ("Warning", "warn(", "transformers", "matplotlib", "_pytree", "Loading weights", "it/s]", "cpuinfo")
HF_FAST = ["stages.finetune.epochs=1", "eval.iters=5", "eval.warmup=1"]


def rendered(report: dict, width: int = 80) -> list[str]:
    console = Console(width=width, record=True, file=open(os.devnull, "w"))
    print_table(report, console)
    return console.export_text().splitlines()


def assert_legible(lines: list[str]) -> None:
    assert lines and all(len(line) <= 80 for line in lines), "\n".join(lines)
    assert not any("…" in line for line in lines), "\n".join(lines)


# ---------------------------------------------------------------- the table at 80 columns


@pytest.mark.slow  # the default recipe for real (5 epochs of fine-tuning), then `compressor report`
def test_default_run_table_fits_80_columns(tmp_path):
    from compressor.api import compress

    report, _ = compress(None, output_dir=tmp_path / "run")
    lines = rendered(report)
    assert_legible(lines)
    table = "\n".join(lines)
    assert "top1" in table and "p50 ms" in table and "onnxruntime int8" in table and "KiB" in table
    value = re.search(r"^gate parity: (\S+) \(limit relative_error <= 0.0625\) passed$", "\n".join(lines), re.M)[1]
    assert float(value) == float(f"{float(value):.4g}") != report["gates"]["parity"]["value"]  # 4 significant digits
    # wider terminals get every column, report.json keeps the full precision
    assert "seconds" in "\n".join(rendered(report, 200)) and isinstance(report["engine"]["latency_ms"]["p50"], float)
    # `compressor report` prints the same table
    proc = cli("report", str(tmp_path / "run"), cwd=tmp_path, env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    assert_legible([line for line in proc.stdout.splitlines() if line.strip()])


def test_table_drops_columns_before_cutting_values():
    """Many metrics and a long engine name: columns go (seconds, MACs, extra metrics, params), no
    value is cut, and every engine and stage keeps its row."""
    row = {"metric": {"top1": 0.98765, "fidelity": 0.99954321, "agreement": 1.0}, "params": 11689512, "macs": 1.82e9,
           "size_bytes": 46800000, "latency_ms": {"p50": 23.123456}}
    report = {"recipe": "bert_dynamic_int8_ort", "status": "ok", "baseline": row,
              "stages": [{"name": "quantize", "kind": "quantize_dynamic", "seconds": 123.456, **row}],
              "engines": [{"target": t, "precision": "int8_dynamic", **row, "params": None, "macs": None}
                          for t in ("onnxruntime", "openvino")] + [{"target": "coreml", "precision": "int8",
                                                                    "size_bytes": 2900000, "not_run": "not run: macOS"}],
              "gates": {"parity": {"limit": "relative_error <= 0.0625", "value": 0.0008594037791663884, "passed": True},
                        "max_drop@openvino": {"limit": 0.01, "value": 0.0012345678, "passed": False},
                        "nan_inf": {"limit": 0, "value": 0, "passed": True}}}
    lines = rendered(report)
    assert_legible(lines)
    text = "\n".join(lines)
    assert "0.9877" in text and "44.6 MiB" in text and "23.1" in text and "not run" in text
    assert "onnxruntime int8_dynamic" in text and "coreml int8" in text
    assert "gate parity: 0.0008594 (limit relative_error <= 0.0625) passed" in text
    assert "gate max_drop@openvino: 0.001235 (limit 0.01) FAILED" in text
    assert "gate nan_inf: 0 (limit 0) passed" in text
    wide = "\n".join(rendered(report, 200))
    assert all(t in wide for t in ("fidelity", "agreement", "MACs", "11.7M", "1.82G", "seconds", "123"))


# ---------------------------------------------------------------- library output


def test_captured_output_goes_to_the_log_file_and_is_counted(tmp_path, monkeypatch):
    """C code writing to descriptors 1 and 2 (os.write stands in for it) and a Python library's
    handler on the real stderr: into the log file under the library's name; the terminal stream
    made before the capture is not captured."""
    monkeypatch.setattr(quiet, "_terminals", {})
    handler = logging.FileHandler(tmp_path / "compressor.log")
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    logging.getLogger().addHandler(handler)
    read, write = os.pipe()
    saved = os.dup(1)
    try:
        os.dup2(write, 1)  # descriptor 1 is a pipe we read: what reaches the "terminal"
        term = quiet.terminal(open(1, "w", closefd=False))
        with quiet.run_output():
            with quiet.Captured("cpuinfo"):
                os.write(2, b"[cpuinfo_utils.cpp:71] Reading file\n")
                os.write(1, b"progress 10%\rprogress 100%\n")
            sys.__stderr__.write("a Python library's handler\n")
            term.write("ours\n")
            term.flush()
        count = quiet.messages()  # after the run: its last lines forwarded
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(write)
        logging.getLogger().removeHandler(handler)
        handler.close()
    shown = os.read(read, 1000).decode()
    os.close(read)
    assert shown == "ours\n"
    log = (tmp_path / "compressor.log").read_text().splitlines()
    assert log == ["[cpuinfo] [cpuinfo_utils.cpp:71] Reading file", "[cpuinfo] progress 100%",
                   "[library] a Python library's handler"]
    assert count == 3


def test_without_a_log_file_library_output_stays_where_it_was_going(monkeypatch):
    """`compressor bench` has no run folder: what a runtime prints while it loads reaches stderr."""
    monkeypatch.setattr(quiet, "_log_handlers", lambda: [])  # (pytest's own log file handler aside)
    read, write = os.pipe()
    saved = os.dup(2)
    try:
        os.dup2(write, 2)
        with quiet.Captured("executorch"):
            os.write(2, b"[cpuinfo_utils.cpp:71] Reading file\n")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(write)
    assert os.read(read, 1000) == b"[cpuinfo_utils.cpp:71] Reading file\n"
    os.close(read)


def hf_run(tmp_path, *args):
    # a fresh font cache (outside the run folder): matplotlib logs that it made one
    env = {**os.environ, "COLUMNS": "80", "MPLCONFIGDIR": str(tmp_path.parent / f"{tmp_path.name}-matplotlib")}
    proc = subprocess.run([sys.executable, "-m", "compressor", "run", "bert_dynamic_int8_ort", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc, run_dirs(tmp_path)[0]


def test_hugging_face_run_prints_no_line_from_another_library(tmp_path):
    proc, run_dir = hf_run(tmp_path, *HF_FAST)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    strangers = [line for line in lines if not OURS.search(line)]
    assert not strangers, "\n".join(strangers)
    assert not [line for line in lines if any(w in line for w in LIBRARIES)], lines
    table = [line for line in lines if not line.startswith("[")]  # table, gates, training, the count
    assert_legible(table[:-1])  # the count line names the log file, however long its path
    log = (run_dir / "compressor.log").read_text()
    assert "Loading weights" in log and "[matplotlib" in log  # transformers' tqdm bar, matplotlib's logger
    count = int(re.search(r"^(\d+) library messages? in (\S+) \(-v shows them\)$", lines[-1], re.M)[1])
    assert count == len(re.findall(r"^\[[^\]]+\]\[(?!compressor[.\]]|hydra|HYDRA)", log, re.M)) > 0
    assert load_report(run_dir)["status"] == "ok"


def test_verbose_shows_library_output_on_the_terminal(tmp_path):
    proc, run_dir = hf_run(tmp_path, "-v", "pipeline=[quantize]", "eval.iters=5", "eval.warmup=1")
    out = proc.stdout + proc.stderr
    assert "Loading weights" in out and "][matplotlib" in out
    assert "-v shows them" not in out and re.search(r"^\d+ library messages? in ", out, re.M)
    assert "Loading weights" in (run_dir / "compressor.log").read_text()  # in the log file too


@pytest.mark.parametrize("verbose", [False, True])
def test_warnings_and_library_loggers_stay_off_the_console(verbose, tmp_path, monkeypatch):
    """The root logger's console handler (Hydra's) shows our records; other libraries' records
    and Python warnings reach only its file handler (compressor.log), unless verbose."""
    import io
    import warnings

    monkeypatch.setattr(quiet, "verbose", verbose)
    console = logging.StreamHandler(io.StringIO())
    file = logging.FileHandler(tmp_path / "compressor.log")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(console)
    root.addHandler(file)
    try:
        with quiet.run_output():
            logging.getLogger("compressor").info("ours")
            logging.getLogger("matplotlib.font_manager").info("generated new fontManager")
            warnings.warn("deprecated thing", FutureWarning)
            count = quiet.messages()
    finally:
        root.removeHandler(console)
        root.removeHandler(file)
        file.close()
        root.setLevel(level)
    shown, logged = console.stream.getvalue(), (tmp_path / "compressor.log").read_text()
    assert "ours" in shown and "ours" in logged
    for text in ("generated new fontManager", "deprecated thing"):
        assert text in logged
        assert (text in shown) == verbose
    assert count == 2
    assert console.filters == [] and isinstance(console.stream, io.StringIO)  # as they were before the run
