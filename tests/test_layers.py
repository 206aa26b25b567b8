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


# ---------------------------------------------------------------------------------------------- ui, app.py

UI = ROOT / "ui"
#: Rank of each `ui` module, lowest first: a module imports only `ui` modules of a lower rank (never one of its own
#: rank, so the tabs stay apart), any part of `xray` but its entry points, and gradio. `app.py` sits on top.
UI_RANKS: dict[str, int] = {
    "ui": 0,
    "ui.common": 0,
    "ui.demo": 1,
    "ui.models": 1,
    "ui.diagnose": 1,
    "ui.history": 1,
    "ui.batch": 1,
    "ui.compare": 1,
    "ui.about": 1,
    "ui.public": 2,
    "ui.doctors": 2,
    "ui.server": 3,
}
#: No module of the app grows past this many lines: a file that does is split by surface or use.
MAX_LINES = 800


def ui_module_names() -> list[str]:
    return sorted("ui" if p.stem == "__init__" else f"ui.{p.stem}" for p in UI.glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement in the file (`from ui import common` names `ui.common`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            named = {f"{node.module}.{alias.name}" for alias in node.names}
            found |= named & set(UI_RANKS)
    return found


def ui_violations(module: str, targets: set[str]) -> list[str]:
    """Imports of the `ui` module `module` that break its rule."""
    found = []
    for target in sorted(targets):
        top = target.split(".")[0]
        if target in UI_RANKS and target != "ui" and UI_RANKS[target] >= UI_RANKS[module]:
            found.append(f"{module} imports {target}: rank {UI_RANKS[target]} is not below {UI_RANKS[module]}")
        elif top == "ui" and target not in UI_RANKS:
            found.append(f"{module} imports {target}, which has no rank in UI_RANKS")
        elif target in ENTRY_POINTS or top == "app":
            found.append(f"{module} imports the entry point {target}")
    return found


def test_ui_modules_all_have_a_rank_and_the_package_says_what_it_may_import():
    assert ui_module_names() == sorted(UI_RANKS)
    doc = importlib.import_module("ui").__doc__
    assert doc and "import" in doc.lower()
    for module in UI_RANKS:  # the package docstring lists every module
        assert module == "ui" or f"    {module.split('.')[1]} " in doc, f"ui/__init__.py does not describe {module}"


@pytest.mark.parametrize("module", sorted(UI_RANKS))
def test_ui_module_imports_and_imports_only_downward(module):
    importlib.import_module(module)  # importing costs nothing here either: no model, no tables, no server
    path = UI / ("__init__.py" if module == "ui" else f"{module.split('.')[1]}.py")
    assert ui_violations(module, imported_modules(path)) == []


def test_ui_rule_reports_sideways_upward_and_entry_point_imports():
    assert ui_violations("ui.history", {"ui.diagnose"})  # sideways: one tab importing another
    assert ui_violations("ui.common", {"ui.server"})  # up
    assert ui_violations("ui.doctors", {"ui.public"})  # same rank
    assert ui_violations("ui.server", {"app"})  # the entry point
    assert ui_violations("ui.diagnose", {"xray.__main__"})
    assert ui_violations("ui.diagnose", {"ui.tabs"})  # a module without a rank
    assert ui_violations("ui.server", {"ui.doctors", "ui.public", "ui.common", "ui", "xray.web.demo", "gradio"}) == []


def test_xray_never_imports_the_ui_or_the_app():
    for module in sorted(ALL_MODULES):
        path = ROOT / Path(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        tops = {name.split(".")[0] for name in imported_modules(path)}
        assert not tops & {"ui", "app"}, f"{module} imports {tops & {'ui', 'app'}}"


def test_app_py_is_only_the_entry_point():
    """`app.py` imports the `ui` assemblies and exposes the names a Space, tests and scripts use."""
    import app

    for name in ("build_demo", "build_public", "create_app", "main"):
        assert callable(getattr(app, name)), name
    assert app.create_app.__module__ == "ui.server" and app.build_demo.__module__ == "ui.doctors"
    assert "gradio" not in {name.split(".")[0] for name in imported_modules(ROOT / "app.py")}


@pytest.mark.parametrize("path", ["app.py", "ui", "xray"])
def test_no_module_is_longer_than_the_limit(path):
    files = [ROOT / path] if path.endswith(".py") else sorted((ROOT / path).rglob("*.py"))
    lines = {str(f.relative_to(ROOT)): len(f.read_text(encoding="utf-8").splitlines()) for f in files}
    long = {name: n for name, n in lines.items() if n > MAX_LINES}
    assert long == {}, f"split these by surface or use: {long}"
