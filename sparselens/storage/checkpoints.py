"""Training checkpoints (`step_000123.pt`, latest N kept) and final models (`{cfg, state_dict}`), saved atomically.

torch is imported inside the functions so that reading tables never pays for it.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import posixpath
import re
from collections.abc import Callable
from typing import Any

from fsspec import AbstractFileSystem

from sparselens.storage.atomic import atomic_torch_save
from sparselens.storage.errors import CorruptCheckpointError

_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint at `step`: zero-padded to six digits so names sort like steps."""
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    return f"step_{step:06d}.pt"


def checkpoint_steps(fs: AbstractFileSystem, directory: str) -> list[int]:
    """Steps of the checkpoints in `directory`, ascending; [] when there are none."""
    if not fs.isdir(directory):
        return []
    steps = []
    for path in fs.ls(directory, detail=False):
        m = _STEP_FILE.match(posixpath.basename(path.rstrip("/")))
        if m:
            steps.append(int(m.group(1)))
    return sorted(steps)


def _prune(fs: AbstractFileSystem, directory: str, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints, and temporaries left by interrupted saves."""
    for step in checkpoint_steps(fs, directory)[:-keep]:
        fs.rm(posixpath.join(directory, checkpoint_name(step)))
    for path in fs.ls(directory, detail=False):
        base = posixpath.basename(path.rstrip("/"))
        if base.startswith(".step_") and ".tmp-" in base:
            fs.rm(path)


def save_checkpoint(fs: AbstractFileSystem, directory: str, step: int, state: dict, keep: int = 2) -> str:
    """Save `state` as `directory/step_<step>.pt` atomically, then keep only the newest `keep`; return the path.

    The new file is complete before any old one is deleted, so a crash never leaves zero valid checkpoints.
    One writer per directory: pruning removes other writers' temporaries.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the checkpoint just written), got {keep}")
    path = posixpath.join(directory, checkpoint_name(step))
    atomic_torch_save(fs, path, state)
    _prune(fs, directory, keep)
    return path


RESTART_STAGE = (
    "Delete that file and rerun the phase: the stage resumes from the checkpoint kept before it, or restarts if "
    "there is none."
)


def load_torch_file(
    fs: AbstractFileSystem, path: str, map_location: Any = "cpu", what: str = "checkpoint", remedy: str = RESTART_STAGE
) -> Any:
    """torch.load a file of ours; a damaged file raises CorruptCheckpointError naming it and `remedy`."""
    import torch

    data = fs.cat_file(path)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as e:
        raise CorruptCheckpointError(
            f"{what} {fs.unstrip_protocol(path)} is corrupt or truncated ({type(e).__name__}: {e}). {remedy}"
        ) from e


def load_latest(fs: AbstractFileSystem, directory: str, map_location: Any = "cpu") -> tuple[int, dict] | None:
    """(step, state) of the newest checkpoint in `directory`, or None when there is none."""
    steps = checkpoint_steps(fs, directory)
    if not steps:
        return None
    path = posixpath.join(directory, checkpoint_name(steps[-1]))
    return steps[-1], load_torch_file(fs, path, map_location)


ModelBuilder = Callable[[dict], Any]  # a saved model's config dict -> a fresh model (its weights are loaded after)
LEGACY_TYPES = {"model_type": "sparselens.models.gpt:GPT", "config_type": "sparselens.config:ModelConfig"}


def _named_class(where: str) -> type:
    """The class at "module:name" (model files written before they named their classes were all this GPT)."""
    module, _, name = where.partition(":")
    return getattr(importlib.import_module(module), name)


def model_payload(model: Any) -> dict:
    """What a model file holds: {"cfg": asdict(model.cfg), "state_dict": CPU tensors, "model_type": the model's
    class, "config_type": its config's class}. The two classes are pickled by reference (module and name), so a
    file rebuilds itself as `model_type(config_type(**cfg))` in any process without storage knowing the models."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        raise TypeError(
            f"save_model needs a model with a dataclass `.cfg` (from build_model); "
            f"{type(model).__name__} has cfg={cfg!r}"
        )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"cfg": dataclasses.asdict(cfg), "state_dict": state, "model_type": type(model), "config_type": type(cfg)}


def build_from_payload(payload: dict, path: str, builder: ModelBuilder | None = None) -> Any:
    """Rebuild a model in eval mode from `model_payload` output: with `builder(cfg)` when given, else from the
    classes the file names."""
    if builder is None and "model_type" not in payload:  # saved before files named their classes: the GPT
        payload = payload | {name: _named_class(where) for name, where in LEGACY_TYPES.items()}
    try:
        model = builder(payload["cfg"]) if builder else payload["model_type"](payload["config_type"](**payload["cfg"]))
    except TypeError as e:
        raise ValueError(
            f"model file {path} was saved with a config this version does not accept ({e}); "
            f"re-run the phase that saved it"
        ) from e
    model.load_state_dict(payload["state_dict"])
    return model.eval()
