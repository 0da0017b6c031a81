"""A needle-in-a-haystack grid in the associative-recall format the models were trained on.

A sample of context length L is a haystack of definitions `kabc:v42;` (unique 3-letter keys, 2-digit values; it
starts inside a cut definition, like any text window), then `|qxyz:v` asking for one key's value and the value's
two digits. The asked key's definition (the needle) sits at `depth` of the haystack: 0 = its first whole
definition, 1 = the last one, right before the query. The model reads the L input tokens; it answers correctly
when its argmax predicts both value digits (teacher-forced: the second given the true first). Every sample is a
pure function of (L, depth, index), so every model sees the same grid and the answer positions are exact. Beside
the accuracy, the mean loss on the two answer digits is kept: it separates models that rarely answer exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sparselens.benchmark.table import NEEDLE, row
from sparselens.models.gpt import GPT
from sparselens.stats import mean_interval, wilson

DOMAIN = 0x9E4D1E  # separates these generators from every other use of default_rng in the package
KEY_LETTERS = 3
PAIR_BYTES = 9  # "k" + 3 letters + ":v" + 2 digits + ";"
QUERY_BYTES = 9  # "|q" + 3 letters + ":v" + 2 digits
MIN_LENGTH = PAIR_BYTES + QUERY_BYTES  # room for one whole definition and the query


@dataclass(frozen=True, eq=False)
class NeedleSample:
    """tokens int64 [L + 1] (inputs tokens[:-1]); answer_pos int64 [2]: input positions whose next token is a value
    digit of the needle; needle_pos: position of the needle's first value digit in the haystack."""

    tokens: np.ndarray
    answer_pos: np.ndarray
    needle_pos: int
    depth: float


def _definition(key: int, digits: np.ndarray) -> list[int]:
    letters = [ord("a") + (key // 26**i) % 26 for i in reversed(range(KEY_LETTERS))]
    return [ord("k"), *letters, ord(":"), ord("v"), *(ord("0") + digits).tolist(), ord(";")]


def needle_sample(length: int, depth: float, index: int) -> NeedleSample:
    """Sample `index` of the (context length, depth) cell; see the module docstring for the layout."""
    if length < MIN_LENGTH:
        raise ValueError(f"a needle sample needs a context of at least {MIN_LENGTH} tokens, got {length}")
    if not 0 <= depth <= 1:
        raise ValueError(f"depth={depth} must be a share of the haystack in [0, 1]")
    rng = np.random.default_rng([DOMAIN, length, round(depth * 10_000), index])
    hay = length + 1 - QUERY_BYTES
    n_defs = -(-hay // PAIR_BYTES)
    cut = n_defs * PAIR_BYTES - hay  # bytes dropped from the first definition
    keys = rng.choice(26**KEY_LETTERS, size=n_defs, replace=False)
    values = rng.integers(0, 10, size=(n_defs, 2))
    first = 1 if cut else 0  # the first whole definition
    slot = first + round(depth * (n_defs - 1 - first))
    stream = sum((_definition(int(k), v) for k, v in zip(keys, values, strict=True)), [])[cut:]
    query = [ord("|"), ord("q"), *_definition(int(keys[slot]), values[slot])[1:-1]]  # "|qxyz:v42"
    tokens = np.array(stream + query, dtype=np.int64)  # [L + 1]
    needle_pos = slot * PAIR_BYTES - cut + 1 + KEY_LETTERS + 2
    return NeedleSample(tokens, np.array([length - 2, length - 1], dtype=np.int64), needle_pos, depth)


def grid(length: int, depths: tuple[float, ...], samples: int) -> list[NeedleSample]:
    """Every sample of one context length: depths x samples."""
    return [needle_sample(length, d, i) for d in depths for i in range(samples)]


@torch.no_grad()
def answers(model: GPT, batch: list[NeedleSample]) -> tuple[np.ndarray, np.ndarray]:
    """Whether the model predicts both value digits of each sample (bool [B]), and its mean loss on them (nats [B]).

    The loss tells models apart where accuracy cannot (a small model that rarely gets both digits right)."""
    tokens = torch.from_numpy(np.stack([s.tokens for s in batch]))  # [B, L + 1]
    logits = model(tokens[:, :-1])  # [B, L, V]
    pos = torch.from_numpy(np.stack([s.answer_pos for s in batch]))  # [B, 2]
    at = logits.gather(1, pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))  # [B, 2, V]
    want = tokens.gather(1, pos + 1)  # [B, 2]
    nll = -torch.log_softmax(at.float(), dim=-1).gather(-1, want.unsqueeze(-1)).squeeze(-1)  # [B, 2]
    return (at.argmax(-1) == want).all(dim=1).numpy(), nll.mean(dim=1).double().numpy()


def retrieval_rows(
    model: GPT,
    name: str,
    family: str,
    lengths: tuple[int, ...],
    depths: tuple[float, ...],
    samples: int,
    batch_size: int,
) -> list[dict]:
    """Per context length and needle depth: retrieval_accuracy (Wilson 95%) and retrieval_answer_loss (t 95%)."""
    rows = []
    for length in lengths:
        cells = grid(length, depths, samples)
        parts = [answers(model, cells[i : i + batch_size]) for i in range(0, len(cells), batch_size)]
        hits, nll = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        for j, depth in enumerate(depths):
            cell = slice(j * samples, (j + 1) * samples)
            acc = wilson(int(hits[cell].sum()), samples)
            rows.append(row(name, family, "retrieval_accuracy", length, acc, NEEDLE, interval="wilson95", depth=depth))
            loss = mean_interval(nll[cell])
            rows.append(row(name, family, "retrieval_answer_loss", length, loss, NEEDLE, interval="t95", depth=depth))
    return rows
