"""The house's layers: every import inside fawkes_fast points down (or sideways within a layer),
function-level imports included, and every lazily exported name resolves."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import fawkes_fast

ROOT = Path(fawkes_fast.__file__).parent

#: module prefix -> layer; the longest matching prefix decides. The data flows upward through them:
#: io -> faces -> extractors -> pipeline/targets -> optimize -> finalize -> cloaker -> api -> cli.
LAYERS = {
    "fawkes_fast._C": 0, "fawkes_fast.model_files": 0, "fawkes_fast.device": 0, "fawkes_fast.ops_reference": 0,
    "fawkes_fast.models": 0,
    "fawkes_fast.ops": 1, "fawkes_fast.io": 1,
    "fawkes_fast.faces": 2,
    "fawkes_fast.extractors": 3, "fawkes_fast.perceptual": 3,
    "fawkes_fast.batch": 4,
    "fawkes_fast.pipeline": 5, "fawkes_fast.targets": 5,
    "fawkes_fast.optimize": 6,
    "fawkes_fast.finalize": 7, "fawkes_fast.reports": 7,
    "fawkes_fast.cloaker": 8, "fawkes_fast.jobs": 8, "fawkes_fast.evaluate": 8,
    "fawkes_fast": 9, "fawkes_fast.api": 9, "fawkes_fast.distributed": 9,
    # tooling and front ends over the public API: the measuring harness, training, the server
    "fawkes_fast.evaluate.budget": 10, "fawkes_fast.evaluate.protocol": 10, "fawkes_fast.serve": 10,
    "fawkes_fast.training": 10,
    "fawkes_fast.cli": 11,
}


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _module(path: Path) -> str:
    parts = ("fawkes_fast",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, text: str | None = None):
    """(imported module, line) for every fawkes_fast import in the file (or `text` as if it were
    that file), at any depth: function-level imports count too."""
    me = _module(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text() if text is None else text)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("fawkes_fast"):
                target = node.module
            else:
                continue
            names = [a.name for a in node.names]
            for name in names if not node.module else [None]:
                yield (f"{target}.{name}" if name else target), node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("fawkes_fast"):
                    yield a.name, node.lineno


def test_every_top_level_module_is_placed_in_a_layer():
    """A new module or package under fawkes_fast must be placed on purpose, not fall into the root's layer."""
    tops = {".".join(_module(p).split(".")[:2]) for p in ROOT.rglob("*.py")} | {"fawkes_fast._C"}
    assert sorted(t for t in tops if t not in LAYERS) == []


def test_imports_point_down_the_layers():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        me = _module(path)
        for target, line in _imports(path):
            if _layer(target) > _layer(me):
                upward.append(f"{path.relative_to(ROOT)}:{line} ({me}, layer {_layer(me)}) imports {target} "
                              f"(layer {_layer(target)})")
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import():
    """The rule above can fail: the engine importing the CLI inside a function is caught."""
    engine = ROOT / "optimize" / "engine.py"
    text = engine.read_text() + "\n\ndef _late():\n    from ..cli import main\n"
    assert any(_layer(t) > _layer(_module(engine)) for t, _ in _imports(engine, text))
    assert not any(_layer(t) > _layer(_module(engine)) for t, _ in _imports(engine))


def test_every_lazy_public_name_resolves():
    for name in fawkes_fast.__all__:
        assert getattr(fawkes_fast, name) is not None, name
    for name, module in fawkes_fast._LAZY.items():
        assert hasattr(importlib.import_module(module), name), (name, module)
