"""Loading a model's parts one by one, each failure one line naming the part (the families'
`load_diffusers` use it). Shared machinery: imports no family."""
from __future__ import annotations

from typing import Any, Callable

from engine.errors import LoradeckError, first_line


def load_parts(source: str, local_only: bool, loaders: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run each part's loader; a failure is one line naming the part."""
    parts = {}
    for part, load in loaders.items():
        try:
            parts[part] = load()
        except (OSError, ValueError) as error:
            hint = "" if local_only else " (is the server online and the id right? a local folder or file needs no network)"
            raise LoradeckError(f"model.pretrained_model: cannot load the {part} of {source}: {first_line(error)}{hint}") from None
    return parts


def pretrained(model_class, source: str, subfolder: str, local_only: bool, **kwargs) -> Callable[[], Any]:
    """A loader of one part of a diffusers folder or hub id (for `load_parts`)."""
    return lambda: model_class.from_pretrained(source, subfolder=subfolder, local_files_only=local_only, **kwargs)
