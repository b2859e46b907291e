"""What a run leaves behind and what to do with it: the words at the end of a run.

    lora_file(run, progress)          the newest LoRA file that is still on disk
    how_to_load(lora)                 loading it in diffusers, A1111/Forge and ComfyUI
    ending_lines(run, progress, ...)  the dashboard's and the demo's closing lines

Light module: the TUI and the headless commands say the same thing.
"""
from __future__ import annotations

from pathlib import Path

from engine.config.workspace import Workspace
from engine.run.fold import RunProgress
from engine.run.folder import RunDir

DEMO_STATE = "demo"  # .loradeck/demo.json: the workspace `loradeck demo` made

DEMO_PROBLEMS = "Demo: its images have deliberate problems; {where} finds and fixes them"


def is_demo(workspace: Workspace) -> bool:
    return bool(workspace.load_state(DEMO_STATE).get("demo"))


def shown_path(path: Path, root: Path | None) -> str:
    """`path` relative to `root` (the workspace) when inside it, else as it is."""
    if root is not None:
        try:
            return str(path.relative_to(root))
        except ValueError:
            pass
    return str(path)


def lora_file(run: RunDir, progress: RunProgress) -> Path | None:
    """The newest LoRA file the run wrote that is still on disk (keep-last-N may remove older ones)."""
    for relative in (progress.last_lora, *(str(p.relative_to(run.path)) for p in
                                           sorted(run.checkpoints.glob("*.safetensors"), key=_mtime, reverse=True))):
        if relative and (run.path / relative).is_file():
            return run.path / relative
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def how_to_load(lora: Path, shown: str) -> str:
    """One line: the LoRA in diffusers, A1111/Forge and ComfyUI (all read the Kohya layout)."""
    return (f'diffusers pipe.load_lora_weights("{Path(shown).parent}", weight_name="{lora.name}"); '
            f"A1111/Forge: models/Lora/, <lora:{lora.stem}:0.8>; ComfyUI: models/loras/, LoraLoader")


def ending_lines(run: RunDir, progress: RunProgress, *, root: Path | None = None, demo: bool = False,
                 in_app: bool = True) -> list[str]:
    """Where the LoRA is, how to load it, what to try next (for a finished or stopped run)."""
    lora = lora_file(run, progress)
    if lora is None:
        return ["no LoRA file was saved" + (f" (see {shown_path(run.log, root)})" if run.log.exists() else "")]
    shown = shown_path(lora, root)
    lines = [f"LoRA: {shown}", f"Load: {how_to_load(lora, shown)}"]
    best = (progress.best_validation_so_far or {}).get("path")
    if best and (run.path / best).is_file():
        lines.insert(1, f"Best by validation loss: {shown_path(run.path / best, root)}")
    grid = ("esc, then g on the runs list," if in_app else f"loradeck grid {shown_path(run.path, root)}")
    lines.append(f"Next: {grid} shows every sample prompt × every checkpoint: pick the epoch")
    if demo:
        lines.append(DEMO_PROBLEMS.format(where="1 (Health)" if in_app else f"loradeck {root or '.'}, then 1 (Health),"))
    return lines
