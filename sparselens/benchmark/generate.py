"""Text generation through the decode cache: prefill the prompt once, then one token per step.

`generate(model, prompt, max_new_tokens, ...)` yields the new byte ids as they are sampled, so a caller can stream
them. Temperature 0 is greedy (argmax); otherwise logits / temperature are softmaxed, cut to the smallest set of
tokens whose probability reaches `top_p` (nucleus sampling) and sampled with a generator seeded by `seed`, so the
same arguments give the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from sparselens.models.gpt import GPT


class GenerationError(ValueError):
    """A generation request that cannot be served; the message says what to change."""


def check_request(model: GPT, prompt_len: int, max_new_tokens: int, temperature: float, top_p: float) -> None:
    """Refuse an empty prompt, a negative count, bad sampling settings, or a request past max_seq_len."""
    if prompt_len < 1:
        raise GenerationError("the prompt is empty: give at least one byte of text to continue")
    if max_new_tokens < 0:
        raise GenerationError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if not temperature >= 0:
        raise GenerationError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if not 0 < top_p <= 1:
        raise GenerationError(f"top_p={top_p} must lie in (0, 1] (1 = no nucleus cut)")
    limit = model.cfg.max_seq_len
    if prompt_len + max_new_tokens > limit:
        raise GenerationError(
            f"prompt ({prompt_len} bytes) + max_new_tokens ({max_new_tokens}) exceed the model's max_seq_len={limit}; "
            f"shorten the prompt or ask for at most {max(0, limit - prompt_len)} new tokens"
        )


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row from logits [B, V] -> [B] int64: argmax at temperature 0, else nucleus sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # [B, V]
    if top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)  # [B, V]
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass ranked above each token
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)  # the token that crosses top_p stays
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # [B]


@torch.no_grad()
def generate(
    model: GPT,
    prompt: bytes | list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> Iterator[int]:
    """Yield `max_new_tokens` byte ids continuing `prompt`, one per decode step through the model's cache."""
    ids = list(prompt)
    check_request(model, len(ids), max_new_tokens, temperature, top_p)
    if max_new_tokens == 0:
        return
    generator = torch.Generator().manual_seed(seed)
    cache = model.new_cache(1)
    logits = model(torch.tensor([ids], dtype=torch.long), cache=cache)[:, -1]  # [1, V], prefill
    for step in range(max_new_tokens):
        token = sample_next(logits, temperature, top_p, generator)  # [1]
        yield int(token.item())
        if step + 1 < max_new_tokens:
            logits = model(token.view(1, 1), cache=cache)[:, -1]  # [1, V]


@torch.no_grad()
def greedy_by_full_forwards(model: GPT, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation recomputing the whole sequence each step (no cache): the check `generate` must match."""
    ids = list(prompt)
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([ids], dtype=torch.long))[:, -1]  # [1, V]
        ids.append(int(logits.argmax(dim=-1).item()))
    return ids[len(prompt) :]
