"""The package layout stays true: every module imports, and no layer imports a layer above it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xray"

#: Layer of each part of `xray`, lowest first. A module may import its own part and any part of a lower
#: layer; parts on one layer (training, records) do not import each other. Entry points import anything.
LAYERS: dict[str, int] = {
    "xray": 0,  # base: xray.config, xray.errors, the package itself
    "xray.imaging": 1,
    "xray.inference": 2,
    "xray.trust": 3,
    "xray.analysis": 4,
    "xray.training": 5,
    "xray.records": 5,
    "xray.web": 6,
}
ENTRY_POINTS = {"xray.__main__", "xray.bench", "xray.bench_request"}


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def part_of(module: str) -> str:
    """`xray.inference.models` -> `xray.inference`; `xray.config` -> `xray`."""
    parts = module.split(".")
    if len(parts) >= 2 and f"xray.{parts[1]}" in LAYERS:
        return f"xray.{parts[1]}"
    return "xray"


def xray_imports(module: str) -> set[str]:
    """Every `xray...` module named by an import statement anywhere in the module (top level or inside functions)."""
    path = ROOT / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "xray"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "xray":
            # `from xray.trust import gate` imports xray.trust.gate: judge the submodule when it is one
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in ALL_MODULES else node.module)
    return found


ALL_MODULES = set(module_names())


def test_layout_has_the_documented_parts():
    assert {part_of(m) for m in ALL_MODULES} == set(LAYERS)
    # every part says what it owns and what it may import
    for part in LAYERS:
        if part != "xray":
            doc = importlib.import_module(part).__doc__
            assert doc and "import" in doc.lower(), f"{part}/__init__.py needs a docstring naming what it may import"


def violations(module: str, targets: set[str]) -> list[str]:
    """Imports of `module` that break the layer rule."""
    if module in ENTRY_POINTS:
        return []
    own, found = part_of(module), []
    for target in sorted(targets):
        other = part_of(target)
        if target in ENTRY_POINTS:
            found.append(f"{module} imports the entry point {target}")
        elif other != own and LAYERS[other] >= LAYERS[own]:
            found.append(f"{module} imports {target}: {other} ({LAYERS[other]}) is not below {own} ({LAYERS[own]})")
    return found


@pytest.mark.parametrize("module", sorted(ALL_MODULES))
def test_module_imports_and_respects_layers(module):
    importlib.import_module(module)  # importing costs nothing: no model, no tables, no gradio
    assert violations(module, xray_imports(module)) == []


def test_layer_rule_reports_upward_and_sideways_imports():
    assert violations("xray.inference.models", {"xray.web.diagnose"})  # up
    assert violations("xray.training.data", {"xray.records.db"})  # sideways, same layer
    assert violations("xray.trust.gate", {"xray.__main__"})  # an entry point
    assert violations("xray.web.diagnose", {"xray.inference.models", "xray.records.crud", "xray.config"}) == []
    assert violations("xray.__main__", {"xray.web.startup"}) == []


def test_xray_never_imports_gradio():
    for module in sorted(ALL_MODULES):
        path = ROOT / Path(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(name.split(".")[0] == "gradio" for name in names), f"{module} imports gradio"
