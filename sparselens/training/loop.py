"""One training stage: optimiser, schedule, NaN guard, logging, atomic checkpoints and exact resume."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sparselens.config import Preset
from sparselens.data.dataset import train_batch
from sparselens.models.gpt import GPT
from sparselens.training.schedule import stage_lr_factors
from sparselens.training.stages import StageSpec

Progress = Callable[[dict], None]


class TrainingDivergedError(FloatingPointError):
    """The loss or gradient became NaN/inf; the message names the step and stage."""


def _optimizer(model: GPT, spec: StageSpec, preset: Preset) -> torch.optim.AdamW:
    """One AdamW over the trained roles; each param group carries its `role` ("main" or "indexer") and `peak` lr."""
    tc = preset.train
    groups = []
    for role, params, lr, on in (
        ("main", model.main_parameters(), tc.lr, spec.train_main),
        ("indexer", model.indexer_parameters(), tc.indexer_lr, spec.train_indexer),
    ):
        for p in params:
            p.requires_grad_(on)
        if not on or not params:
            continue
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups.append({"params": decay, "weight_decay": tc.weight_decay, "peak": lr, "role": role})
        groups.append({"params": no_decay, "weight_decay": 0.0, "peak": lr, "role": role})
    return torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas)


def _load_optimizer(opt: torch.optim.Optimizer, saved: dict) -> None:
    """Restore a checkpointed optimiser state; the groups keep their roles (built from the model, not the file)."""
    roles = [g["role"] for g in opt.param_groups]
    opt.load_state_dict(saved)
    for group, role in zip(opt.param_groups, roles, strict=True):
        group["role"] = role


def _set_lr(opt: torch.optim.Optimizer, spec: StageSpec, preset: Preset, local: int) -> float:
    """Set every group's lr to its peak times its role's stage factor (schedule.stage_lr_factors); returns group 0's."""
    factors = stage_lr_factors(spec, preset.train, local)
    for g in opt.param_groups:
        g["lr"] = g["peak"] * factors[g["role"]]
    return opt.param_groups[0]["lr"]


def clip_gradients(opt: torch.optim.Optimizer, preset: Preset) -> dict[str, torch.Tensor]:
    """Clip each objective's parameters on their own gradient norm; returns the norms before clipping, by role.

    The main model (LM loss) is clipped to `train.grad_clip`, the indexers (their KL; they read a detached input,
    so the two gradients are disjoint) to `train.indexer_grad_clip`: a large KL never shrinks the LM update.
    """
    limits = {"main": preset.train.grad_clip, "indexer": preset.train.indexer_grad_clip}
    norms = {}
    for role, limit in limits.items():
        params = [p for g in opt.param_groups if g["role"] == role for p in g["params"]]
        if params:
            norms[role] = torch.nn.utils.clip_grad_norm_(params, limit)
    return norms


def step_losses(model: GPT, spec: StageSpec, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Losses of one batch[B, T+1]: `loss` is what is minimised; lm_loss and kl_loss are logged."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    if spec.mode is None:
        logits, kl = model(inputs), None
    else:
        logits, kl = model(inputs, mode=spec.mode, return_kl=True)
    lm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    if not spec.train_main:
        return {"loss": kl, "lm_loss": lm.detach(), "kl_loss": kl}
    loss = lm if kl is None else lm + kl  # separate graphs: the indexer reads a detached input
    return {"loss": loss, "lm_loss": lm, "kl_loss": kl}


def _check_finite(value: torch.Tensor, what: str, spec: StageSpec, global_step: int) -> None:
    if not torch.isfinite(value):
        raise TrainingDivergedError(
            f"{what} became {value.item()} at global step {global_step} (step {global_step - spec.first_step} of "
            f"stage {spec.stage!r}, model {spec.model_name!r}); lower the learning rate or tighten grad_clip / "
            "indexer_grad_clip, then rerun (training resumes from the last good checkpoint)"
        )


def run_stage(
    store, spec: StageSpec, model: GPT, preset: Preset, run_id: str, progress: Progress | None = None
) -> list[dict]:
    """Train `model` in place through `spec`, resuming from the stage's latest checkpoint; returns train_log rows."""
    tc = preset.train
    opt = _optimizer(model, spec, preset)
    start, rows, wall0 = 0, [], 0.0
    found = store.latest_checkpoint(spec.model_name, spec.stage)
    if found is not None:
        start, state = found
        model.load_state_dict(state["model"])
        _load_optimizer(opt, state["optimizer"])
        torch.set_rng_state(state["rng"])
        rows, wall0 = state["log"], state["wall_s"]
    model.train()
    t0 = time.perf_counter() - wall0
    tokens_per_step = tc.batch_size * tc.seq_len
    for local in range(start, spec.steps):
        g = spec.first_step + local
        lr = _set_lr(opt, spec, preset, local)
        batch, _ = train_batch(tc.mix_at(g), tc.seq_len, tc.batch_size, seed=tc.seed, step=g)
        losses = step_losses(model, spec, batch)
        _check_finite(losses["loss"].detach(), "loss", spec, g)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        for role, norm in clip_gradients(opt, preset).items():
            _check_finite(norm, f"gradient norm of the {role} parameters", spec, g)
        opt.step()
        done = local + 1
        if done % tc.log_every == 0 or done == spec.steps:
            row = _log_row(run_id, spec, g, losses, lr, (g + 1) * tokens_per_step, time.perf_counter() - t0)
            rows.append(row)
            if progress is not None:
                progress(row)
        if done % tc.checkpoint_every == 0 or done == spec.steps:
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "rng": torch.get_rng_state(),
                "step": done,
                "data_step": g + 1,
                "log": rows,
                "wall_s": time.perf_counter() - t0,
            }
            store.save_checkpoint(spec.model_name, spec.stage, done, state)
    model.eval()
    return rows


def _log_row(run_id, spec: StageSpec, g: int, losses: dict, lr: float, tokens: int, wall: float) -> dict:
    kl = losses["kl_loss"]
    return {
        "run_id": run_id,
        "model": spec.model_name,
        "stage": spec.stage,
        "step": g,
        "loss": float(losses["loss"].detach()),
        "lm_loss": float(losses["lm_loss"].detach()),
        "kl_loss": None if kl is None else float(kl.detach()),
        "lr": lr,
        "tokens_seen": tokens,
        "wall_s": wall,
    }
