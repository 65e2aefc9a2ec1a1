"""What a file or folder named in a recipe holds, told from its first bytes, so that a checkpoint
in another format, an empty or cut-short file, or a folder where a file goes is one line at
`validate` rather than the reader's own error once the run reaches it. Every model and data
source checks its paths here; nothing is loaded."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

# format -> how a message names it
FORMATS = {
    "safetensors": "a safetensors file",
    "pytorch": "a PyTorch pickle (torch.save)",
    "gguf": "a GGUF file",
    "onnx": "an ONNX model",
    "zip": "a .npz (zip) archive",
    "parquet": "a Parquet file",
    "text": "a text file",
    "binary": "binary data",
}
MAX_HEADER = 100_000_000  # safetensors' own limit on its JSON header
CONVERT = "; convert it: safetensors.torch.save_file(torch.load(PATH), 'model.safetensors')"


def sniff(path: str | Path) -> str:
    """The format of a non-empty file (a FORMATS key), or 'truncated' for a safetensors file
    whose header lists more data than the file holds."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"GGUF"):
        return "gguf"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format holds data.pkl; numpy.savez arrays
        try:
            names = zipfile.ZipFile(path).namelist()
        except (zipfile.BadZipFile, OSError):
            return "binary"
        return "pytorch" if any(n.endswith("data.pkl") for n in names) else "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # pickle protocol 2-5
        return "pytorch"
    header_len = int.from_bytes(head[:8], "little")
    if head[8:9] == b"{" and header_len < MAX_HEADER:  # safetensors: header length, then a JSON header
        size = path.stat().st_size
        needed = 8 + header_len if 8 + header_len > size else _safetensors_size(path, header_len)  # header cut too
        if needed is not None:
            return "safetensors" if size >= needed else "truncated"
    if head[:1] == b"\x08":  # protobuf field 1 (ir_version), which ONNX writers put first
        return "onnx"
    return "text" if _is_text(head) else "binary"


def _safetensors_size(path: Path, header_len: int) -> int | None:
    """The size a safetensors file must have by its header; None if the header does not parse."""
    try:
        with open(path, "rb") as f:
            f.seek(8)
            header = json.loads(f.read(header_len))
        return 8 + header_len + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                                    default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:  # a character cut by the 4096-byte read is still text
        return len(head) == 4096 and e.start >= len(head) - 3
    return True


def file_problem(path: str | Path, accepted: tuple[str, ...]) -> str | None:
    """One line saying why `path` is not a file of one of the `accepted` formats (FORMATS keys),
    or None. 'onnx' also accepts unknown binary data: ONNX's reader has the last word."""
    p = Path(path)
    want = " or ".join(FORMATS[a] for a in accepted)
    if not p.exists():
        return f"file not found: {path}"
    if p.is_dir():
        return f"{path} is a folder, not a file ({want} expected)"
    try:
        if p.stat().st_size == 0:
            return f"{path} is empty (0 bytes; {want} expected): write or download it again"
        found = sniff(p)
    except OSError as e:
        return f"cannot read {path}: {e.strerror or type(e).__name__}"
    if found in accepted or (found == "binary" and "onnx" in accepted):
        return None
    if found == "truncated":
        return f"{path} is cut short: its safetensors header lists more data than the file holds; " \
               f"write or download it again"
    hint = CONVERT if found == "pytorch" and accepted == ("safetensors",) else ""
    return f"{path} is {FORMATS[found]}, not {want}{hint}"


def folder_problem(path: str | Path) -> str | None:
    """One line saying why `path` is not a folder with something in it, or None."""
    p = Path(path)
    if not p.exists():
        return f"folder not found: {path}"
    if not p.is_dir():
        return f"{path} is a file, not a folder"
    if not any(p.iterdir()):
        return f"{path} is an empty folder"
    return None
