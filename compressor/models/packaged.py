"""Files shipped inside the package, named in recipes without an absolute path.

`packaged:tiny_bert` is the folder `compressor/models/tiny_bert/` of the installed package
(`packaged:tiny_bert/sentiment.csv` a file in it), wherever the package was installed, so a
packaged recipe runs from any folder. Any other value is a path and is returned unchanged."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

PREFIX = "packaged:"
ROOT = Path(__file__).resolve().parent  # compressor/models/


def resolve(value: Optional[str]) -> Optional[str]:
    """`packaged:NAME[/FILE]` -> the shipped path (whether or not it exists: the caller's
    check says 'not found' naming its key); anything else, None included, unchanged."""
    if not isinstance(value, str) or not value.startswith(PREFIX):
        return value
    rel = value[len(PREFIX):].strip("/")
    path = (ROOT / rel).resolve()
    if not rel or ROOT not in path.parents:  # `packaged:../..` names nothing shipped: left as it is,
        return value  # so the caller's "not found" shows what was written
    return str(path)
