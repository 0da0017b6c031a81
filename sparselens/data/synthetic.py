"""Synthetic byte tasks that know, for every position, which earlier positions a model needs to look at.

A task sample is `tokens` (uint8 [L]) and `needed`, a list of L-1 int32 arrays: `needed[t]` holds the key
positions (all <= t) that determine `tokens[t + 1]`; it is empty where the next token is random or follows from
local structure alone. Later phases score attention and indexer selections against these sets.

- ``assoc_recall``: a list of definitions ``kabc:v42;`` (unique 3-letter keys, 2-digit values) filling about half
  the sample, ``|``, then queries ``qabc:v42;`` of random earlier keys. Predicting value digit j of a query needs
  the position of value digit j in that key's definition.
- ``induction``: episodes of a random printable span, a random gap, and the span again. Inside the repeat, the
  token after position t needs the position right after the earlier copy of ``tokens[t]`` (the induction target).
- ``brackets``: a random walk of nested ``()``, ``[]``, ``{}`` with lowercase filler. Predicting a closing bracket
  needs the position of its opener.

Every sample is a pure function of (task, split, seed, length): the generator is
``numpy.random.default_rng([domain, split_id, task_id, seed])``, so train and validation draw from disjoint seed
streams and no seed of one split can reproduce a sample of the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

TASKS = ("assoc_recall", "induction", "brackets")
_TASK_IDS = {"assoc_recall": 1, "induction": 2, "brackets": 3}  # fixed: adding a task must not reseed the others
_SPLIT_IDS = {"train": 0, "validation": 1}
_SEED_DOMAIN = 0x5E1E  # separates these streams from every other use of default_rng in the package
MAX_SEED = 2**32  # seeds are one 32-bit word so that entropy lists never alias across lengths
_EMPTY = np.zeros(0, dtype=np.int32)
_EMPTY.flags.writeable = False

KEY_LETTERS = 3  # 26**3 distinct keys, more than the definitions a 4096-byte sample holds
VALUE_DIGITS = 2
INDUCTION_MIN_SPAN = 8  # shortest repeated span, bytes
INDUCTION_ALPHABET = (0x21, 0x7F)  # printable ASCII without space, [low, high)
BRACKET_PAIRS = ((ord("("), ord(")")), (ord("["), ord("]")), (ord("{"), ord("}")))
BRACKET_P_OPEN = 0.3  # per step; closing has the same chance, filler the rest
BRACKET_MAX_DEPTH = 24  # at this depth an "open" draw closes instead


@dataclass(frozen=True, eq=False)
class TaskSample:
    """One synthetic sequence with its ground truth.

    Attributes:
        tokens: uint8 [L] byte ids.
        needed: L-1 int32 arrays; needed[t] = key positions (<= t) that determine tokens[t + 1].
    """

    tokens: np.ndarray
    needed: list[np.ndarray]


def task_rng(task: str, split: str, seed: int) -> np.random.Generator:
    """The random generator behind (task, split, seed); raises ValueError on unknown names or bad seeds."""
    if task not in _TASK_IDS:
        raise ValueError(f"unknown synthetic task {task!r}; valid tasks are {TASKS}")
    if split not in _SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; valid splits are {tuple(_SPLIT_IDS)}")
    if not isinstance(seed, int | np.integer) or not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return np.random.default_rng([_SEED_DOMAIN, _SPLIT_IDS[split], _TASK_IDS[task], int(seed)])


def generate(task: str, length: int, seed: int, split: str = "train") -> TaskSample:
    """Generate one sample of `length` tokens (a model sees tokens[:-1] and predicts tokens[1:]).

    Returns:
        TaskSample with tokens uint8 [length] and `length - 1` needed-position arrays.
    """
    rng = task_rng(task, split, seed)
    if not isinstance(length, int | np.integer) or length < 2:
        raise ValueError(f"length must be an integer >= 2 (one input and one target), got {length!r}")
    tokens, needed_by_target = _BUILDERS[task](rng, int(length))
    return _finalize(tokens, needed_by_target, int(length))


def flatten_needed(needed: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All (query, key) pairs of a needed list, for vectorised recall computations.

    Returns:
        query_pos: int64 [N] positions t; key_pos: int64 [N] the positions in needed[t], same order.
    """
    counts = np.array([len(keys) for keys in needed], dtype=np.int64)  # [T]
    query_pos = np.repeat(np.arange(len(needed), dtype=np.int64), counts)  # [N]
    key_pos = np.concatenate([_EMPTY, *needed]).astype(np.int64)  # [N]
    return query_pos, key_pos


def _finalize(tokens: list[int], needed_by_target: dict[int, list[int]], length: int) -> TaskSample:
    """Truncate to `length` and turn {target position: key positions} into the per-query list."""
    ids = np.array(tokens[:length], dtype=np.uint8)  # [L]
    needed = [_EMPTY] * (length - 1)
    for target, keys in needed_by_target.items():
        if 1 <= target < length:
            needed[target - 1] = np.array(sorted(keys), dtype=np.int32)
    return TaskSample(tokens=ids, needed=needed)


def _letters(index: int, n: int) -> list[int]:
    """Base-26 digits of `index` as `n` lowercase letters."""
    return [ord("a") + (index // 26**i) % 26 for i in reversed(range(n))]


def _assoc_recall(rng: np.random.Generator, length: int) -> tuple[list[int], dict[int, list[int]]]:
    pair_bytes = 1 + KEY_LETTERS + 2 + VALUE_DIGITS + 1  # "k" key ":v" value ";"
    n_pairs = min(max(1, length // (2 * pair_bytes)), 26**KEY_LETTERS)
    keys = [_letters(int(k), KEY_LETTERS) for k in rng.choice(26**KEY_LETTERS, size=n_pairs, replace=False)]
    values = rng.integers(ord("0"), ord("9") + 1, size=(n_pairs, VALUE_DIGITS)).tolist()
    tokens: list[int] = []
    value_pos = []
    for key, value in zip(keys, values, strict=True):
        tokens += [ord("k"), *key, ord(":"), ord("v")]
        value_pos.append(len(tokens))
        tokens += [*value, ord(";")]
    tokens.append(ord("|"))
    needed: dict[int, list[int]] = {}
    while len(tokens) < length:
        i = int(rng.integers(n_pairs))
        tokens += [ord("q"), *keys[i], ord(":"), ord("v")]
        for j, digit in enumerate(values[i]):
            needed[len(tokens)] = [value_pos[i] + j]
            tokens.append(digit)
        tokens.append(ord(";"))
    return tokens, needed


def _induction(rng: np.random.Generator, length: int) -> tuple[list[int], dict[int, list[int]]]:
    max_span = max(INDUCTION_MIN_SPAN, length // 4)
    tokens: list[int] = []
    needed: dict[int, list[int]] = {}
    while len(tokens) < length:
        span_len = int(rng.integers(INDUCTION_MIN_SPAN, max_span + 1))
        gap_len = int(rng.integers(0, span_len + 1))
        span = rng.integers(*INDUCTION_ALPHABET, size=span_len).tolist()
        start = len(tokens)
        tokens += span + rng.integers(*INDUCTION_ALPHABET, size=gap_len).tolist()
        copy_start = len(tokens)
        tokens += span
        for j in range(1, span_len):
            needed[copy_start + j] = [start + j]
    return tokens, needed


def _brackets(rng: np.random.Generator, length: int) -> tuple[list[int], dict[int, list[int]]]:
    draws = rng.random(length).tolist()
    kinds = rng.integers(len(BRACKET_PAIRS), size=length).tolist()
    fillers = rng.integers(ord("a"), ord("z") + 1, size=length).tolist()
    tokens: list[int] = []
    needed: dict[int, list[int]] = {}
    stack: list[tuple[int, int]] = []  # (kind, position of the opener)
    for pos in range(length):
        if draws[pos] < BRACKET_P_OPEN and len(stack) < BRACKET_MAX_DEPTH:
            stack.append((kinds[pos], pos))
            tokens.append(BRACKET_PAIRS[kinds[pos]][0])
        elif draws[pos] < 2 * BRACKET_P_OPEN and stack:
            kind, opener = stack.pop()
            needed[pos] = [opener]
            tokens.append(BRACKET_PAIRS[kind][1])
        else:
            tokens.append(fillers[pos])
    return tokens, needed


_BUILDERS: dict[str, Callable[[np.random.Generator, int], tuple[list[int], dict[int, list[int]]]]] = {
    "assoc_recall": _assoc_recall,
    "induction": _induction,
    "brackets": _brackets,
}
