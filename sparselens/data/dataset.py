"""Samples and batches for training and evaluation, over text corpora and synthetic tasks.

Text windows (``code``, ``prose``) are cut from the split's stream: every document of the split joined in doc_id
order with a `DOC_SEPARATOR` byte after each (see `corpora.corpus_stream`). A uniformly random window offset is
the same as picking a document weighted by its length and then an offset inside it, and short documents need no
special case; a window may cross a document boundary, marked by the separator byte.

Split sizes on CPython 3.11.7 (bytes of text): code train 8,090,871 / validation 658,033; prose train 339,557 /
validation 37,903, so held-out windows work up to seq_len 4096, where prose validation holds nine disjoint
windows. `validation_samples` returns disjoint windows only, spread over the whole split, and at most
`disjoint_windows` of them: a held-out sample is never counted twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from sparselens.data.corpora import CORPORA, check_corpus_split, corpus_stream
from sparselens.data.synthetic import MAX_SEED, TASKS, TaskDesign, generate

CONTENT_TYPES = ("code", "prose", "assoc_recall", "induction", "brackets")
_TRAIN_DOMAIN = 0x7A1  # first entropy word of train-batch generators
_VALID_DOMAIN = 0x7A2  # first entropy word of validation-sample generators


@dataclass(frozen=True, eq=False)
class Sample:
    """One sequence for a model: inputs are tokens[:-1], targets tokens[1:].

    Attributes:
        sample_id: stable identifier (validation: f"{content_type}-{seq_len}-{i}").
        content_type: one of CONTENT_TYPES.
        tokens: int64 [T + 1] byte ids.
        needed: for synthetic types, T int32 arrays with needed[t] = key positions (<= t) that determine
            tokens[t + 1] (empty where nothing specific is needed); None for code and prose.
    """

    sample_id: str
    content_type: str
    tokens: np.ndarray
    needed: list[np.ndarray] | None

    @property
    def seq_len(self) -> int:
        """T, the number of input (and target) positions."""
        return int(self.tokens.size) - 1


def check_content_type(content_type: str) -> None:
    """Raise a ValueError naming the valid content types when `content_type` is not one of them."""
    if content_type not in CONTENT_TYPES:
        raise ValueError(f"unknown content type {content_type!r}; valid content types are {CONTENT_TYPES}")


def _check_count(name: str, value: int, minimum: int, maximum: int | None = None) -> None:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= minimum
    if not ok or (maximum is not None and value >= maximum):
        upper = "" if maximum is None else f" and < {maximum}"
        raise ValueError(f"{name} must be an integer >= {minimum}{upper}, got {value!r}")


def _text_stream(content_type: str, split: str, seq_len: int) -> np.ndarray:
    check_corpus_split(content_type, split)
    _check_count("seq_len", seq_len, 1)
    stream = corpus_stream(content_type, split)  # uint8 [N]
    if stream.size < seq_len + 1:
        raise ValueError(
            f"seq_len {seq_len} needs {seq_len + 1} bytes but the {content_type!r} {split!r} split "
            f"holds {stream.size}; use a shorter seq_len"
        )
    return stream


def _window(content_type: str, split: str, stream: np.ndarray, offset: int, seq_len: int, sample_id: str) -> Sample:
    tokens = stream[offset : offset + seq_len + 1].astype(np.int64)  # [T + 1]
    return Sample(sample_id=sample_id, content_type=content_type, tokens=tokens, needed=None)


def sample_window(content_type: str, split: str, seq_len: int, rng: np.random.Generator) -> Sample:
    """A random window of seq_len + 1 bytes from a text split (``code`` or ``prose``), drawing from `rng`.

    Returns:
        Sample with tokens int64 [seq_len + 1], needed None, sample_id f"{content_type}-{split}@{offset}".
    """
    if content_type not in CORPORA:
        raise ValueError(
            f"sample_window takes a text content type {CORPORA}, got {content_type!r}; "
            f"use synthetic.generate for {TASKS}"
        )
    stream = _text_stream(content_type, split, seq_len)
    offset = int(rng.integers(0, stream.size - seq_len))  # window [offset, offset + seq_len] fits
    return _window(content_type, split, stream, offset, seq_len, f"{content_type}-{split}@{offset}")


def synthetic_sample(
    task: str, split: str, seq_len: int, seed: int, sample_id: str, design: TaskDesign | None = None
) -> Sample:
    """One synthetic-task Sample of seq_len + 1 tokens (tokens int64 [seq_len + 1], needed: seq_len arrays)."""
    _check_count("seq_len", seq_len, 1)
    generated = generate(task, seq_len + 1, seed, split, design)
    return Sample(sample_id, task, generated.tokens.astype(np.int64), generated.needed)


def normalize_mix(mix: Mapping[str, float]) -> dict[str, float]:
    """Mix weights over all CONTENT_TYPES (missing ones 0), scaled to sum to 1."""
    unknown = sorted(set(mix) - set(CONTENT_TYPES))
    if unknown:
        raise ValueError(f"mix has unknown content types {unknown}; valid content types are {CONTENT_TYPES}")
    weights = np.array([float(mix.get(name, 0.0)) for name in CONTENT_TYPES])  # [C]
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"mix weights must be finite, >= 0 and not all 0; got {dict(mix)}")
    return dict(zip(CONTENT_TYPES, (weights / weights.sum()).tolist(), strict=True))


def _train_row(content_type: str, seq_len: int, rng: np.random.Generator, design: TaskDesign | None) -> np.ndarray:
    if content_type in CORPORA:
        return sample_window(content_type, "train", seq_len, rng).tokens
    seed = int(rng.integers(MAX_SEED))
    return generate(content_type, seq_len + 1, seed, "train", design).tokens.astype(np.int64)


def train_batch(
    mix: Mapping[str, float], seq_len: int, batch_size: int, seed: int, step: int, design: TaskDesign | None = None
) -> tuple[torch.Tensor, list[str]]:
    """The training batch for (seed, step), identical every time it is asked for (so resumed runs match).

    Each row's content type is drawn from the normalised `mix`; text rows are windows of the train split,
    synthetic rows come from the train seed stream (`design`: the generators' knobs, default
    `synthetic.DESIGN`). Row order and contents depend only on the arguments.

    Returns:
        tokens: int64 [B, T + 1] (inputs tokens[:, :-1], targets tokens[:, 1:]);
        content_types: B names, the content type of each row.
    """
    weights = np.array(list(normalize_mix(mix).values()))  # [C], CONTENT_TYPES order
    _check_count("seq_len", seq_len, 1)
    _check_count("batch_size", batch_size, 1)
    _check_count("seed", seed, 0, MAX_SEED)
    _check_count("step", step, 0, MAX_SEED)
    rng = np.random.default_rng([_TRAIN_DOMAIN, int(seed), int(step)])
    kinds = rng.choice(len(CONTENT_TYPES), size=batch_size, p=weights)  # [B]
    content_types = [CONTENT_TYPES[k] for k in kinds]
    rows = [_train_row(name, seq_len, rng, design) for name in content_types]
    return torch.from_numpy(np.stack(rows)), content_types  # [B, T + 1]


def disjoint_windows(content_type: str, seq_len: int) -> int | None:
    """Disjoint held-out windows of seq_len + 1 tokens of a content type; None for synthetic tasks (unlimited)."""
    check_content_type(content_type)
    if content_type not in CORPORA:
        return None
    return _text_stream(content_type, "validation", seq_len).size // (seq_len + 1)


def _disjoint_offsets(size: int, window: int, n: int, rng: np.random.Generator) -> list[int]:
    """n offsets of disjoint `window`-byte windows in `size` bytes (n * window <= size), one per equal stratum.

    Each window is drawn uniformly among the positions where it fits inside its stratum.
    """
    edges = [i * size // n for i in range(n + 1)]
    return [int(rng.integers(lo, hi - window + 1)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def validation_samples(
    content_type: str, seq_len: int, n: int, seed: int = 0, design: TaskDesign | None = None
) -> list[Sample]:
    """Up to n fixed held-out samples of seq_len + 1 tokens from the validation split; same arguments, same samples.

    Text windows are disjoint and spread over the whole validation stream (one per n-th of it); when the split
    holds fewer than n disjoint windows (`disjoint_windows`), all of those are returned, so callers count
    `len(result)`, never n. Synthetic samples use the validation seed stream, disjoint from training: always n.

    Returns:
        min(n, disjoint_windows) Samples (n for synthetic tasks), sample_id f"{content_type}-{seq_len}-{i}"
        (f"{content_type}-{seq_len}-s{seed}-{i}" when seed != 0), tokens int64 [seq_len + 1].
    """
    check_content_type(content_type)
    _check_count("seq_len", seq_len, 1)
    _check_count("n", n, 0)
    _check_count("seed", seed, 0, MAX_SEED)
    if n == 0:
        return []
    prefix = f"{content_type}-{seq_len}-" + (f"s{seed}-" if seed else "")
    rng = np.random.default_rng([_VALID_DOMAIN, CONTENT_TYPES.index(content_type), seq_len, int(seed)])
    if content_type in CORPORA:
        stream = _text_stream(content_type, "validation", seq_len)
        count = min(n, stream.size // (seq_len + 1))
        offsets = _disjoint_offsets(stream.size, seq_len + 1, count, rng)
        return [_window(content_type, "validation", stream, o, seq_len, f"{prefix}{i}") for i, o in enumerate(offsets)]
    seeds = rng.integers(MAX_SEED, size=n).tolist()
    return [
        synthetic_sample(content_type, "validation", seq_len, s, f"{prefix}{i}", design) for i, s in enumerate(seeds)
    ]


def stack_tokens(samples: list[Sample]) -> torch.Tensor:
    """Stack samples of one length into a batch: int64 [B, T + 1]."""
    lengths = {s.tokens.size for s in samples}
    if len(lengths) != 1:
        raise ValueError(f"stack_tokens needs a non-empty list of samples of one length, got lengths {lengths}")
    return torch.from_numpy(np.stack([s.tokens for s in samples]))  # [B, T + 1]
