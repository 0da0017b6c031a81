"""Phase 3 as three library steps the optimize flow's tasks call: design, train (one candidate at a time), evaluate.

design: calibrate the DSA model on the training split, run the designers, write `phase3_calibration` and
`phase3_decisions`, and keep the designs in `optimize/designs.json`. train: each design (and the `reference`) is
fine-tuned on the same batches (finetune.py). evaluate: every model side by side (measure.py) into
`phase3_quality`, `phase3_timing`, `phase3_costs` and the one-row-per-model summary `phase3_candidates`.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from sparselens.config import AttentionPlan, Preset
from sparselens.optimize import designers as dz
from sparselens.optimize.calibrate import calibrate, calibration_batches, calibration_loss
from sparselens.optimize.candidates import Design, all_indexer_plan, build_candidate
from sparselens.optimize.finetune import REFERENCE

DESIGNS_PATH = "optimize/designs.json"


def design_to_dict(d: Design) -> dict:
    return {
        "name": d.name,
        "family": d.family,
        "plan": d.plan.to_dict(),
        "rationale": d.rationale,
        "keep_heads": {str(k): list(v) for k, v in d.keep_heads.items()},
        "decisions": list(d.decisions),
    }


def design_from_dict(data: dict) -> Design:
    keep = {int(k): tuple(v) for k, v in data.get("keep_heads", {}).items()}
    plan = AttentionPlan.from_dict(data["plan"])
    return Design(data["name"], data["family"], plan, data["rationale"], keep, tuple(data.get("decisions", ())))


def read_designs(store) -> list[Design]:
    """The designs the last design step wrote (run the optimize phase's design step first)."""
    return [design_from_dict(d) for d in json.loads(store.read_text(DESIGNS_PATH))]


class _Probe:
    """Zero-shot measurements of plans built on the DSA weights, memoised by plan (the greedy search repeats)."""

    def __init__(self, dsa, batches: dict[str, torch.Tensor]) -> None:
        self.dsa, self.batches, self.losses, self.ks = dsa, batches, {}, {}
        self.base = calibration_loss(dsa, batches)  # {content type: DSA loss}

    def _model(self, plan: AttentionPlan):
        return build_candidate(self.dsa, Design("probe", "static", plan, "zero-shot probe"))

    def loss(self, plan: AttentionPlan) -> dict[str, float]:
        """{content type: zero-shot calibration loss / the DSA model's}."""
        key = plan.to_json()
        if key not in self.losses:
            got = calibration_loss(self._model(plan), self.batches)
            self.losses[key] = {ct: got[ct] / self.base[ct] for ct in got}
        return self.losses[key]

    @torch.no_grad()
    def mean_k(self, plan: AttentionPlan) -> dict[int, float]:
        """Mean selected keys per query (t >= k_max) of each adaptive layer on the calibration batches."""
        key = plan.to_json()
        if key not in self.ks:
            model = self._model(plan)
            layers = [i for i, p in enumerate(plan.layers) if p.kind == "indexer" and p.top_p is not None]
            sums = dict.fromkeys(layers, 0.0)
            from sparselens.models import capture

            for tokens in self.batches.values():
                c = capture(model, tokens[:, :-1], [f"blocks.{i}.attn.hook_selection" for i in layers])
                for i in layers:
                    idx = c[f"blocks.{i}.attn.hook_selection"]
                    sums[i] += (idx >= 0).sum(-1)[:, plan.layers[i].topk :].float().mean().item() / len(self.batches)
            self.ks[key] = sums
        return self.ks[key]


def phase2_kinds(store, model: str = "dsa") -> dict[int, str]:
    """Per layer, the Phase 2 head kinds of `model` at the training length ("local x3, sink_local x1"), if present."""
    if not store.table_exists("phase2_head_features"):
        return {}
    heads = store.read_table("phase2_head_features", columns=["model", "seq_len", "layer", "head", "kind"])
    heads = heads[heads["model"] == model]
    if heads.empty:
        return {}
    heads = heads[heads["seq_len"] == heads["seq_len"].min()].drop_duplicates(["layer", "head", "kind"])
    out = {}
    for layer, group in heads.groupby("layer"):
        counts = group["kind"].value_counts()
        out[int(layer)] = ", ".join(f"{k} x{v}" for k, v in counts.items())
    return out


def design(store, preset: Preset) -> list[Design]:
    """Calibrate, run the designers in `optimize.families` (plus the sink + window baseline), keep the designs."""
    opt, dsa = preset.optimize, store.load_model("dsa")
    batches = calibration_batches(preset, opt.calibration_samples)
    cal = calibrate(dsa, batches)
    probe = _Probe(dsa, batches)
    cfg = dsa.cfg
    made = {
        "static": lambda: dz.static_design(cal, cfg, probe.loss, opt),
        "shared": lambda: dz.shared_design(cal, cfg, probe.loss, opt),
        "pruned": lambda: dz.pruned_design(cal, cfg, opt),
        "adaptive_k": lambda: dz.adaptive_design(cfg, probe.mean_k, opt),
        "combined": lambda: dz.combined_design(cal, cfg, probe.loss, opt),
    }
    designs, seen = [], {all_indexer_plan(cfg).to_json()}
    for family in opt.families:
        d = made[family]()
        if d is not None and d.plan.to_json() not in seen:
            designs.append(d)
            seen.add(d.plan.to_json())
    if opt.baseline:
        designs.append(dz.static_baseline(cfg, opt))
    store.write_text(DESIGNS_PATH, json.dumps([design_to_dict(d) for d in designs], indent=1))
    store.write_table("phase3_calibration", cal.tidy().assign(run_id=store.run_id))
    store.write_table("phase3_decisions", decisions_table(store, designs, probe))
    return designs


def decisions_table(store, designs: list[Design], probe: _Probe) -> pd.DataFrame:
    """Per design and layer: what each designer decided and why, the layer's Phase 2 kinds, and the design's
    zero-shot calibration loss relative to DSA's (mean over content types; NaN with fresh indexers)."""
    kinds = phase2_kinds(store)
    rows = []
    for d in designs:
        fresh = d.new_indexers(probe.dsa.cfg)  # fresh indexers mean nothing before their warm-up
        zero_shot = float("nan") if fresh else float(np.mean(list(probe.loss(d.plan).values())))
        for i, layer in enumerate(d.plan.layers):
            why = [r for r in d.decisions if r["layer"] in (i, -1)]
            rows.append(
                {
                    "run_id": store.run_id,
                    "candidate": d.name,
                    "family": d.family,
                    "layer": i,
                    "decision": layer.label(),
                    "evidence": " | ".join(f"{r['designer']}: {r['decision']} ({r['evidence']})" for r in why),
                    "phase2_kinds": kinds.get(i, ""),
                    "zero_shot_loss_ratio": zero_shot,
                }
            )
    return pd.DataFrame(rows)


def model_names(store) -> list[str]:
    """dense, dsa, reference and every design, in that order."""
    return ["dense", "dsa", REFERENCE] + [d.name for d in read_designs(store)]
