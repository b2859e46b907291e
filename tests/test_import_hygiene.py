"""The light/heavy boundary, per package: light packages and the TUI never pull in the heavy
stack; engine never imports the TUI; the TUI uses engine's light packages only."""
import ast
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate")
ROOT = Path(__file__).resolve().parents[1]

# What the TUI may import at any time: no torch or HF stack at module import, ever.
LIGHT_PACKAGES = ("config", "dataset", "health", "run", "plan", "cli")
LIGHT_MODULES = ("atomic", "errors", "library_noise")
# What trains, samples, captions and loads models: may import the heavy stack.
HEAVY_PACKAGES = ("model", "network", "train", "sampling", "captioning")
ENTRY_POINTS = ("engine.train.process",)  # `python -m` targets: importing them is running them


def _modules_after(code: str) -> set[str]:
    script = code + "\nimport sys\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(out.stdout.split())


def _engine_modules(packages) -> list[str]:
    names = []
    for package in packages:
        for path in sorted((ROOT / "engine" / package).rglob("*.py")):
            relative = path.relative_to(ROOT).with_suffix("")
            name = ".".join(part for part in relative.parts if part != "__init__")
            if name not in ENTRY_POINTS:
                names.append(name)
    return names


def _heavy(modules: set[str]) -> list[str]:
    return sorted(name for name in modules if name.split(".")[0] in HEAVY)


def test_every_engine_package_is_classified():
    found = {path.parent.name for path in (ROOT / "engine").glob("*/__init__.py")}
    assert found == set(LIGHT_PACKAGES) | set(HEAVY_PACKAGES)
    top = {path.stem for path in (ROOT / "engine").glob("*.py")} - {"__init__"}
    assert top == set(LIGHT_MODULES)


def test_light_engine_packages_import_no_heavy_library():
    names = _engine_modules(LIGHT_PACKAGES) + [f"engine.{name}" for name in LIGHT_MODULES]
    assert len(names) > 30
    assert _heavy(_modules_after("\n".join(f"import {name}" for name in names))) == []


def test_tui_imports_no_heavy_library():
    modules = _modules_after(
        "import tui, tui.app, tui.cli\n"
        "import importlib, pkgutil, tui.screens, tui.widgets\n"
        "for pkg in (tui.screens, tui.widgets):\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "from tui.cli import build_parser\n"
        "build_parser()\n"
    )
    assert _heavy(modules) == []


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_tui_uses_only_the_light_engine_packages():
    """Every import in tui/, top-level or inside a function. The `loradeck` dispatcher
    (tui/cli.py) names engine.cli's command modules in its table, and runs them; nothing
    else of the TUI reaches into engine.cli or a heavy package."""
    allowed = {f"engine.{name}" for name in LIGHT_PACKAGES + LIGHT_MODULES if name != "cli"}
    for path in (ROOT / "tui").rglob("*.py"):
        for name in _imported_modules(path):
            if name.startswith("engine."):
                assert ".".join(name.split(".")[:2]) in allowed, f"{path.relative_to(ROOT)} imports {name}"


def test_engine_never_imports_the_tui():
    names = _engine_modules(LIGHT_PACKAGES + HEAVY_PACKAGES)
    modules = _modules_after("\n".join(f"import {name}" for name in names))
    assert not [name for name in modules if name.split(".")[0] in ("textual", "tui")]
    for path in (ROOT / "engine").rglob("*.py"):
        assert not {name.split(".")[0] for name in _imported_modules(path)} & {"tui", "textual"}, path
