"""`compressor ls`, `show` and `env`: what is registered and what this machine offers, fitted to
the terminal's width."""
from __future__ import annotations

import inspect
import json
import re
import shutil
import sys
import textwrap
from pathlib import Path

from rich.console import Console

from compressor.cli.usage import EXIT_OK
from compressor.errors import UserError

GROUPS = {"stages": "stages.<slot>", "targets": "target", "models": "model", "datasets": "data", "metrics": ""}


def _width() -> int:
    """The terminal's columns (COLUMNS when set, 80 when not a terminal): listings never go wider."""
    return shutil.get_terminal_size((80, 24)).columns


def plain_console() -> Console:
    # lines are fitted to the width here; rich only writes them (docs may hold [brackets] or :names:)
    return Console(highlight=False, markup=False, emoji=False, soft_wrap=True)


def _cut(text: str, room: int) -> str:
    """`text` in at most `room` columns: cut at a word, with an ellipsis."""
    if len(text) <= room:
        return text
    if room < 2:
        return ""
    cut = text[:room - 1]
    if cut.rfind(" ") > room // 2:
        cut = cut[:cut.rfind(" ")]
    return cut.rstrip(" ,;:(-") + "…"


def _doc(obj) -> str:
    """A component's docstring, else its module's (model and data builders are documented there)."""
    doc = getattr(obj, "__doc__", None) or getattr(sys.modules.get(getattr(obj, "__module__", "")), "__doc__", None)
    return inspect.cleandoc(doc or "")


def _sentence(text: str) -> str:
    """The first sentence of the first paragraph, on one line."""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    return re.split(r"(?<=[.!?])\s+(?=[A-Z`(])", paragraph)[0]


def _rows(items: list[tuple[str, str, str]], width: int) -> list[str]:
    """One line per (name, text, tail): the name whole in a column, the text cut to fit, the tail
    (what a target needs, a plugin's package) at the right edge."""
    col = min(max((len(name) for name, _, _ in items), default=0), width // 3)
    lines = []
    for name, text, tail in items:
        head = f"  {name.ljust(col)}  "
        tail = _cut(tail, width // 2)
        line = head + _cut(text, width - len(head) - (len(tail) + 2 if tail else 0))
        lines.append((line.ljust(width - len(tail)) + tail if tail else line).rstrip())
    return lines


def _recipe_text(name: str) -> str:
    from importlib import resources

    from compressor.recipe.compose import locate

    ref = locate(name)
    root = resources.files(ref.source[len("pkg://"):]) if ref.source.startswith("pkg://") else Path(ref.source)
    return (root / f"{name}.yaml").read_text()


def _recipe_summary(name: str) -> str:
    """The first sentence of the recipe file's leading comment ('' without one)."""
    lines = []
    for line in _recipe_text(name).splitlines():
        if not line.startswith("#") or not line.lstrip("#").strip():
            break
        lines.append(line.lstrip("#").strip())
    return _sentence(" ".join(lines))


def _listing(kind: str, width: int) -> list[str]:
    from compressor.recipe.compose import recipe_names
    from compressor.registry import ALL

    if kind == "recipes":
        names = recipe_names()
        return [f"recipes ({len(names)})"] + _rows([(n, _recipe_summary(n), "") for n in names], width)
    items = []
    for name in ALL[kind].names():
        e = ALL[kind].get(name)
        tail = _needs_short(_needs(e)) if kind == "targets" else ""
        if e.provider != "compressor" and e.provider not in tail:  # a plugin says where it comes from
            tail = f"{tail}  ({e.provider})".strip()
        items.append((name, _sentence(_doc(e.obj)), tail))
    return [f"{kind} ({len(items)})"] + _rows(items, width)


def cmd_ls(argv: list[str]) -> int:
    from compressor.registry import ALL

    kinds = list(ALL) + ["recipes"]
    if argv and argv[0] not in kinds:
        from compressor.errors import did_you_mean

        raise UserError(f"unknown list '{argv[0]}'{did_you_mean(argv[0], kinds)}; choose from {', '.join(kinds)}", key="ls")
    if len(argv) > 2:
        raise UserError(f"too many arguments: {' '.join(argv)}; usage: compressor ls [KIND [NAME]]", key="ls")
    out, width = plain_console(), _width()
    if len(argv) == 2:
        out.print("\n".join(_details(argv[0], argv[1], width)))
        return EXIT_OK
    lines = []
    for kind in argv or kinds:
        lines += _listing(kind, width) + [""]
    lines.append(_cut("one in full: compressor ls KIND NAME, or compressor show NAME", width))
    out.print("\n".join(lines))
    return EXIT_OK


def cmd_show(argv: list[str]) -> int:
    from compressor.errors import did_you_mean
    from compressor.recipe.compose import recipe_names
    from compressor.registry import ALL

    if len(argv) != 1:
        raise UserError("give one name: compressor show NAME (compressor ls lists every name)", key="show")
    name = argv[0]
    found = [kind for kind in ALL if name in ALL[kind].names()] + (["recipes"] if name in recipe_names() else [])
    if not found:
        every = sorted({n for r in ALL.values() for n in r.names()} | set(recipe_names()))
        raise UserError(f"unknown name '{name}'{did_you_mean(name, every)}; compressor ls lists every name", key="show")
    if len(found) > 1:
        raise UserError(f"'{name}' names more than one thing: "
                        f"{' or '.join(f'compressor ls {kind} {name}' for kind in found)}", key="show")
    plain_console().print("\n".join(_details(found[0], name, _width())))
    return EXIT_OK


def _details(kind: str, name: str, width: int) -> list[str]:
    """Everything about one component: its doc, provider, every parameter, an example recipe."""
    from compressor.core.params import keys
    from compressor.registry import ALL

    if kind == "recipes":
        return [f"recipe {name}", "", *_recipe_text(name).rstrip().splitlines(), "",
                _cut(f"check it: compressor validate {name}; run it: compressor run {name}", width)]
    registry = ALL[kind]
    e = registry.get(name, key="ls")
    lines = [f"{registry.kind} {name}  (from {e.provider})", ""]
    for paragraph in _doc(e.obj).split("\n\n"):  # prose re-wrapped to the width; indented blocks as written
        if paragraph.startswith(" "):
            lines += paragraph.splitlines() + [""]
        else:
            lines += textwrap.wrap(" ".join(paragraph.split()), width, break_on_hyphens=False) + [""]
    if kind == "targets":
        lines += textwrap.wrap(f"on this machine: {_needs(e)}", width, subsequent_indent="  ", break_on_hyphens=False) + [""]
    params = keys(e.params)
    lines.append(f"parameters (recipe keys under {GROUPS[kind]}):" if params else "parameters: none")
    for key, type_name, default, help_text in params:
        lines += textwrap.wrap(f"{key}: {type_name} = {_yaml_value(default)}", width, initial_indent="  ",
                               subsequent_indent="      ", break_long_words=False)
        lines += textwrap.wrap(help_text, width, initial_indent="      ", subsequent_indent="      ",
                               break_long_words=False, break_on_hyphens=False)
    return lines + ["", *_example(kind, name, e, params, width)]


def _yaml_value(value) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()
    return text[:-4].strip() if text.endswith("\n...") else text


def _yaml_key(key: str, value, room: int) -> list[str]:
    """`key: value` as a recipe writes it, in flow style; a long list folded onto indented lines
    (YAML reads a flow collection across lines)."""
    text = f"{key}: {_yaml_value(value)}" + ("  # required" if value == "???" else "")
    if len(text) <= room:
        return [text]
    return textwrap.wrap(text, room, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)


def _example(kind: str, name: str, entry, params, width: int) -> list[str]:
    """A recipe that uses the component: the default recipe with it swapped in (a stage: the only
    one in the pipeline), every parameter at its default."""
    indent = 4 if kind == "stages" else 2
    values = [line for key, _, default, _ in params for line in _yaml_key(key, default, width - indent)]
    lines = ["# example: save as my_recipe.yaml, then: compressor validate ./my_recipe.yaml",
             "defaults:", "  - default     # the default recipe: digits CNN and data, ONNX Runtime"]
    if kind == "stages":
        return lines + [*_target_for(entry), "  - _self_", f"pipeline: [{name}]", "stages:", f"  {name}:",
                        f"    kind: {name}", *(f"    {v}" for v in values)]
    if kind == "metrics":
        return lines + ["  - _self_", "eval:", f"  metric: {name}"]
    group = GROUPS[kind]
    lines += [f"  - override /{group}: {name}", "  - _self_"]
    if kind == "targets" and "int8" not in getattr(entry.obj, "precisions", ("fp32",)):
        lines.append(f"pipeline: [prune, finetune]   # no quantize: {name} does not run int8")
    return lines + ([f"{group}:", *(f"  {v}" for v in values)] if values else [])


def _target_for(stage) -> list[str]:
    """A defaults line swapping the default recipe's ONNX Runtime for a target that runs what the
    stage leaves (bf16: torch_export), when ONNX Runtime does not."""
    from compressor.registry import TARGETS

    leaves = getattr(stage.obj, "precision", "fp32")
    try:
        leaves = leaves(stage.params()) if callable(leaves) else leaves
    except Exception:  # params without defaults: the plan says what it leaves
        return []
    runs = [t for t in TARGETS.names() if leaves in getattr(TARGETS.get(t).obj, "precisions", ("fp32",))]
    if not runs or "onnxruntime" in runs:
        return []
    return [f"  - override /target: {runs[0]}   # ONNX Runtime does not run {leaves}"]


def _needs(entry) -> str:
    """What a target still needs installed here (its extra), or `ready`."""
    from compressor.run.environment import missing

    return "; ".join(missing(entry)) or "ready"


def _needs_short(needs: str) -> str:
    """`needs compressor[litert]` for "LiteRT is not installed: pip install 'compressor[litert]'"."""
    specs = re.findall(r"pip install '?([^'\s]+)'?", needs)
    return needs if needs == "ready" else f"needs {', '.join(dict.fromkeys(specs))}" if specs else f"needs: {needs}"


def cmd_env(argv: list[str]) -> int:
    from compressor.run.environment import PACKAGES as RUNTIMES, facts

    if any(a != "--json" for a in argv):
        raise UserError(f"unknown argument {next(a for a in argv if a != '--json')!r}; usage: compressor env [--json]",
                        key="env")
    f = facts()
    if argv:
        print(json.dumps(f, indent=2))
        return EXIT_OK
    width, cpu, t = _width(), f["cpu"], f["torch"]

    def line(label: str, text: str) -> list[str]:
        return textwrap.wrap(text, width, initial_indent=f"{label:<11}", subsequent_indent=" " * 11,
                             break_long_words=False, break_on_hyphens=False)

    accel = f"CUDA {t['cuda_version']}: {', '.join(t['gpus']) or 'a GPU'}" if t["cuda"] else \
        "Apple MPS" if t["mps"] else "CPU only (no CUDA GPU)"
    reduce = f["decisions"]["reduce_range"]
    extras = f["extras"]
    lines = [*line("cpu", f"{cpu['model']} ({cpu['arch']}, {cpu['cores']} cores, {cpu['usable_cores']} usable)"),
             *line("cpu flags", " ".join(cpu["flags"]) or "none of the INT8-relevant ones"),
             *line("system", f"{f['os']}, Python {f['python']}"),
             *line("torch", f"{t['version']}, {accel}"),
             *line("INT8", f"reduce_range auto -> {str(reduce['value']).lower()}: {reduce['why']}"),
             *line("extras", " ".join(e for e, v in extras.items() if v["installed"]) or "none"),
             *line("missing", "; ".join(f"{e} ({', '.join(v['missing'])})" for e, v in extras.items()
                                        if not v["installed"]) or "no extra"),
             *line("runtimes", ", ".join(f"{k}=={v}" for k, v in f["packages"].items() if k in RUNTIMES)), "",
             "targets"]
    col = max(len(name) for name in f["decisions"]["targets"])
    for name, v in f["decisions"]["targets"].items():  # whole: what a target lacks is the point here
        lines += textwrap.wrap("builds and runs here" if v["runs"] else v["why"], width, initial_indent=f"  {name:<{col}}  ",
                               subsequent_indent=" " * (col + 4), break_long_words=False, break_on_hyphens=False)
    lines.append(_cut("as JSON: compressor env --json (every run's report.json records it: environment)", width))
    plain_console().print("\n".join(lines))
    return EXIT_OK
