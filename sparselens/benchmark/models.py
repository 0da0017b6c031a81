"""Which models Phase 4 compares, and how it loads them: dense, DSA and every Phase 3 candidate, rebuilt when a
benchmark needs a longer `max_seq_len` (timing only: RoPE is computed on the fly) or other kernels."""

from __future__ import annotations

import torch

from sparselens.config import ConfigError
from sparselens.models import build_model
from sparselens.models.gpt import GPT
from sparselens.storage import RunStore

CANDIDATES_TABLE = "phase3_candidates"
BASELINES = {"dense": "dense", "dsa": "dsa"}  # model name -> family


def model_roster(store: RunStore, names: tuple[str, ...] = ()) -> dict[str, str]:
    """{model name: family} in report order: dense, dsa, then the Phase 3 candidates (reference first).

    names: a subset to keep (every one must be saved in the run); () keeps all. Families come from the
    `phase3_candidates` table when it exists (`reference`, `static`, `shared`, ...); other saved models are "other".
    """
    roster = dict(BASELINES)
    if store.table_exists(CANDIDATES_TABLE):
        table = store.read_table(CANDIDATES_TABLE, columns=["candidate", "family"])
        table = table.sort_values("family", key=lambda f: f != "reference", kind="stable")
        roster |= dict(zip(table["candidate"], table["family"], strict=True))
    if names:
        missing = [n for n in names if not store.has_model(n)]
        if missing:
            raise ConfigError(
                f"benchmark models {missing} are not saved in run {store.run_id!r}; saved: {store.list_models()}"
            )
        roster = {n: roster.get(n, "other") for n in names}
    unsaved = [n for n in roster if not store.has_model(n)]
    if unsaved:
        raise ConfigError(
            f"run {store.run_id!r} lists models {unsaved} that are not saved; run the phase that trains them "
            f"(train for dense/dsa, optimize for candidates) or name the models to benchmark"
        )
    return roster


def rebuild(model: GPT, **changes) -> GPT:
    """The same weights under a changed ModelConfig (e.g. max_seq_len, kernel_backend), in eval mode."""
    if not changes:
        return model
    out = build_model(model.cfg.replace(**changes))
    out.load_state_dict(model.state_dict())
    return out.eval()


def load_variant(store: RunStore, name: str, max_seq_len: int | None = None, kernel_backend: str | None = None) -> GPT:
    """Model `name` of the run, rebuilt to accept `max_seq_len` tokens (if longer) and run on `kernel_backend`."""
    model = store.load_model(name)
    changes = {}
    if max_seq_len is not None and max_seq_len > model.cfg.max_seq_len:
        changes["max_seq_len"] = max_seq_len
    if kernel_backend is not None:
        changes["kernel_backend"] = kernel_backend
    return rebuild(model, **changes)


@torch.no_grad()
def decode_error_ratio(model: GPT, tokens: torch.Tensor, prefill: int) -> float:
    """rms(err) / rms(ref) of cached decoding against one full forward, over the decoded positions.

    tokens [B, L] int64: the first `prefill` positions go in as one chunk, the rest one token per step.
    """
    if not 0 < prefill < tokens.shape[1]:
        raise ValueError(f"prefill={prefill} must leave at least one of the {tokens.shape[1]} tokens to decode")
    want = model(tokens)[:, prefill:]  # [B, L - prefill, V]
    cache = model.new_cache(tokens.shape[0])
    model(tokens[:, :prefill], cache=cache)
    steps = [model(tokens[:, t : t + 1], cache=cache) for t in range(prefill, tokens.shape[1])]
    got = torch.cat(steps, dim=1)  # [B, L - prefill, V]
    return ((got - want).norm() / want.norm()).item()
