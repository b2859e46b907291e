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
LIGHT_MODULES = ("atomic", "errors", "paths", "library_noise")
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


# --------------------------------------------------------------------------- one-way imports
# The model-family layers of DESIGN.md, lowest first. A module imports its own layer and
# those below, never one above; a family folder imports no other family's; the modules
# above the registry reach a family only through the contract and the registry.
SHARED, CONTRACT, FAMILY, REGISTRY, USER = range(5)
LAYER_NAMES = ("shared machinery", "the contract", "a family folder", "the registry", "a user of the families")
BASE_MODULES = ("engine.errors", "engine.atomic", "engine.paths")
MODEL_USERS = ("engine.model.loading", "engine.model.single_file", "engine.model.tiny")  # the API over the registry


def layer_of(module: str) -> tuple[int, str | None]:
    """(layer, family folder) of an engine module."""
    if module in BASE_MODULES:
        return SHARED, None
    if module == "engine.model.family":
        return CONTRACT, None
    if module == "engine.model.families":
        return REGISTRY, None
    if module.startswith("engine.model.families."):
        return FAMILY, module.split(".")[3]
    if (module == "engine.model" or module.startswith("engine.model.")) and module not in MODEL_USERS:
        return SHARED, None
    return USER, None


def wrong_imports(importer: str, imported: set[str]) -> list[str]:
    """Each engine import of `importer` that points the wrong way, in words."""
    layer, family = layer_of(importer)
    problems = []
    for name in sorted(imported):
        if not name.startswith("engine."):
            continue
        target, target_family = layer_of(name)
        if target > layer:
            problems.append(f"{importer} ({LAYER_NAMES[layer]}) imports {name} ({LAYER_NAMES[target]})")
        elif target == FAMILY and layer == FAMILY and target_family != family:
            problems.append(f"{importer} imports another family's {name}")
        elif target == FAMILY and layer == USER:
            problems.append(f"{importer} imports the family folder {name}; use the contract and the registry")
    return problems


def _module_name(path: Path) -> str:
    return ".".join(part for part in path.relative_to(ROOT).with_suffix("").parts if part != "__init__")


def test_engine_imports_point_one_way():
    """Every import in engine/, top-level, inside a function or under TYPE_CHECKING."""
    problems = [problem for path in sorted((ROOT / "engine").rglob("*.py"))
                for problem in wrong_imports(_module_name(path), _imported_modules(path))]
    assert problems == []


def test_upward_and_sideways_imports_are_caught():
    assert wrong_imports("engine.model.families.sd.runtime", {"engine.train.step"}) == [
        "engine.model.families.sd.runtime (a family folder) imports engine.train.step (a user of the families)"]
    assert wrong_imports("engine.model.families.sdxl", {"engine.model.families"})  # a family asking the registry
    assert wrong_imports("engine.model.families.sdxl.runtime", {"engine.model.families.sd.runtime"})
    assert wrong_imports("engine.model.objectives.ddpm", {"engine.model.families.sd"})
    assert wrong_imports("engine.model.text_conditioning", {"engine.sampling.sampler"})
    assert wrong_imports("engine.model.family", {"engine.model.families"})  # the contract names no family
    assert wrong_imports("engine.train.step", {"engine.model.families.sdxl.conditioning"})
    assert wrong_imports("engine.train.step", {"engine.model.family", "engine.model.families",
                                               "engine.model.objectives", "torch"}) == []
    assert wrong_imports("engine.model.families.sd.runtime", {"engine.model.families.sd", "engine.model.family",
                                                              "engine.model.ldm_checkpoints"}) == []


def test_reading_a_health_report_imports_no_pillow_and_keeps_pillows_limit():
    """The health screen's first frame reads a report: Pillow (11 ms) and numpy stay out of
    it, and the written-out decompression-bomb limit is Pillow's own."""
    modules = _modules_after("import engine.health.report")
    assert not [name for name in modules if name.split(".")[0] in ("PIL", "numpy")]
    from PIL import Image

    from engine.health.report import MAX_PIXELS

    assert MAX_PIXELS == Image.MAX_IMAGE_PIXELS
