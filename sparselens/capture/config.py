"""What the capture phase records: lengths, samples, chunk sizes; defaults per preset until the presets carry them.

TODO(lead): move `CaptureConfig` into `sparselens.config.Preset` as `capture`; `capture_config` already prefers a
`capture` entry of the run's manifest config over the defaults below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sparselens.config import ConfigError
from sparselens.data.dataset import CONTENT_TYPES


@dataclass(frozen=True)
class CaptureConfig:
    """Hooked forward passes of the run's models over held-out samples, reduced to per-query rows."""

    seq_lens: tuple[int, ...] = (128, 256, 512, 1024)  # tokens; k is absolute, so long lengths show its limits
    n_samples: int = 4  # validation samples per content type and length
    topk_samples: int = 1  # of those, how many (the first) also keep their top-m keys in attention_topk
    top_m: int = 32  # keys kept per query and head in attention_topk (maps are redrawn from them); DSA: >= k
    chunk_elements: int = 2**22  # B*H*T*T budget of one forward chunk (~8 such fp32 maps live; 16 MiB each here)
    models: tuple[str, ...] = ("dense", "dsa")  # run-store model names; "dsa" ones (with indexers) get DSA rows
    content_types: tuple[str, ...] = CONTENT_TYPES
    sink_keys: int = 4  # sink mass = mass on keys 0..sink_keys-1 (StreamingLLM keeps 4)
    local_keys: int = 16  # local mass = mass on the last local_keys keys up to and including the query
    device: str = "cpu"  # where the hooked passes and statistics run ("cuda" for the full preset on a GPU)

    def __post_init__(self) -> None:
        if not self.seq_lens or any(t <= 0 for t in self.seq_lens):
            raise ConfigError(f"seq_lens={self.seq_lens} must be a non-empty tuple of positive lengths")
        for name in ("n_samples", "top_m", "chunk_elements", "sink_keys", "local_keys"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
        if not 0 <= self.topk_samples <= self.n_samples:
            raise ConfigError(f"topk_samples={self.topk_samples} must be between 0 and n_samples={self.n_samples}")
        unknown = sorted(set(self.content_types) - set(CONTENT_TYPES))
        if unknown or not self.content_types:
            raise ConfigError(f"content_types has unknown names {unknown}; choose from {CONTENT_TYPES}")
        if not self.models:
            raise ConfigError("models must name at least one saved model, e.g. ('dense', 'dsa')")

    def replace(self, **changes: Any) -> CaptureConfig:
        """A copy with `changes` applied; None values are ignored (unset flow parameters)."""
        changes = {k: (tuple(v) if isinstance(v, list) else v) for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CAPTURE_PRESETS: dict[str, CaptureConfig] = {
    "tiny": CaptureConfig(seq_lens=(32, 64, 128), n_samples=2, topk_samples=1, top_m=16, chunk_elements=2**18),
    "quick": CaptureConfig(),
    # T = 8192 would need query-tiled capture (8 heads x 8192^2 fp32 = 2 GiB per map); 4096 fits one GPU.
    "full": CaptureConfig(
        seq_lens=(1024, 2048, 4096), n_samples=16, topk_samples=2, chunk_elements=2**28, device="cuda"
    ),
}


def capture_config_from_dict(data: dict) -> CaptureConfig:
    """Rebuild a CaptureConfig from `to_dict()` output (lists become tuples)."""
    return CaptureConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def capture_config(preset_config: dict, **overrides: Any) -> CaptureConfig:
    """The capture config of a run: its manifest's `capture` entry if present, else the preset's defaults.

    preset_config: the run's resolved preset (`store.read_manifest()["config"]`); overrides: flow parameters.
    """
    if "capture" in preset_config:
        base = capture_config_from_dict(preset_config["capture"])
    else:
        name = preset_config.get("name", "quick")
        base = CAPTURE_PRESETS.get(name, CAPTURE_PRESETS["quick"])
    return base.replace(**overrides)
