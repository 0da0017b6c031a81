"""What Phase 1 draws: which samples, how long a full map may be, thresholds; defaults per preset.

TODO(lead): move `InterpretConfig` into `sparselens.config.Preset` as `interpret`; `interpret_config` already
prefers an `interpret` entry of the run's manifest config over the defaults below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sparselens.config import ConfigError


@dataclass(frozen=True)
class InterpretConfig:
    """Phase 1 views and summaries; everything is read from the capture tables."""

    view_content_types: tuple[str, ...] = ("code", "assoc_recall")  # samples drawn as maps and token views
    view_sample: int = 0  # which captured sample of each content type (must be < capture topk_samples)
    full_map_max_len: int = 512  # longest length drawn as a full T x T map; longer ones are block-pooled
    pooled_blocks: int = 64  # a pooled map has at most this many blocks per side
    recall_threshold: float = 0.9  # "recall falls below this" defines the usable length per layer
    text_width: int = 64  # characters per line in the token-selection view
    hist_bins: int = 40  # bins of the entropy / weight / score histograms
    position_bins: int = 32  # query-position bins of the indexer-mass threshold curves
    panel_px: int = 150  # side of one heatmap panel, pixels
    png_scale: float = 1.25  # PNG pixel density relative to the chart's layout size (maps get sharper, files larger)

    def __post_init__(self) -> None:
        if not 0 < self.recall_threshold < 1:
            raise ConfigError(f"recall_threshold={self.recall_threshold} must lie strictly between 0 and 1")
        for name in ("full_map_max_len", "pooled_blocks", "text_width", "hist_bins", "position_bins", "panel_px"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")

    def replace(self, **changes: Any) -> InterpretConfig:
        """A copy with `changes` applied; None values are ignored (unset flow parameters)."""
        changes = {k: (tuple(v) if isinstance(v, list) else v) for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


INTERPRET_PRESETS: dict[str, InterpretConfig] = {
    "tiny": InterpretConfig(full_map_max_len=64, pooled_blocks=16, view_content_types=("assoc_recall",)),
    "quick": InterpretConfig(),
    "full": InterpretConfig(full_map_max_len=512, pooled_blocks=128, panel_px=200),
}


def interpret_config(preset_config: dict, **overrides: Any) -> InterpretConfig:
    """The Phase 1 config of a run: its manifest's `interpret` entry if present, else the preset's defaults."""
    if "interpret" in preset_config:
        data = preset_config["interpret"]
        base = InterpretConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    else:
        base = INTERPRET_PRESETS.get(preset_config.get("name", "quick"), INTERPRET_PRESETS["quick"])
    return base.replace(**overrides)
