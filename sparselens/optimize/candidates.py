"""Candidate models: a plan built on the run's DSA model, its weights carried over, new indexers started sensibly.

`Design` is what a designer proposes: a name (the model name it is saved under), a family, an AttentionPlan, the
layers whose indexers are new (warmed up by KL before fine-tuning) and why. `build_candidate` turns the DSA model
and a design into a model: every main-model weight is copied; an `indexer` layer with the DSA indexer's shape keeps
its trained indexer; one with fewer heads of the same dims keeps the rows of the heads the design names; any other
indexer starts fresh (seeded); `shared` and `static` layers own no indexer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from sparselens.config import AttentionPlan, LayerPlan, ModelConfig
from sparselens.models.gpt import GPT, build_model

FAMILIES = ("reference", "static", "shared", "pruned", "adaptive_k", "combined")


@dataclass(frozen=True)
class Design:
    """A candidate attention design; `keep_heads` maps a pruned layer to the DSA indexer heads it keeps."""

    name: str
    family: str
    plan: AttentionPlan
    rationale: str
    keep_heads: dict[int, tuple[int, ...]] = field(default_factory=dict)
    decisions: tuple[dict, ...] = ()  # per-layer records: designer, layer, decision, evidence

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r} is unknown; use one of {FAMILIES}")

    def new_indexers(self, dsa_cfg: ModelConfig) -> list[int]:
        """Layers whose indexer is not the DSA model's own (warm them up before fine-tuning)."""
        same = dsa_cfg.layer_plan(0)
        return [
            i
            for i, layer in enumerate(self.plan.layers)
            if layer.kind == "indexer"
            and (layer.indexer_heads, layer.indexer_dim) != (same.indexer_heads, same.indexer_dim)
        ]


def plan_config(dsa_cfg: ModelConfig, plan: AttentionPlan) -> ModelConfig:
    """The DSA model's config with attention driven by `plan`."""
    return dataclasses.replace(dsa_cfg, attention="plan", plan=plan)


def _copy_heads(target, source, heads: tuple[int, ...], di: int) -> None:
    """Indexer weights of the kept heads: rows of wq (DI per head) and ww; the shared key projection as is."""
    rows = torch.cat([torch.arange(h * di, (h + 1) * di) for h in heads])
    target.wq.weight.copy_(source.wq.weight[rows])
    target.ww.weight.copy_(source.ww.weight[list(heads)])
    target.wk.load_state_dict(source.wk.state_dict())
    target.k_norm.load_state_dict(source.k_norm.state_dict())


@torch.no_grad()
def build_candidate(dsa: GPT, design: Design, seed: int = 0) -> GPT:
    """A model of `design.plan` carrying the DSA model's weights (module docstring); eval mode."""
    torch.manual_seed(seed)  # fresh indexers start the same way every time
    model = build_model(plan_config(dsa.cfg, design.plan))
    state = {n: p for n, p in dsa.state_dict().items() if ".indexer." not in n}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(".indexer." not in n for n in missing):
        raise RuntimeError(f"{design.name}: DSA weights do not fit the plan ({missing=}, {unexpected=})")
    full = dsa.cfg.layer_plan(0)
    for i, layer in enumerate(design.plan.layers):
        if layer.kind != "indexer":
            continue
        target, source = model.blocks[i].indexer, dsa.blocks[i].indexer
        if (layer.indexer_heads, layer.indexer_dim) == (full.indexer_heads, full.indexer_dim):
            target.load_state_dict(source.state_dict())
        elif i in design.keep_heads and layer.indexer_dim == full.indexer_dim:
            _copy_heads(target, source, design.keep_heads[i], full.indexer_dim)
    return model.eval()


def all_indexer_plan(cfg: ModelConfig) -> AttentionPlan:
    """The plan equal to a DSA config (every layer its own indexer at the run's HI, DI, k)."""
    return AttentionPlan.uniform(cfg.n_layers, LayerPlan.indexer_layer(cfg.indexer_heads, cfg.indexer_dim, cfg.topk))
