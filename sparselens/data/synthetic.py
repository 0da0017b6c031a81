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
from dataclasses import dataclass, replace

import numpy as np

TASKS = ("assoc_recall", "induction", "brackets")
_TASK_IDS = {"assoc_recall": 1, "induction": 2, "brackets": 3}  # fixed: adding a task must not reseed the others
_SPLIT_IDS = {"train": 0, "validation": 1}
_SEED_DOMAIN = 0x5E1E  # separates these streams from every other use of default_rng in the package
MAX_SEED = 2**32  # seeds are one 32-bit word so that entropy lists never alias across lengths
_EMPTY = np.zeros(0, dtype=np.int32)
_EMPTY.flags.writeable = False

BRACKET_PAIRS = ((ord("("), ord(")")), (ord("["), ord("]")), (ord("{"), ord("}")))


RECALL_FORMATS = ("pairs", "labelled")
LETTERS_A_TO_P = (0x61, 0x71)  # "a".."p": 16 bytes, an alphabet the quick model learns to copy (see DESIGN)


def recall_keys(design: TaskDesign) -> np.ndarray:
    """Key bytes of the "pairs" format: the design's key alphabet without digits (values) and ``|``."""
    return np.array([b for b in range(*design.recall_key_alphabet) if not chr(b).isdigit() and b != ord("|")])


@dataclass(frozen=True)
class TaskDesign:
    """The knobs of the three generators. The defaults are `DESIGN`, the tasks the package trains and evaluates on.

    Chosen by measured trials (benchmarks/results/task_trials.md): the quick model (head size 32) forms induction
    heads within ~250 steps of copying over 16 bytes, but not within 600 over the 94 printable ones (nor over 32
    within 300); recall uses the same 16 letters for keys and values, so the induction heads serve it too.
    `ORIGINAL_DESIGN` is the first design, kept to reproduce the trials that measured it.
    """

    recall_format: str = "pairs"  # "pairs": K V ... | K V (one byte each); "labelled": kabc:v42; ... | qabc:v42;
    recall_max_pairs: int = 8  # "pairs": keys defined per block; long samples hold several blocks
    recall_key_alphabet: tuple[int, int] = LETTERS_A_TO_P  # "pairs": key bytes [low, high), less digits and "|"
    recall_letter_values: bool = True  # "pairs": values from the key alphabet, all 2n bytes of a block distinct
    key_letters: int = 3  # "labelled": 26**3 distinct keys, more than the definitions a 4096-byte sample holds
    value_digits: int = 2  # "labelled"
    induction_min_span: int = 4  # shortest repeated span, bytes
    induction_max_span: int | None = 8  # longest span, bytes; None: length // 4
    induction_max_gap: float = 1.0  # gap between the span and its copy: uniform in [0, this * span length]
    induction_alphabet: tuple[int, int] = LETTERS_A_TO_P  # span and gap bytes, [low, high)
    induction_distinct: bool = True  # span bytes all different, gap bytes never from the span: one match per query
    induction_repeats: int = 1  # copies of the span after its first occurrence, each after its own gap
    bracket_p_open: float = 0.3  # per step; closing has the same chance, filler the rest
    bracket_max_depth: int = 2  # at this depth an "open" draw closes instead; still nested, (( [] )) included

    def __post_init__(self) -> None:
        if self.recall_format not in RECALL_FORMATS:
            raise ValueError(f"recall_format={self.recall_format!r} is unknown; use one of {RECALL_FORMATS}")
        low, high = self.induction_alphabet
        max_span = self.induction_max_span or self.induction_min_span
        if not 1 <= self.induction_min_span <= max_span or self.induction_repeats < 1 or self.induction_max_gap < 0:
            raise ValueError(
                f"induction spans need 1 <= min_span <= max_span, repeats >= 1 and max_gap >= 0; got {self}"
            )
        if self.induction_distinct and high - low <= max_span:
            raise ValueError(
                f"distinct spans of up to {max_span} bytes need an alphabet of more than {max_span} bytes (gap bytes "
                f"come from the rest); induction_alphabet {self.induction_alphabet} has {high - low}"
            )
        if self.recall_format == "pairs" and recall_keys(self).size < 2 * (1 + self.recall_letter_values):
            raise ValueError(f"recall_key_alphabet {self.recall_key_alphabet} holds too few key bytes; widen it")

    def with_changes(self, **changes) -> TaskDesign:
        """A copy with fields replaced; a ValueError names unknown fields."""
        unknown = sorted(set(changes) - set(self.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown task design fields {unknown}; fields are {sorted(self.__dataclass_fields__)}")
        return replace(self, **changes)


DESIGN = TaskDesign()
ORIGINAL_DESIGN = TaskDesign(
    recall_format="labelled",
    recall_max_pairs=64,
    recall_key_alphabet=(0x21, 0x7F),
    recall_letter_values=False,
    induction_min_span=8,
    induction_max_span=None,
    induction_alphabet=(0x21, 0x7F),
    induction_distinct=False,
    bracket_max_depth=24,
)


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


def generate(task: str, length: int, seed: int, split: str = "train", design: TaskDesign | None = None) -> TaskSample:
    """Generate one sample of `length` tokens (a model sees tokens[:-1] and predicts tokens[1:]).

    `design` (default `DESIGN`) sets the generators' knobs; only trials pass another one.

    Returns:
        TaskSample with tokens uint8 [length] and `length - 1` needed-position arrays.
    """
    rng = task_rng(task, split, seed)
    if not isinstance(length, int | np.integer) or length < 2:
        raise ValueError(f"length must be an integer >= 2 (one input and one target), got {length!r}")
    tokens, needed_by_target = _BUILDERS[task](rng, int(length), design or DESIGN)
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


def _assoc_recall(rng: np.random.Generator, length: int, d: TaskDesign) -> tuple[list[int], dict[int, list[int]]]:
    if d.recall_format == "pairs":
        return _recall_pairs(rng, length, d)
    pair_bytes = 1 + d.key_letters + 2 + d.value_digits + 1  # "k" key ":v" value ";"
    n_pairs = min(max(1, length // (2 * pair_bytes)), 26**d.key_letters)
    keys = [_letters(int(k), d.key_letters) for k in rng.choice(26**d.key_letters, size=n_pairs, replace=False)]
    values = rng.integers(ord("0"), ord("9") + 1, size=(n_pairs, d.value_digits)).tolist()
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


def _recall_pairs(rng: np.random.Generator, length: int, d: TaskDesign) -> tuple[list[int], dict[int, list[int]]]:
    """Blocks of one-byte keys, each followed by its one-byte value, ``|``, then every key once more (shuffled)
    followed by its value. A block defines at most `recall_max_pairs` keys, so long samples hold several blocks
    and a key's value is the one of its latest definition: needed = that definition's value position.
    Values are digits, or (`recall_letter_values`) further key-alphabet bytes, all 2n bytes of a block distinct."""
    alphabet = recall_keys(d)
    per_pair = 2 if d.recall_letter_values else 1  # alphabet bytes a pair uses
    tokens: list[int] = []
    needed: dict[int, list[int]] = {}
    while len(tokens) < length:
        n_pairs = max(1, min(d.recall_max_pairs, alphabet.size // per_pair, (length - len(tokens) - 1) // 4))
        if d.recall_letter_values:
            drawn = rng.choice(alphabet, size=2 * n_pairs, replace=False).tolist()
            keys, values = drawn[:n_pairs], drawn[n_pairs:]
        else:
            keys = rng.choice(alphabet, size=n_pairs, replace=False).tolist()
            values = rng.integers(ord("0"), ord("9") + 1, size=n_pairs).tolist()
        value_pos = {}
        for key, value in zip(keys, values, strict=True):
            tokens.append(key)
            value_pos[key] = len(tokens)
            tokens.append(value)
        tokens.append(ord("|"))
        for i in rng.permutation(n_pairs).tolist():
            tokens.append(keys[i])
            needed[len(tokens)] = [value_pos[keys[i]]]
            tokens.append(values[i])
    return tokens, needed


def _induction(rng: np.random.Generator, length: int, d: TaskDesign) -> tuple[list[int], dict[int, list[int]]]:
    max_span = max(d.induction_min_span, d.induction_max_span or length // 4)
    alphabet = np.arange(*d.induction_alphabet)
    tokens: list[int] = []
    needed: dict[int, list[int]] = {}
    while len(tokens) < length:
        span_len = int(rng.integers(d.induction_min_span, max_span + 1))
        gaps = [int(rng.integers(0, int(d.induction_max_gap * span_len) + 1)) for _ in range(d.induction_repeats)]
        if d.induction_distinct:  # no byte twice in the span, gap bytes never from the span: one match per query
            span = rng.choice(alphabet, size=span_len, replace=False).tolist()
            filler = np.setdiff1d(alphabet, span)
        else:
            span, filler = rng.integers(*d.induction_alphabet, size=span_len).tolist(), alphabet
        starts = [len(tokens)]
        tokens += span
        for gap_len in gaps:
            tokens += _draw(rng, filler, gap_len, d.induction_distinct)
            starts.append(len(tokens))
            tokens += span
            for j in range(1, span_len):
                needed[starts[-1] + j] = [s + j for s in starts[:-1]]
    return tokens, needed


def _draw(rng: np.random.Generator, alphabet: np.ndarray, size: int, distinct: bool) -> list[int]:
    """`size` bytes from `alphabet`; the original design draws them with `integers` (its random stream is kept)."""
    if distinct:
        return rng.choice(alphabet, size=size).tolist()
    return rng.integers(int(alphabet[0]), int(alphabet[-1]) + 1, size=size).tolist()


def _brackets(rng: np.random.Generator, length: int, d: TaskDesign) -> tuple[list[int], dict[int, list[int]]]:
    draws = rng.random(length).tolist()
    kinds = rng.integers(len(BRACKET_PAIRS), size=length).tolist()
    fillers = rng.integers(ord("a"), ord("z") + 1, size=length).tolist()
    tokens: list[int] = []
    needed: dict[int, list[int]] = {}
    stack: list[tuple[int, int]] = []  # (kind, position of the opener)
    for pos in range(length):
        if draws[pos] < d.bracket_p_open and len(stack) < d.bracket_max_depth:
            stack.append((kinds[pos], pos))
            tokens.append(BRACKET_PAIRS[kinds[pos]][0])
        elif draws[pos] < 2 * d.bracket_p_open and stack:
            kind, opener = stack.pop()
            needed[pos] = [opener]
            tokens.append(BRACKET_PAIRS[kind][1])
        else:
            tokens.append(fillers[pos])
    return tokens, needed


_BUILDERS: dict[str, Callable[[np.random.Generator, int, TaskDesign], tuple[list[int], dict[int, list[int]]]]] = {
    "assoc_recall": _assoc_recall,
    "induction": _induction,
    "brackets": _brackets,
}
