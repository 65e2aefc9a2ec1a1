"""`import openvino` without its import-time telemetry, shared by the OpenVINO targets (openvino.py,
llm_openvino.py) and the benches."""
from __future__ import annotations

import importlib.util
import sys

MISSING = "OpenVINO is not installed: pip install openvino (or compressor[openvino])"


def import_openvino():
    """`import openvino` without its import-time telemetry (see the module docstring). Raises
    ImportError where OpenVINO is not installed. A process that imported openvino before keeps it
    as it is."""
    if sys.modules.get("openvino") is not None:
        return sys.modules["openvino"]
    hide = "openvino_telemetry" not in sys.modules
    if hide:
        sys.modules["openvino_telemetry"] = None  # `import openvino_telemetry` raises ImportError
    try:
        import openvino
    finally:
        if hide:
            sys.modules.pop("openvino_telemetry", None)
    return openvino


def _available() -> bool:
    # find_spec, not an import: `compressor env`, `ls` and every report ask, and importing takes a while
    return importlib.util.find_spec("openvino") is not None
