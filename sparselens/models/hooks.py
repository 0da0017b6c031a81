"""TransformerLens-style hook points and `capture`.

Intermediate tensors pass through identity `HookPoint` modules whose names come from module paths
(`blocks.3.attn.hook_pattern`). Expensive hook tensors (a sparse layer's full [B, H, Q, K] pattern, the dense
pattern a DSA layer would have had) are only computed when a hook is attached, so an unhooked forward pass stays
sparse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

NamesFilter = str | Iterable[str] | Callable[[str], bool] | None


class HookPoint(nn.Module):
    """Identity module; forward hooks attached to it see the tensor under the module's path name."""

    def __init__(self, shape: str = "") -> None:
        super().__init__()
        self.shape = shape  # documentation of the tensor's shape, e.g. "[B, H, Q, K]"

    @property
    def active(self) -> bool:
        """True when someone listens: compute the tensor only then."""
        return bool(self._forward_hooks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def hook_names(model: nn.Module) -> list[str]:
    """All hook point names of `model`, in module order."""
    return [name for name, mod in model.named_modules() if isinstance(mod, HookPoint)]


def _name_predicate(names_filter: NamesFilter, available: list[str]) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda _: True
    if callable(names_filter):
        return names_filter
    wanted = {names_filter} if isinstance(names_filter, str) else set(names_filter)
    unknown = sorted(wanted - set(available))
    if unknown:
        raise KeyError(f"unknown hook names {unknown}; the model has e.g. {available[:8]} (see hook_names(model))")
    return lambda name: name in wanted


@torch.no_grad()
def capture(model: nn.Module, tokens: torch.Tensor, names_filter: NamesFilter = None) -> dict[str, torch.Tensor]:
    """Run `model(tokens[B, T])` and return {hook name: detached tensor} for the hooks `names_filter` selects.

    names_filter: None (all hooks), a name, a list of names, or a predicate on the name.
    """
    available = hook_names(model)
    keep = _name_predicate(names_filter, available)
    cache: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, HookPoint) and keep(name):
            handles.append(mod.register_forward_hook(_saver(cache, name)))
    try:
        model(tokens)
    finally:
        for h in handles:
            h.remove()
    return cache


def _saver(cache: dict[str, torch.Tensor], name: str):
    def hook(_module, _inputs, output):
        cache[name] = output.detach()

    return hook
