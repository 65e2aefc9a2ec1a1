"""The shape of the code (docs/DESIGN.md section 6), checked on the real import graph: no import
cycle inside compressor/, the layer contract in pyproject.toml kept (import-linter), few modules at
the root, and parameters composed, not inherited."""
import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def cycles(graph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), lazy imports included."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return found


def test_no_import_cycle_inside_compressor():
    assert cycles(grimp.build_graph("compressor")) == []


def test_the_cycle_check_finds_a_planted_cycle():
    graph = grimp.build_graph("compressor")
    graph.add_import(importer="compressor.core.atomic", imported="compressor.run.runner")
    assert any("compressor.core.atomic" in group and "compressor.run.runner" in group for group in cycles(graph))


def test_layer_contracts_hold():
    """import-linter on the contracts in pyproject.toml: layers, acyclic stage families, and the
    TensorRT plugin importing only the public plugin surface."""
    proc = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--config", str(ROOT / "pyproject.toml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]


def test_few_modules_at_the_root():
    root = sorted(p.name for p in (ROOT / "compressor").glob("*.py"))
    assert len(root) <= 9, root  # __init__ and __main__ included


def test_every_package_says_what_lives_there():
    for init in (ROOT / "compressor").rglob("__init__.py"):
        doc = init.read_text().lstrip()
        assert doc.startswith('"""') and len(doc.split('"""')[1].split()) >= 15, init


def test_params_are_composed_not_inherited():
    """No params dataclass derives from another beyond one level; the stages that train compose
    TrainSettings, so each training key (epochs, lr, ...) is declared once, there."""
    from compressor.registry import ALL, STAGES
    from compressor.training.settings import TrainSettings

    train_keys = {f.name for f in dataclasses.fields(TrainSettings)}

    def composed(params) -> list:
        return [f.default_factory() for f in dataclasses.fields(params) if f.metadata.get("flat")]

    for registry in ALL.values():
        for name in registry.names():
            params = registry.get(name).params
            if params is None:
                continue
            bases = [c for c in inspect.getmro(params)[1:] if dataclasses.is_dataclass(c)]
            assert len(bases) <= 1, (name, bases)
            if any(isinstance(s, TrainSettings) for s in composed(params)):
                own = {f.name for f in dataclasses.fields(params) if not f.metadata.get("flat")}
                assert not own & train_keys, (name, own & train_keys)
    for name in ("finetune", "distill", "student", "lowrank", "depthwise"):
        assert any(isinstance(s, TrainSettings) for s in composed(STAGES.get(name).params)), name
