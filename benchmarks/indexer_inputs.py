"""Capture a trained DSA model's indexer inputs (q, k, w of every layer) on one long held-out text, for the kernel
benchmark's `--checkpoint` mode: selections from a trained model's indexer instead of synthetic ones.

    python benchmarks/indexer_inputs.py --root DIR --run-id ID [--length 8192] [--content-type code] [--out DIR]
        [--indexer HI DI [--warmup-steps N]]
    OMP_WAIT_POLICY=PASSIVE python benchmarks/kernels.py --checkpoint OUT/indexer-*.pt --no-training

Loads the run's `dsa` model, rebuilds it with max_seq_len = length (positions are rotary, computed on the fly, so
the weights carry over unchanged), runs one held-out validation window of `length` bytes through it and saves, for
every DSA layer, `indexer-<run>-<content>-<length>-L<layer>.pt` = {"q": [1,T,HI,DI], "k": [1,T,DI],
"w": [1,T,HI]} plus a few facts about where they came from. The model was trained at a shorter length (quick:
256), so at 8192 its indexer runs beyond its training length: the selections are what this trained indexer
really picks there, not what a model trained at 8192 would pick. The script prints how local they are.

`--indexer HI DI` gives the model a fresh indexer of that shape (the kernel benchmark's is HI=4, DI=32; the quick
preset trains DI=64) and trains it with the recipe's warm-up stage on the run's training data (main model frozen,
attention dense, KL to the dense attention, `--warmup-steps`, default the preset's W) before capturing; the
validation KL before and after is printed, so an untrained indexer cannot pass for a trained one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch

from sparselens.data.dataset import stack_tokens, train_batch, validation_samples
from sparselens.evaluation import indexer_kl
from sparselens.models import build_model
from sparselens.runs import run_preset
from sparselens.storage import RunStore
from sparselens.storage.atomic import atomic_torch_save
from sparselens.training.loop import step_losses
from sparselens.training.schedule import cosine_lr, ramp
from sparselens.training.stages import stage_specs


def capture_indexer_inputs(model: torch.nn.Module, tokens: torch.Tensor) -> dict[int, dict[str, torch.Tensor]]:
    """Run `model` on tokens [1, T] and return {layer: {"q", "k", "w", "idx"}} of every DSA layer's indexer."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    for layer, block in enumerate(model.blocks):
        indexer = block.indexer
        if indexer is None:
            continue

        def project(h, state, _orig=indexer.project, _layer=layer):
            q, k, w = _orig(h, state)
            out[_layer] = {"q": q.detach().clone(), "k": k.detach().clone(), "w": w.detach().clone()}
            return q, k, w

        def select(q, k, w, _orig=indexer.select, _layer=layer):
            idx = _orig(q, k, w)
            out[_layer]["idx"] = idx.clone()
            return idx

        indexer.project, indexer.select = project, select
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for block in model.blocks:
            if block.indexer is not None:
                del block.indexer.project, block.indexer.select  # back to the class methods
    if not out:
        raise ValueError("the model has no DSA layer: pass a run's 'dsa' model")
    return out


def warm_up_indexer(model: torch.nn.Module, preset, steps: int) -> tuple[float, float]:
    """The recipe's warm-up stage on `model` (only the indexer trains); returns validation KL before and after."""
    tc = preset.train
    spec = stage_specs(tc)["warmup"]
    for p in model.parameters():
        p.requires_grad_(False)
    params = model.indexer_parameters()
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=tc.indexer_lr, betas=tc.betas, weight_decay=0.0)
    before = indexer_kl(model, preset)
    for local in range(steps):
        factor = cosine_lr(local, 1.0, steps, tc.resume_warmup_steps, tc.min_lr_ratio) * ramp(
            local, tc.resume_warmup_steps
        )
        for g in opt.param_groups:
            g["lr"] = tc.indexer_lr * factor
        batch, _ = train_batch(tc.mix, tc.seq_len, tc.batch_size, tc.seed, spec.first_step + local)
        loss = step_losses(model, spec, batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return before, indexer_kl(model, preset)


def locality(idx: torch.Tensor, window: int) -> float:
    """Share of valid selected keys within `window` positions before their query."""
    T = idx.shape[1]
    pos = torch.arange(T).view(1, T, 1)
    valid = idx >= 0
    near = valid & (pos - idx < window)
    return near.sum().item() / max(1, valid.sum().item())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--content-type", default="code")
    ap.add_argument("--out", default=".", help="folder for the .pt files (default: here)")
    ap.add_argument("--indexer", type=int, nargs=2, metavar=("HI", "DI"), help="train a fresh indexer of this shape")
    ap.add_argument("--warmup-steps", type=int, help="warm-up steps of that indexer (default: the preset's W)")
    args = ap.parse_args()
    if args.length < 1 or (args.warmup_steps is not None and args.warmup_steps < 1):
        ap.error("--length and --warmup-steps must be >= 1")
    store = RunStore(args.root, args.run_id)
    store.require_exists()
    preset = run_preset(store)
    trained = store.load_model("dsa")
    shape = {"indexer_heads": args.indexer[0], "indexer_dim": args.indexer[1]} if args.indexer else {}
    cfg = dataclasses.replace(trained.cfg, max_seq_len=max(args.length, trained.cfg.max_seq_len), **shape)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    state = {n: t for n, t in trained.state_dict().items() if not (shape and ".indexer." in n)}
    missing, unexpected = model.load_state_dict(state, strict=not shape)
    if unexpected or any(".indexer." not in n for n in missing):
        raise RuntimeError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    tag = ""
    if shape:
        tag = f"-HI{cfg.indexer_heads}-DI{cfg.indexer_dim}"
        steps = args.warmup_steps or preset.train.warmup_steps
        before, after = warm_up_indexer(model, preset, steps)
        print(f"fresh indexer HI={cfg.indexer_heads} DI={cfg.indexer_dim}: {steps} warm-up steps, validation KL "
              f"{before:.3f} -> {after:.3f}")  # fmt: skip
    tokens = stack_tokens(validation_samples(args.content_type, args.length, 1))[:, :-1]  # [1, length]
    captured = capture_indexer_inputs(model, tokens)
    train_len = preset.train.seq_len
    os.makedirs(args.out, exist_ok=True)
    print(f"run {args.run_id}: dsa model trained at T={train_len}, k={cfg.topk}; {args.content_type} T={args.length}")
    for layer, x in sorted(captured.items()):
        name = f"indexer-{args.run_id}{tag}-{args.content_type}-{args.length}-L{layer}.pt"
        path = os.path.join(args.out, name)
        facts = {"run_id": args.run_id, "layer": layer, "content_type": args.content_type, "train_seq_len": train_len}
        payload = {n: x[n] for n in ("q", "k", "w")} | facts
        atomic_torch_save(None, path, payload)
        shares = ", ".join(f"within {w}: {locality(x['idx'], w):.2f}" for w in (16, 64, 256))
        print(f"  L{layer}: q {tuple(x['q'].shape)} -> {path}; model's own top-{cfg.topk} {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
