"""Planted attention heads: causal maps of a known kind with random parameters, ground truth for ``classify_head``.

A planted row is a softmax over structured logits plus Gaussian noise, written as its two parts: a *structure* share
``1 - noise`` spread over the kind's keys with log-normal weights (``exp(s * N(0, 1))``, s ~ U(0, 0.8), times the
kind's own profile, e.g. a distance decay), and a *background* share ``noise`` spread over every causal key with
weights ``exp(sigma * N(0, 1))``, sigma ~ U(0.2, 1.2). ``noise`` defaults to U(0.05, 0.3). Rows whose structure has
no visible key yet (a column to the right of the query) are background only.

Parameters scale with K so that every structured kind is sparse at the classifier's default budget (K/8 keys per
query) and none is a special case of a simpler kind:

- ``sink``: the first 1-4 keys, the first usually heaviest;
- ``local``: a window of 1..max(2, K/16) keys with a random decay; a quarter skip the query's own key (previous-token
  heads);
- ``sink_local``: 1-4 sink keys holding 20-70 % of the structure, plus a window as above;
- ``vertical_slash``: 0-4 columns and 0-4 offsets, at least two lines, at least one column or offset >= 8;
- ``block``: blocks of 4-32 positions (at most K/16); each query block reads 1 or more random earlier key blocks
  (at most K/16 keys), plus its own block half the time;
- ``scattered``: each query reads its own 1..max(2, K/32) random keys (content-addressed, like induction);
- ``broad``: background only (sigma ~ U(0, 0.8)), with a mild recency slope and, half the time, up to 10 % on key 0.

Shapes: K ~ U{64..256}; Q = K, or (a quarter of maps) the last Q ~ U{16..K-1} queries.
"""

from __future__ import annotations

import numpy as np

from sparselens.analysis.patterns import KINDS


def _lognormal(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    return np.exp(scale * rng.standard_normal(shape))


def _sink(rng: np.random.Generator, pos: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, dict]:
    n = int(rng.integers(1, 5))
    w = np.zeros(offset.shape)
    w[:, :n] = np.exp(-rng.uniform(0, 1.5) * np.arange(n)) * _lognormal(rng, (1, n), 0.3)  # [Q, n]
    return w, {"n_sink": n}


def _window(rng: np.random.Generator, offset: np.ndarray, n_keys: int) -> tuple[np.ndarray, dict]:
    window = int(rng.integers(1, max(2, n_keys // 16) + 1))
    first = int(rng.random() < 0.25 and window >= 2)  # 1: a previous-token head that skips its own key
    inside = (offset >= first) & (offset < first + window)
    return np.where(inside, np.exp(-rng.uniform(0, 0.5) * offset), 0.0), {"window": window, "first_offset": first}


def _local(rng: np.random.Generator, pos: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, dict]:
    return _window(rng, offset, offset.shape[1])


def _sink_local(rng: np.random.Generator, pos: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, dict]:
    sink, sink_params = _sink(rng, pos, offset)
    window, window_params = _window(rng, offset, offset.shape[1])
    share = rng.uniform(0.2, 0.7)  # of the structure mass on the sink
    w = share * sink / sink.sum(1, keepdims=True) + (1 - share) * window / window.sum(1, keepdims=True).clip(1e-30)
    return w, sink_params | window_params | {"sink_share": share}


def _vertical_slash(rng: np.random.Generator, pos: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, dict]:
    q, k = offset.shape
    while True:
        n_v, n_s = int(rng.integers(0, 5)), int(rng.integers(0, 5))
        cols = np.sort(rng.choice(k - q + max(1, q // 2), size=n_v, replace=False))  # seen by at least half the rows
        offs = np.sort(rng.choice(k // 2, size=n_s, replace=False))
        if n_v + n_s >= 2 and max([*cols, *offs]) >= 8:
            break
    w = np.zeros(offset.shape)
    w[:, cols] += _lognormal(rng, (1, n_v), 0.5)
    for o, weight in zip(offs, _lognormal(rng, (n_s,), 0.5), strict=True):
        w += (offset == o) * weight
    return w, {"columns": cols.tolist(), "offsets": offs.tolist()}


def _block(rng: np.random.Generator, pos: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, dict]:
    k = offset.shape[1]
    block = int(rng.choice([b for b in (4, 8, 16, 32) if b <= max(4, k // 16)]))
    per_row = int(rng.integers(1, max(1, k // 16 // block) + 1))
    own = bool(rng.random() < 0.5)
    n_blocks = (k - 1) // block + 1
    table = np.zeros((n_blocks, n_blocks))  # [query block, key block] weight
    for qb in range(int(pos[0] // block), n_blocks):
        earlier = rng.choice(qb, size=min(per_row, qb), replace=False) if qb else np.array([0])
        table[qb, earlier] = _lognormal(rng, (len(earlier),), 0.5)
        table[qb, qb] += float(own or qb == 0)
    w = table[(pos // block)[:, None], (np.arange(k) // block)[None, :]]  # [Q, K]
    return w, {"block_size": block, "blocks_per_row": per_row, "own_block": own}


def _scattered(rng: np.random.Generator, pos: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, dict]:
    q, k = offset.shape
    n = int(rng.integers(1, max(2, k // 32) + 1))
    score = np.where(offset >= 0, rng.random((q, k)), -1.0)  # [Q, K] random order of each row's causal keys
    top = np.argpartition(-score, n - 1, axis=1)[:, :n]  # [Q, n]
    w = np.zeros((q, k))
    np.put_along_axis(w, top, _lognormal(rng, (q, n), 0.5), axis=1)
    return w, {"keys_per_query": n}


_STRUCTURE = {
    "sink": _sink,
    "local": _local,
    "sink_local": _sink_local,
    "vertical_slash": _vertical_slash,
    "block": _block,
    "scattered": _scattered,
}


def _broad(rng: np.random.Generator, offset: np.ndarray) -> tuple[np.ndarray, dict]:
    sigma, slope = rng.uniform(0, 0.8), rng.uniform(0, 2)
    logits = sigma * rng.standard_normal(offset.shape) - slope * offset / offset.shape[1]  # [Q, K]
    w = np.where(offset >= 0, np.exp(logits - logits.max(1, keepdims=True)), 0.0)
    w /= w.sum(1, keepdims=True)
    sink = rng.uniform(0, 0.1) * (rng.random() < 0.5)
    w[:, 0] += sink
    return w / w.sum(1, keepdims=True), {"sigma": sigma, "slope": slope, "sink_mass": sink, "noise": 1.0}


def plant_head(
    kind: str, n_queries: int, n_keys: int, rng: np.random.Generator, noise: float | None = None
) -> tuple[np.ndarray, dict]:
    """One planted head: ``attn[Q, K]`` float64 (causal, rows sum to 1, query t at key K-Q+t) and its params.

    ``noise`` is the share of each row's mass on the background (default U(0.05, 0.3)); params hold the kind's
    parameters plus ``noise`` and ``sigma`` (background log-normal scale).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    if not 1 <= n_queries <= n_keys:
        raise ValueError(f"need 1 <= n_queries <= n_keys, got {n_queries}, {n_keys}")
    pos = n_keys - n_queries + np.arange(n_queries)
    offset = pos[:, None] - np.arange(n_keys)[None, :]  # [Q, K]
    if kind == "broad":
        return _broad(rng, offset)
    noise = rng.uniform(0.05, 0.3) if noise is None else float(noise)
    if not 0 <= noise < 1:
        raise ValueError(f"noise is the background share of each row's mass, in [0, 1); got {noise}")
    sigma = rng.uniform(0.2, 1.2)
    weights, params = _STRUCTURE[kind](rng, pos, offset)
    structure = np.where(offset >= 0, weights * _lognormal(rng, offset.shape, rng.uniform(0, 0.8)), 0.0)  # [Q, K]
    total = structure.sum(1, keepdims=True)
    structure = np.divide(structure, total, out=np.zeros_like(structure), where=total > 0)
    background = np.where(offset >= 0, _lognormal(rng, offset.shape, sigma), 0.0)
    background /= background.sum(1, keepdims=True)
    share = np.where(total > 0, 1 - noise, 0.0)  # [Q, 1] structure share of each row
    return share * structure + (1 - share) * background, params | {"noise": noise, "sigma": sigma}


def random_shape(
    rng: np.random.Generator, min_keys: int = 64, max_keys: int = 256, short_queries: float = 0.25
) -> tuple[int, int]:
    """(Q, K): K ~ U{min_keys..max_keys}; Q = K, or with probability ``short_queries`` Q ~ U{16..K-1}."""
    k = int(rng.integers(min_keys, max_keys + 1))
    q = int(rng.integers(16, k)) if rng.random() < short_queries else k
    return q, k


def plant_batch(n: int, rng: np.random.Generator, kinds: tuple[str, ...] = KINDS) -> list[tuple[str, np.ndarray, dict]]:
    """``n`` planted maps ``(kind, attn[Q, K], params)``, kinds in turn, shapes from ``random_shape``."""
    return [(kinds[i % len(kinds)], *plant_head(kinds[i % len(kinds)], *random_shape(rng), rng)) for i in range(n)]
