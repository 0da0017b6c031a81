"""`AttentionPlan`: what each layer's attention reads, for models built with `ModelConfig(attention="plan")`.

A layer is one of
- `dense`: causal softmax attention over every earlier key (SDPA), no indexer;
- `indexer`: its own lightning indexer (HI heads of DI dims) and a k policy: a fixed k, or top-p: the fewest of the
  indexer's k best keys whose share of the indexer's softmax mass over those k reaches p, clamped to [k_min, k];
- `shared`: no indexer; reuses the selection of an earlier layer `source` (IndexCache / Kascade style);
- `static`: no indexer; `sinks` first keys plus a window of the `window` most recent keys (StreamingLLM style).

Plans are frozen and JSON-serialisable (`to_dict` / `from_dict` / `to_json`), so a model's plan travels inside its
ModelConfig in model files and manifests. Every sparse layer goes through the gathered kernels.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sparselens.config.base import ConfigError

LAYER_KINDS = ("dense", "indexer", "shared", "static")
_FIELDS_OF = {
    "dense": (),
    "indexer": ("indexer_heads", "indexer_dim", "topk", "top_p", "k_min"),
    "shared": ("source",),
    "static": ("sinks", "window"),
}


@dataclass(frozen=True)
class LayerPlan:
    """One layer's attention; build with the factories (`LayerPlan.indexer(4, 64, 32)`), fields unused by a kind
    stay None."""

    kind: str
    indexer_heads: int | None = None  # indexer: HI light ReLU heads
    indexer_dim: int | None = None  # indexer: DI (a multiple of 4: RoPE on half of it, in pairs)
    topk: int | None = None  # indexer: keys per query (the upper clamp k_max when top_p is set)
    top_p: float | None = None  # indexer: adaptive k, share of the indexer's softmax mass over its topk keys kept
    k_min: int | None = None  # indexer with top_p: lower clamp of the per-query k
    source: int | None = None  # shared: the earlier layer whose selection this layer reuses
    sinks: int | None = None  # static: the first keys every query keeps
    window: int | None = None  # static: the most recent keys every query keeps, itself included

    @staticmethod
    def dense() -> LayerPlan:
        return LayerPlan("dense")

    @staticmethod
    def indexer_layer(
        indexer_heads: int, indexer_dim: int, topk: int, top_p: float | None = None, k_min: int | None = None
    ) -> LayerPlan:
        return LayerPlan("indexer", indexer_heads, indexer_dim, topk, top_p, k_min if top_p is not None else None)

    @staticmethod
    def shared(source: int) -> LayerPlan:
        return LayerPlan("shared", source=source)

    @staticmethod
    def static(sinks: int, window: int) -> LayerPlan:
        return LayerPlan("static", sinks=sinks, window=window)

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ConfigError(f"layer kind {self.kind!r} is unknown; use one of {LAYER_KINDS}")
        used = _FIELDS_OF[self.kind]
        stray = [f.name for f in dataclasses.fields(self) if f.name not in ("kind", *used)]
        stray = [name for name in stray if getattr(self, name) is not None]
        if stray:
            raise ConfigError(f"a {self.kind!r} layer takes no {stray}; it uses only {list(used) or 'no settings'}")
        getattr(self, f"_check_{self.kind}")()

    def _check_dense(self) -> None:
        pass

    def _check_indexer(self) -> None:
        for name in ("indexer_heads", "indexer_dim", "topk"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"an indexer layer needs a positive {name}, got {value!r}")
        if self.indexer_dim % 4:
            raise ConfigError(f"indexer_dim={self.indexer_dim} must be a multiple of 4 (RoPE on half of it, in pairs)")
        if self.top_p is None:
            if self.k_min is not None:
                raise ConfigError("k_min clamps an adaptive k: give top_p too, or leave k_min out")
            return
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p} must be a share of the indexer mass in (0, 1]")
        if self.k_min is None or not 1 <= self.k_min <= self.topk:
            raise ConfigError(f"top_p needs k_min in [1, topk={self.topk}], got {self.k_min!r}")

    def _check_shared(self) -> None:
        if not isinstance(self.source, int) or self.source < 0:
            raise ConfigError(f"a shared layer needs the index of an earlier layer as source, got {self.source!r}")

    def _check_static(self) -> None:
        if not isinstance(self.sinks, int) or self.sinks < 0:
            raise ConfigError(f"a static layer needs sinks >= 0, got {self.sinks!r}")
        if not isinstance(self.window, int) or self.window < 1:
            raise ConfigError(f"a static layer needs window >= 1 (the query itself), got {self.window!r}")

    @property
    def sparse(self) -> bool:
        """True when the layer reads a selection of keys (every kind but dense)."""
        return self.kind != "dense"

    @property
    def max_keys(self) -> int | None:
        """Most keys one query reads (None for dense: all of them)."""
        if self.kind == "indexer":
            return self.topk
        if self.kind == "static":
            return self.sinks + self.window
        return None

    def to_dict(self) -> dict[str, Any]:
        """Only the kind and the fields it uses (readable JSON)."""
        return {"kind": self.kind} | {name: getattr(self, name) for name in _FIELDS_OF[self.kind]}

    def label(self) -> str:
        """A short name with the parameters, e.g. `indexer_4x64_k32`, `static_s4_w28`, `shared_from_1`."""
        if self.kind == "indexer":
            k = f"k{self.topk}" if self.top_p is None else f"p{self.top_p:g}_k{self.k_min}-{self.topk}"
            return f"indexer_{self.indexer_heads}x{self.indexer_dim}_{k}"
        if self.kind == "static":
            return f"static_s{self.sinks}_w{self.window}"
        if self.kind == "shared":
            return f"shared_from_{self.source}"
        return "dense"


@dataclass(frozen=True)
class AttentionPlan:
    """One LayerPlan per layer; `source` of a shared layer names an earlier sparse layer."""

    layers: tuple[LayerPlan, ...]

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError("an attention plan needs one entry per layer; it has none")
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, LayerPlan):
                raise ConfigError(f"plan layer {i} is a {type(layer).__name__}; build it with LayerPlan")
            if layer.kind != "shared":
                continue
            if layer.source >= i:
                raise ConfigError(f"layer {i} shares the selection of layer {layer.source}: only earlier layers")
            if not self.layers[layer.source].sparse:
                raise ConfigError(f"layer {i} shares layer {layer.source}'s selection, but that layer is dense")

    @classmethod
    def from_layers(cls, layers: Iterable[LayerPlan | Mapping[str, Any]]) -> AttentionPlan:
        return cls(tuple(entry if isinstance(entry, LayerPlan) else _layer_from_dict(entry) for entry in layers))

    @classmethod
    def uniform(cls, n_layers: int, layer: LayerPlan) -> AttentionPlan:
        return cls((layer,) * n_layers)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | AttentionPlan) -> AttentionPlan:
        """From `to_dict()` output (lists may arrive as tuples from a manifest)."""
        if isinstance(data, AttentionPlan):
            return data
        if not isinstance(data, Mapping) or "layers" not in data:
            raise ConfigError(f"a plan is {{'layers': [...]}}, got {data!r}")
        return cls.from_layers(data["layers"])

    @classmethod
    def from_json(cls, text: str) -> AttentionPlan:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise ConfigError(f'plan is not valid JSON ({err}); write it as {{"layers": [{{"kind": ...}}]}}') from None

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [layer.to_dict() for layer in self.layers]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def label(self) -> str:
        return "|".join(layer.label() for layer in self.layers)

    def __len__(self) -> int:
        return len(self.layers)


def _layer_from_dict(entry: Mapping[str, Any]) -> LayerPlan:
    if not isinstance(entry, Mapping) or "kind" not in entry:
        raise ConfigError(f"a plan layer is {{'kind': ..., ...}}, got {entry!r}")
    names = {f.name for f in dataclasses.fields(LayerPlan)}
    unknown = sorted(set(entry) - names)
    if unknown:
        raise ConfigError(f"plan layer has unknown settings {unknown}; valid: {sorted(names)}")
    return LayerPlan(**entry)
