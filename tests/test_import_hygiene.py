"""tui never pulls in the heavy stack; engine never imports the TUI."""
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate")
ROOT = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> set[str]:
    script = code + "\nimport sys\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(out.stdout.split())


def test_tui_imports_no_heavy_library():
    modules = _modules_after(
        "import tui, tui.app, tui.cli\n"
        "import importlib, pkgutil, tui.screens, tui.widgets\n"
        "for pkg in (tui.screens, tui.widgets):\n"
        "    for info in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(pkg.__name__ + '.' + info.name)\n"
        "from tui.cli import build_parser\n"
        "build_parser()\n"
    )
    loaded = sorted(name for name in modules if name.split(".")[0] in HEAVY)
    assert loaded == []


def test_engine_never_imports_the_tui():
    modules = _modules_after(
        "import importlib, pkgutil, engine, engine.cli\n"
        "for pkg in (engine, engine.cli):\n"
        "    for info in pkgutil.iter_modules(pkg.__path__):\n"
        "        if info.name not in ('train_process', '__main__'):\n"
        "            importlib.import_module(pkg.__name__ + '.' + info.name)\n"
    )
    assert not [name for name in modules if name.split(".")[0] in ("textual", "tui")]


def test_engine_sources_do_not_mention_tui_imports():
    for path in (ROOT / "engine").rglob("*.py"):
        text = path.read_text()
        assert "from tui" not in text and "import tui" not in text and "import textual" not in text, path
