"""Task-learning trials: train the quick dense model for a few hundred steps with one lever changed, and log the
answer accuracy per synthetic task (with Wilson intervals) and held-out loss per content type.

    nice -n 10 python benchmarks/task_trials.py --label base --steps 500 --eval-at 250 500 \
        [--mix '{"induction": 1}'] [--design '{"induction_max_span": 32}'] [--train '{"lr": 2e-3}'] \
        [--model '{"n_heads": 8}'] [--attn-lr-mult 2] [--attn-wd 0] [--curriculum 64:200]

One row per evaluation step is appended to benchmarks/results/task_trials.csv (label, the step, seconds,
accuracies and intervals, losses, the command and the full task design as JSON). The loop is the pre-training
stage's (AdamW, decay on matrices only, warm-up + cosine over `--total` steps, clip 1.0, batches from
`train_batch(seed 0, step)`), written out here so a trial can change what the recipe does not expose (per-group lr,
a length curriculum). Runs with one torch thread.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sparselens.config import get_preset
from sparselens.data.dataset import CONTENT_TYPES, stack_tokens, train_batch, validation_samples
from sparselens.data.synthetic import DESIGN, ORIGINAL_DESIGN, TASKS
from sparselens.models.gpt import build_model
from sparselens.task_accuracy import copy_head_scores, task_accuracy
from sparselens.training.schedule import cosine_lr

OUT = Path(__file__).parent / "results" / "task_trials.csv"


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label", required=True)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--total", type=int, default=None, help="cosine schedule length; default: the preset's total")
    ap.add_argument("--eval-at", type=int, nargs="+", default=None)
    ap.add_argument("--mix", type=json.loads, default=None)
    ap.add_argument("--early-mix", type=json.loads, default=None, help="mix of the first --early-steps steps")
    ap.add_argument("--early-steps", type=int, default=0)
    ap.add_argument("--design", type=json.loads, default={}, help="changes to the --base design")
    ap.add_argument(
        "--base",
        choices=["default", "original"],
        default="default",
        help="design the --design changes apply to: synthetic.DESIGN, or ORIGINAL_DESIGN (trials T01-T25 ran on it)",
    )
    ap.add_argument("--train", type=json.loads, default={})
    ap.add_argument("--model", type=json.loads, default={})
    ap.add_argument("--attn-lr-mult", type=float, default=1.0)
    ap.add_argument("--attn-wd", type=float, default=None)
    ap.add_argument(
        "--arch",
        choices=["qkv_bias", "abs_pos"],
        default=None,
        help="diagnosis only (not in the package): add a zero-initialised qkv bias or learned absolute positions",
    )
    ap.add_argument("--curriculum", default=None, help="SEQ_LEN:STEPS: shorter rows (same tokens per step) first")
    ap.add_argument("--n-eval", type=int, default=16)
    ap.add_argument("--heads", action="store_true", help="print copy-head scores at the end")
    ap.add_argument("--out", default=str(OUT))
    return ap.parse_args()


def optimizer(model, lr: float, wd: float, betas, attn_lr_mult: float, attn_wd: float | None):
    groups = {}
    for name, p in model.named_parameters():
        attn = ".attn." in name
        decay = wd if p.dim() >= 2 else 0.0
        if attn and attn_wd is not None and p.dim() >= 2:
            decay = attn_wd
        key = (attn, decay)
        groups.setdefault(key, {"params": [], "weight_decay": decay, "peak": lr * (attn_lr_mult if attn else 1.0)})
        groups[key]["params"].append(p)
    return torch.optim.AdamW(list(groups.values()), lr=lr, betas=betas)


@torch.no_grad()
def heldout_loss(model, content_type: str, seq_len: int, n: int, design) -> float:
    tokens = stack_tokens(validation_samples(content_type, seq_len, n, design=design))  # [n, T + 1]
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)).item()


def evaluate(model, args, design, seq_len: int) -> dict:
    model.eval()
    out = {}
    for task in TASKS:
        rec = task_accuracy(model, task, seq_len, args.n_eval, design=design)
        out[f"acc_{task}"] = round(rec["accuracy"], 4)
        out[f"ci_{task}"] = f"{rec['ci_low']:.3f}-{rec['ci_high']:.3f}"
        out[f"n_{task}"] = rec["n_answers"]
    for ct in CONTENT_TYPES:
        out[f"loss_{ct}"] = round(heldout_loss(model, ct, seq_len, 8, design), 4)
    model.train()
    return out


def main() -> int:
    args = parse()
    torch.set_num_threads(1)
    preset = get_preset("quick")
    tc = preset.train.__class__(**{**preset.train.__dict__, **args.train})
    if args.mix is not None:
        tc = tc.__class__(**{**tc.__dict__, "mix": args.mix})
    design = (DESIGN if args.base == "default" else ORIGINAL_DESIGN).with_changes(**args.design)
    torch.manual_seed(tc.seed)
    model = build_model(preset.model.replace(**args.model))
    if args.arch:
        patch_architecture(model, args.arch)
    opt = optimizer(model, tc.lr, tc.weight_decay, tc.betas, args.attn_lr_mult, args.attn_wd)
    total = args.total or tc.total_steps
    cur_len, cur_steps = (int(x) for x in args.curriculum.split(":")) if args.curriculum else (tc.seq_len, 0)
    eval_at = set(args.eval_at or [args.steps])
    command = "python benchmarks/task_trials.py " + shlex.join(sys.argv[1:])
    t0, recent = time.perf_counter(), []
    model.train()
    for step in range(args.steps):
        factor = cosine_lr(step, 1.0, total, tc.lr_warmup_steps, tc.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = g["peak"] * factor
        seq_len, batch = (
            (cur_len, tc.batch_size * tc.seq_len // cur_len) if step < cur_steps else (tc.seq_len, tc.batch_size)
        )
        mix = args.early_mix if step < args.early_steps else tc.mix
        tokens, _ = train_batch(mix, seq_len, batch, tc.seed, step, design)  # [B, T + 1]
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        if not math.isfinite(loss.item()):
            print(f"diverged at step {step}", file=sys.stderr)
            return 1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        recent = (recent + [loss.item()])[-50:]
        if step + 1 in eval_at:
            row = {
                "label": args.label,
                "step": step + 1,
                "seconds": round(time.perf_counter() - t0),
                "train_loss": round(float(np.mean(recent)), 4),
                **evaluate(model, args, design, tc.seq_len),
                "command": command,
                "design": json.dumps(dataclasses.asdict(design)),
            }
            print(json.dumps(row), flush=True)
            write_row(Path(args.out), row)
    if args.heads:
        for task in TASKS:
            scores = copy_head_scores(model, task, tc.seq_len, 8, design=design)
            print(task, "\n", scores.round(3).to_string(index=False), flush=True)
    return 0


def patch_architecture(model, arch: str) -> None:
    """Diagnosis of why copying is slow to form: give layer 0 a content-independent direction for RoPE to rotate.

    qkv_bias: a zero-initialised bias on every qkv projection; abs_pos: learned absolute position embeddings
    (std 0.02) added to the token embeddings. Neither is part of sparselens' model.
    """
    if arch == "qkv_bias":
        for block in model.blocks:
            block.attn.qkv.bias = torch.nn.Parameter(torch.zeros(block.attn.qkv.out_features))
        return
    model.pos = torch.nn.Parameter(torch.randn(model.cfg.max_seq_len, model.cfg.d_model) * 0.02)
    model.embed.register_forward_hook(lambda _m, _i, out: out + model.pos[: out.shape[1]])


def write_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


if __name__ == "__main__":
    sys.exit(main())
